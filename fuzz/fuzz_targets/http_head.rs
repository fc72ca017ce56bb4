//! Request heads as `serve` parses them off its sockets (sans-IO: no server needed), against
//! the default limits: never a panic, and a head is accepted only within those limits.
#![no_main]
use castline::server::http::parse_head;
use castline::server::ServerLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ServerLimits::default();
    if let Ok(Some((head, used))) = parse_head(data, &limits) {
        assert!(used <= data.len() && used <= limits.max_header_bytes);
        assert!(head.body_len <= limits.max_body_bytes);
        let _ = (head.path(), head.query("token"), head.header("authorization"));
    }
});
