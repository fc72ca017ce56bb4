//! Raw HTTP as `serve` receives it on its socket: the viewer page, WHEP POST/PATCH/DELETE,
//! the WebSocket upgrade, and garbage. A real server on loopback; after every input it must
//! still answer a well-formed request.
#![no_main]
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use castline::pipeline::clock::MediaClock;
use castline::server::ViewerServer;
use castline::webrtc::{self, Hub, HubConfig};
use libfuzzer_sys::fuzz_target;

fn server() -> SocketAddr {
    static SERVER: OnceLock<(ViewerServer, Hub, castline::webrtc::hub::HubThread)> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            webrtc::init_crypto();
            let (hub, thread) =
                Hub::start(HubConfig::default(), Arc::new(AtomicBool::new(false)), MediaClock::new())
                    .expect("hub starts");
            let server = ViewerServer::start("127.0.0.1:0".parse().expect("addr"), "fuzztoken".into(), hub.clone())
                .expect("server starts");
            (server, hub, thread)
        })
        .0
        .addr()
}

fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("server accepts");
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let _ = exchange(addr, data);
    let ok = exchange(addr, b"GET /?token=fuzztoken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(ok.starts_with(b"HTTP/1.1 200"), "the server stopped answering");
});
