//! LiveKit's signal messages (protobuf `SignalResponse`) as the LiveKit output receives them on
//! its WebSocket, and the SDP candidate lines it trickles from an answer.
#![no_main]
use castline::output::livekit::proto;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proto::parse_response(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = proto::sdp_candidates(text);
    }
});
