//! The signaling WebSocket to a LiveKit server, on a thread of its own: it reads server frames
//! into a channel, writes what the output queues, and pings at the interval the server asked for.
//! `ws://` over TCP, `wss://` over rustls with the webpki roots.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use super::proto::{self, Event};

/// Why the signaling connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    Dns(String),
    Refused,
    Unreachable(String),
    /// The WebSocket upgrade was refused with this HTTP status (401: bad or expired token).
    Http(u16, String),
}

/// A frame from the server, or the end of the connection.
#[derive(Debug)]
pub enum Incoming {
    Event(Event),
    /// A frame that could not be decoded (logged; the session goes on).
    Malformed(String),
    Closed(String),
}

trait Stream: Read + Write + Send {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(t)
    }
}

pub struct Signal {
    out: Sender<Vec<u8>>,
    pub incoming: Receiver<Incoming>,
    /// Seconds between pings; set once the server said (0: none).
    ping: Arc<std::sync::Mutex<(u32, u32)>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|_| ConnectError::Dns(host.to_string()))?
        .collect();
    let mut last = ConnectError::Dns(host.to_string());
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = ConnectError::Refused
            }
            Err(e) => last = ConnectError::Unreachable(e.to_string()),
        }
    }
    Err(last)
}

/// TLS to `host`: verified against the webpki roots, or only against the CA certificates in
/// `ca_file` (PEM) when one is given (a self-hosted server with a private CA).
fn tls(
    host: &str,
    sock: TcpStream,
    ca_file: Option<&std::path::Path>,
) -> Result<Box<dyn Stream>, ConnectError> {
    use rustls::pki_types::pem::PemObject;
    let roots = match ca_file {
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ConnectError::Unreachable(format!("TLS: cannot read {}: {e}", path.display()))
            })?;
            let mut store = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    ConnectError::Unreachable(format!("TLS: {}: {e}", path.display()))
                })?;
                store.add(cert).map_err(|e| {
                    ConnectError::Unreachable(format!("TLS: {}: {e}", path.display()))
                })?;
            }
            if store.is_empty() {
                return Err(ConnectError::Unreachable(format!(
                    "TLS: no certificate in {}",
                    path.display()
                )));
            }
            store
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Unreachable(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ConnectError::Unreachable(format!("TLS server name: {e}")))?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name)
        .map_err(|e| ConnectError::Unreachable(format!("TLS: {e}")))?;
    Ok(Box::new(rustls::StreamOwned::new(conn, sock)))
}

