//! RTMP live streaming against a real nginx-rtmp, read back and decoded with ffmpeg/ffprobe.

mod common;

use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "sk_live_TOPSECRET";

fn assert_key_hidden(text: &str) {
    assert!(!text.contains(KEY), "stream key leaked:\n{text}");
}

/// Decode an FLV/MP4 file fully; returns (frames, ffmpeg's error output).
fn decode_check(file: &std::path::Path) -> (usize, String) {
    let (gray, errors) = decode(file, "gray");
    let p = probe(file);
    let frames = if p.width > 0 {
        gray.len() / (p.width * p.height) as usize
    } else {
        0
    };
    (frames, errors)
}

#[test]
fn stream_decodes_from_nginx_with_matching_codec_size_and_rate() {
    let nginx = Nginx::start();
    let url = nginx.url("live", KEY);
    let dir = tmpdir("rtmp-basic");
    let child = spawn_castline(castline().args([
        "stream",
        &url,
        "--source",
        "testsrc",
        "--size",
        "640x360",
        "--duration",
        "10",
        "--stats",
        "json",
    ]));
    std::thread::sleep(Duration::from_secs(2));
    let flv = dir.join("read.flv");
    read_live(&url, 5, &flv);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{stderr}");
    assert_key_hidden(&stdout);
    assert_key_hidden(&stderr);
    let p = probe(&flv);
    assert_eq!((p.codec.as_str(), p.width, p.height), ("h264", 640, 360));
    let (frames, errors) = decode_check(&flv);
    assert!(errors.is_empty(), "{errors}");
    assert!((135..=160).contains(&frames), "{frames} frames in 5 s");
    assert_eq!(probe_entries(&flv, "stream=r_frame_rate"), ["30/1"]);
    // testsrc stamps survive the trip through nginx.
    let (gray, _) = decode(&flv, "gray");
    let first = &gray[..640 * 360];
    assert!(castline::capture::testsrc::read_stamp(first, 640, 360, 640).is_some());
    let stats = json_stats(&stderr);
    let o = &stats.last().unwrap()["outputs"][0];
    assert!(
        o["name"].as_str().unwrap().ends_with("/live/<redacted>"),
        "{o}"
    );
    assert!(o["dropped"].is_u64() && o["buffered_ms"].is_f64());
}

#[test]
fn stream_and_record_at_once() {
    let nginx = Nginx::start();
    let url = nginx.url("live", KEY);
    let dir = tmpdir("rtmp-record");
    let rec = dir.join("rec.mp4");
    let child = spawn_castline(castline().args(["stream", &url, "-o"]).arg(&rec).args([
        "--source",
        "testsrc",
        "--size",
        "640x360",
        "--duration",
        "12",
        "--stats",
        "off",
    ]));
    std::thread::sleep(Duration::from_secs(2));
    let flv = dir.join("read.flv");
    read_live(&url, 3, &flv);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let p = probe(&rec);
    assert!(
        (342..=378).contains(&p.frames),
        "{} frames recorded",
        p.frames
    );
    let (frames, errors) = decode_check(&flv);
    assert!(
        errors.is_empty() && frames >= 80,
        "{frames} frames, {errors}"
    );
}

/// Seconds since midnight UTC of a tracing log line's timestamp (2026-11-21T11:15:41.457554Z).
fn log_time(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_of_day() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_secs() % 86_400) as f64 + d.subsec_micros() as f64 / 1e6
}

#[test]
fn reconnects_after_server_restart_while_recording_continues() {
    let mut nginx = Nginx::start();
    let url = nginx.url("live", KEY);
    let dir = tmpdir("rtmp-reconnect");
    let rec = dir.join("rec.mp4");
    let child = spawn_castline(
        castline()
            .args(["stream", &url, "-o"])
            .arg(&rec)
            .args([
                "--source",
                "testsrc",
                "--size",
                "640x360",
                "--duration",
                "22",
                "--stats",
                "json",
            ])
            .args([
                "--reconnect-delay",
                "1",
                "--reconnect-multiplier",
                "1.5",
                "--reconnect-max-delay",
                "2",
            ]),
    );
    std::thread::sleep(Duration::from_secs(4));
    nginx.stop();
    std::thread::sleep(Duration::from_secs(5));
    nginx.restart();
    let back = now_of_day();
    std::thread::sleep(Duration::from_secs(3));
    let flv = dir.join("after.flv");
    read_live(&url, 3, &flv);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_key_hidden(&err);
    // Reconnected within 3 s of the server being back.
    let line = err
        .lines()
        .find(|l| l.contains("reconnected"))
        .expect("a reconnected event");
    let at = log_time(line).unwrap();
    assert!(
        at - back <= 3.0,
        "reconnected {:.2} s after the server came back",
        at - back
    );
    assert!(
        err.lines()
            .any(|l| l.contains("reconnecting") && l.contains("connection_lost")),
        "{err}"
    );
    // While down, stats said so, with the failure class.
    let stats = json_stats(&err);
    let down = stats
        .iter()
        .find(|s| s["outputs"][0]["state"] == "reconnecting")
        .expect("a stats line while reconnecting");
    let kind = down["outputs"][0]["error"]["kind"].as_str().unwrap();
    assert!(
        ["connection_lost", "connection_refused"].contains(&kind),
        "{down}"
    );
    assert_eq!(down["outputs"][0]["error"]["class"], "transient");
    assert_eq!(stats.last().unwrap()["outputs"][0]["reconnects"], 1);
    // The stream decodes again (from a keyframe) after the reconnect.
    let (frames, errors) = decode_check(&flv);
    assert!(
        errors.is_empty() && frames >= 80,
        "{frames} frames, {errors}"
    );
    // The recording has no gap: every frame of the 22 s, evenly spaced.
    let p = probe(&rec);
    assert!(
        (650..=670).contains(&p.frames),
        "{} frames recorded",
        p.frames
    );
    let mut times: Vec<f64> = probe_entries(&rec, "packet=pts_time")
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    let max_gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!(max_gap < 0.05, "gap of {max_gap} s in the recording");
}

