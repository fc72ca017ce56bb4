//! SDP as the WebRTC hub receives it: a viewer's offer (WebSocket or WHEP), a WHIP/LiveKit
//! server's answer to castline's offer, and trickled candidates. The hub runs on its own thread
//! as in `serve`; after every input it must still be alive.
#![no_main]
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use castline::pipeline::clock::MediaClock;
use castline::webrtc::{self, Hub, HubConfig};
use libfuzzer_sys::fuzz_target;

fn hub() -> &'static Hub {
    static HUB: OnceLock<(Hub, castline::webrtc::hub::HubThread)> = OnceLock::new();
    &HUB.get_or_init(|| {
        webrtc::init_crypto();
        Hub::start(HubConfig::default(), Arc::new(AtomicBool::new(false)), MediaClock::new())
            .expect("hub starts")
    })
    .0
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let hub = hub();
    match mode % 3 {
        0 => {
            if let Ok((id, _)) = hub.accept_offer(text, "ws") {
                hub.remove(id);
            }
        }
        1 => {
            if let Ok((id, _)) = hub.create_offer("whip", true) {
                let _ = hub.accept_answer(id, text);
                hub.remove(id);
            }
        }
        _ => {
            static OFFER: &str = include_str!("../../crates/castline/tests/data/chromium-offer.sdp");
            if let Ok((id, _)) = hub.accept_offer(OFFER, "ws") {
                let _ = hub.add_remote_candidate(id, text);
                hub.remove(id);
            }
        }
    }
    assert!(hub.is_alive(), "the hub thread died");
});