impl Signal {
    /// Connect and upgrade: `url` is the full join URL (ws:// or wss://), `token` goes in the
    /// `Authorization` header.
    pub fn connect(
        url: &str,
        token: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ConnectError> {
        let (secure, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(ConnectError::Unreachable("not a ws:// URL".into()));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (host, port) = split_host_port(authority, if secure { 443 } else { 80 });
        let sock = tcp(&host, port, timeout)?;
        let _ = sock.set_read_timeout(Some(timeout));
        let _ = sock.set_write_timeout(Some(timeout));
        let stream: Box<dyn Stream> = if secure {
            tls(&host, sock, ca_file)?
        } else {
            Box::new(sock)
        };
        let mut req = url
            .into_client_request()
            .map_err(|e| ConnectError::Unreachable(format!("bad URL: {e}")))?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ConnectError::Http(401, "the token is not a valid header value".into()))?;
        req.headers_mut().insert("Authorization", auth);
        let (ws, _resp) = match tungstenite::client(req, stream) {
            Ok(r) => r,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| {
                        String::from_utf8_lossy(b)
                            .trim()
                            .chars()
                            .take(200)
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(ConnectError::Http(resp.status().as_u16(), body));
            }
            Err(e) => return Err(ConnectError::Unreachable(format!("WebSocket: {e}"))),
        };
        let (out, out_rx) = mpsc::channel();
        let (in_tx, incoming) = mpsc::channel();
        let ping = Arc::new(std::sync::Mutex::new((0, 0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ping, stop) = (ping.clone(), stop.clone());
            std::thread::Builder::new()
                .name("livekit-signal".into())
                .spawn(move || run(ws, out_rx, in_tx, ping, stop))
                .map_err(|e| ConnectError::Unreachable(e.to_string()))?
        };
        Ok(Self {
            out,
            incoming,
            ping,
            stop,
            thread: Some(thread),
        })
    }

    pub fn send(&self, frame: Vec<u8>) {
        let _ = self.out.send(frame);
    }

    /// Start pinging every `interval` s; no pong within `timeout` s closes the connection.
    pub fn set_ping(&self, interval: u32, timeout: u32) {
        if let Ok(mut p) = self.ping.lock() {
            *p = (interval, timeout);
        }
    }

    pub fn recv_timeout(&self, t: Duration) -> Result<Incoming, RecvTimeoutError> {
        self.incoming.recv_timeout(t)
    }

    /// Send `leave` (when asked) and close.
    pub fn close(mut self, leave: bool) {
        if leave {
            self.send(proto::leave());
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn split_host_port(authority: &str, default: u16) -> (String, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').unwrap_or((rest, ""));
        let port = tail
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default);
        return (h.to_string(), port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().unwrap_or(default)),
        _ => (authority.to_string(), default),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn run(
    mut ws: WebSocket<Box<dyn Stream>>,
    out: Receiver<Vec<u8>>,
    incoming: Sender<Incoming>,
    ping: Arc<std::sync::Mutex<(u32, u32)>>,
    stop: Arc<AtomicBool>,
) {
    let _ = ws.get_ref().set_timeout(Some(Duration::from_millis(20)));
    let mut next_ping: Option<Instant> = None;
    let mut last_pong = Instant::now();
    let mut rtt = 0i64;
    let end = |why: String| {
        let _ = incoming.send(Incoming::Closed(why));
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            // Flush what was queued last (the leave), then close.
            while let Ok(f) = out.try_recv() {
                let _ = ws.send(Message::Binary(f.into()));
            }
            let _ = ws.close(None);
            let _ = ws.flush();
            return;
        }
        while let Ok(f) = out.try_recv() {
            if let Err(e) = ws.send(Message::Binary(f.into())) {
                return end(format!("signaling write failed: {e}"));
            }
        }
        let (interval, timeout) = ping.lock().map(|p| *p).unwrap_or((0, 0));
        let now = Instant::now();
        if interval > 0 {
            let at = *next_ping.get_or_insert(now);
            if now >= at {
                for f in proto::pings(now_ms(), rtt) {
                    if let Err(e) = ws.send(Message::Binary(f.into())) {
                        return end(format!("signaling write failed: {e}"));
                    }
                }
                next_ping = Some(now + Duration::from_secs(interval as u64));
            }
            if timeout > 0 && now.duration_since(last_pong) > Duration::from_secs(timeout as u64) {
                return end(format!("no pong from the server for {timeout} s"));
            }
        } else {
            last_pong = now;
        }
        match ws.read() {
            Ok(Message::Binary(b)) => {
                let msg = match proto::parse_response(&b) {
                    Ok(ev) => {
                        if let Event::Pong { sent_ms } = ev {
                            last_pong = Instant::now();
                            rtt = (now_ms() - sent_ms).max(0);
                        }
                        Incoming::Event(ev)
                    }
                    Err(e) => Incoming::Malformed(e),
                };
                if incoming.send(msg).is_err() {
                    return;
                }
            }
            Ok(Message::Close(f)) => {
                return end(match f {
                    Some(f) => format!("the server closed signaling: {} {}", f.code, f.reason),
                    None => "the server closed signaling".into(),
                })
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return end(format!("signaling lost: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host_port("127.0.0.1:7880", 80),
            ("127.0.0.1".into(), 7880)
        );
        assert_eq!(
            split_host_port("lk.example", 443),
            ("lk.example".into(), 443)
        );
        assert_eq!(split_host_port("[::1]:7880", 80), ("::1".into(), 7880));
    }

    #[test]
    fn nothing_listening_is_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = Signal::connect(
            &format!("ws://127.0.0.1:{port}/rtc/v1"),
            "t",
            Duration::from_secs(1),
            None,
        );
        assert_eq!(r.err(), Some(ConnectError::Refused));
    }
}