#[test]
/// The stream buffer's last resort, with adaptation off (tests/adapt.rs covers the bitrate
/// coming down first): over budget, video is dropped to the next keyframe.
fn throttled_link_drops_to_keyframes_within_the_buffer_and_recovers() {
    let nginx = Nginx::start();
    let relay = SlowRelay::start(nginx.port);
    let via_relay = format!("rtmp://127.0.0.1:{}/live/{KEY}", relay.port);
    let direct = nginx.url("live", KEY);
    let dir = tmpdir("rtmp-throttle");
    let child = spawn_castline(
        castline()
            .args([
                "stream",
                &via_relay,
                "--source",
                "testsrc",
                "--size",
                "1280x720",
                "--bitrate",
                "2M",
                "--keyint",
                "1",
                "--adapt",
                "off",
            ])
            .args(["--duration", "24", "--stats", "json"]),
    );
    std::thread::sleep(Duration::from_secs(2));
    // Everything nginx receives, from before the throttle to after it is lifted.
    let flv = dir.join("all.flv");
    let mut reader = rtmp_reader(&direct, 20, &flv);
    std::thread::sleep(Duration::from_secs(2));
    relay
        .rate
        .store(20_000, std::sync::atomic::Ordering::SeqCst); // 160 kbit/s
    std::thread::sleep(Duration::from_secs(10));
    relay.rate.store(0, std::sync::atomic::Ordering::SeqCst);
    wait_proc(&mut reader, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_key_hidden(&err);
    let stats = json_stats(&err);
    let outs: Vec<&serde_json::Value> = stats.iter().map(|s| &s["outputs"][0]).collect();
    let max_buffered = outs
        .iter()
        .filter_map(|o| o["buffered_ms"].as_f64())
        .fold(0.0, f64::max);
    let dropped = outs.last().unwrap()["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "no drops while throttled: {outs:?}");
    assert!(
        max_buffered <= 2000.0 + 40.0,
        "buffered {max_buffered} ms over the 2000 ms bound"
    );
    // Recovered: the last seconds had no new drops and data flowed at full rate.
    let tail: Vec<_> = outs.iter().rev().take(4).collect();
    assert!(
        tail.iter().all(|o| o["dropped"].as_u64() == Some(dropped)),
        "still dropping: {tail:?}"
    );
    assert!(
        tail.iter().all(|o| o["kbps"].as_f64().unwrap() > 300.0),
        "{tail:?}"
    );
    // What nginx got decodes without a single reference error.
    let (frames, errors) = decode_check(&flv);
    assert!(errors.is_empty(), "decode errors: {errors}");
    assert!(frames > 200, "{frames} frames");
}

#[test]
fn failures_are_classified_fast_and_never_show_the_key() {
    let nginx = Nginx::start();
    let dead_port = free_port();
    let cases = [
        (
            format!("rtmp://127.0.0.1:{dead_port}/live/{KEY}"),
            "connection refused by",
        ),
        (
            format!("rtmp://castline-no-such-host.invalid/live/{KEY}"),
            "cannot resolve host",
        ),
        (
            nginx.url("closed", KEY),
            "rejected the connection or publish",
        ),
        (
            nginx.url("no-such-app", KEY),
            "rejected the connection or publish",
        ),
    ];
    for (url, needle) in cases {
        let t0 = Instant::now();
        let out = run(castline().args(["stream", &url, "--source", "testsrc", "--duration", "5"]));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "expected '{needle}': {err}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        assert!(!err.contains("panicked"));
        assert_key_hidden(&err);
        assert_key_hidden(&String::from_utf8_lossy(&out.stdout));
    }
    for (args, needle) in [
        (
            vec!["stream", "rtmp://127.0.0.1/live"],
            "missing stream key",
        ),
        (
            vec!["stream", "http://example.com/live/x"],
            "not an rtmp:// or rtmps:// URL",
        ),
        (
            vec!["stream", "rtmp://127.0.0.1:notaport/live/x"],
            "invalid port",
        ),
        (
            vec!["record", "x.mp4", "-o", "srt://127.0.0.1:9/x"],
            "unsupported output",
        ),
    ] {
        let out = run(castline()
            .args(&args)
            .args(["--source", "testsrc", "--duration", "1"]));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}

#[test]
fn a_stream_that_stays_down_gives_up_while_the_recording_finishes() {
    let mut nginx = Nginx::start();
    let url = nginx.url("live", KEY);
    let dir = tmpdir("rtmp-giveup");
    let rec = dir.join("rec.mp4");
    let child = spawn_castline(
        castline()
            .args(["stream", &url, "-o"])
            .arg(&rec)
            .args([
                "--source",
                "testsrc",
                "--size",
                "320x240",
                "--duration",
                "8",
                "--stats",
                "off",
            ])
            .args([
                "--reconnect-delay",
                "0.5",
                "--reconnect-multiplier",
                "1",
                "--reconnect-tries",
                "3",
            ]),
    );
    // Past the first session's confirmation window: this is a lost link, not a rejection.
    std::thread::sleep(Duration::from_secs(3));
    nginx.stop();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    // The stream (primary output) failed: exit 1, with the cause and the attempts.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gave up on") && err.contains("after 3 reconnection attempts"),
        "{err}"
    );
    assert!(err.contains("gave_up"), "{err}");
    assert_key_hidden(&err);
    let p = probe(&rec);
    assert!(
        (228..=252).contains(&p.frames),
        "{} frames recorded",
        p.frames
    );
}

#[test]
fn rtmps_verifies_the_server_certificate() {
    let nginx = Nginx::start_with_tls();
    let rtmps = format!("rtmps://127.0.0.1:{}/live/{KEY}", nginx.tls_port.unwrap());
    // Not trusted by the system store: refused, classified, fast, key hidden.
    let t0 = Instant::now();
    let out = run(castline().args(["stream", &rtmps, "--source", "testsrc", "--duration", "3"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_key_hidden(&err);
    // Trusted through --ca-file: streams over TLS, and nginx serves it decodable.
    let child = spawn_castline(
        castline()
            .args([
                "stream",
                &rtmps,
                "--source",
                "testsrc",
                "--size",
                "640x360",
                "--duration",
                "10",
                "--stats",
                "off",
            ])
            .arg("--ca-file")
            .arg(nginx.dir.join("cert.pem")),
    );
    std::thread::sleep(Duration::from_secs(2));
    let flv = tmpdir("rtmps").join("read.flv");
    read_live(&nginx.url("live", KEY), 3, &flv);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_key_hidden(&stderr(&out));
    let (frames, errors) = decode_check(&flv);
    assert!(
        errors.is_empty() && frames >= 80,
        "{frames} frames, {errors}"
    );
}

#[test]
fn a_stalled_link_is_reported_as_a_stall_and_recovers() {
    let nginx = Nginx::start();
    let relay = SlowRelay::start(nginx.port);
    let url = format!("rtmp://127.0.0.1:{}/live/{KEY}", relay.port);
    let child = spawn_castline(
        castline()
            .args([
                "stream",
                &url,
                "--source",
                "testsrc",
                "--size",
                "1280x720",
                "--bitrate",
                "2M",
            ])
            .args([
                "--duration",
                "30",
                "--stats",
                "json",
                "--reconnect-delay",
                "1",
                "--reconnect-max-delay",
                "1",
            ]),
    );
    std::thread::sleep(Duration::from_secs(3));
    // The server stops reading: 1 byte per second is a stall, not a slow link.
    relay.rate.store(1, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(12));
    relay.rate.store(0, std::sync::atomic::Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_key_hidden(&err);
    assert!(
        err.lines()
            .any(|l| l.contains("reconnecting") && l.contains("network_stall")),
        "{err}"
    );
    let stats = json_stats(&err);
    assert!(
        stats
            .iter()
            .any(|s| s["outputs"][0]["error"]["kind"] == "network_stall"),
        "no network_stall in stats"
    );
    let last = &stats.last().unwrap()["outputs"][0];
    assert_eq!(last["state"], "running", "{last}");
    assert!(last["reconnects"].as_u64().unwrap() >= 1, "{last}");
}
