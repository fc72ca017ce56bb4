//! Inputs coverage-guided fuzzing (`fuzz/run.sh`) found that once crashed or hung a parser,
//! replayed through the same code paths as the fuzz targets: each must now give an answer or a
//! classified error. Inputs live in `data/fuzz-regressions/TARGET/`; a new crash from the fuzzer
//! is copied there (and fixed) — this test then keeps it fixed.

use std::path::Path;

use castline::capture::ffmpeg_process::{stream_info_of, AuAssembler};
use castline::output::livekit::proto;
use castline::server::signaling::parse_client_message;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz-regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn signaling_json_regressions() {
    for (name, data) in inputs("signaling_json") {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = parse_client_message(text);
        }
        eprintln!("signaling_json/{name}: ok");
    }
}

#[test]
fn livekit_signal_regressions() {
    for (name, data) in inputs("livekit_signal") {
        let _ = proto::parse_response(&data);
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = proto::sdp_candidates(text);
        }
        eprintln!("livekit_signal/{name}: ok");
    }
}

#[test]
fn annexb_au_regressions() {
    for (name, data) in inputs("annexb_au") {
        let Some((&cut, rest)) = data.split_first() else {
            continue;
        };
        let mut a = AuAssembler::default();
        let mut out = Vec::new();
        for chunk in rest.chunks(cut as usize + 1) {
            if a.push(chunk, &mut out).is_err() {
                break;
            }
        }
        a.finish(&mut out);
        for (au, _) in &out {
            let _ = stream_info_of(au, 30, 1_000_000);
        }
        eprintln!("annexb_au/{name}: ok");
    }
}

#[test]
fn http_head_regressions() {
    let limits = castline::server::ServerLimits::default();
    for (name, data) in inputs("http_head") {
        let _ = castline::server::http::parse_head(&data, &limits);
        eprintln!("http_head/{name}: ok");
    }
}
