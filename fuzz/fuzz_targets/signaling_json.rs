//! The viewer page's WebSocket signaling messages (JSON) as `serve` receives them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = castline::server::signaling::parse_client_message(text);
    }
});
