//! `castline serve` against real browsers: Debian's headless Chromium (playwright-core) opens
//! the viewer page or a WHEP-only page and decodes what castline sends; getStats() is the proof.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn step<'a>(results: &'a [Value], op: &str, id: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["op"] == op && r["id"] == id)
        .unwrap_or_else(|| panic!("no result for {op} {id}: {results:?}"))
}

fn nth_step<'a>(results: &'a [Value], op: &str, id: &str, n: usize) -> &'a Value {
    results
        .iter()
        .filter(|r| r["op"] == op && r["id"] == id)
        .nth(n)
        .unwrap_or_else(|| panic!("no result #{n} for {op} {id}: {results:?}"))
}

fn assert_decoded(r: &Value, w: u64, h: u64) {
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["framesDecoded"].as_u64().unwrap() >= 60, "{r}");
    assert!(r["ms"].as_u64().unwrap() <= 10_000, "{r}");
    assert_eq!(
        (r["frameWidth"].as_u64(), r["frameHeight"].as_u64()),
        (Some(w), Some(h)),
        "{r}"
    );
    assert_eq!(r["videoCodec"], "video/H264", "{r}");
}

#[test]
fn two_browsers_decode_video_and_opus_audio_from_one_encode() {
    let pulse = Pulse::start("webrtc-two");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let mut cmd = castline();
    pulse.env(&mut cmd);
    let serve = Serve::start(
        "webrtc-two",
        &mut cmd,
        &[
            "--source", "testsrc", "--size", "640x360", "--audio", "system", "--stats", "json",
        ],
    );
    let r = browser(json!([
        {"op": "open", "id": "a", "url": serve.url},
        {"op": "open", "id": "b", "url": serve.url},
        {"op": "wait_frames", "id": "a", "n": 60, "timeout_ms": 10000},
        {"op": "wait_frames", "id": "b", "n": 60, "timeout_ms": 10000},
        {"op": "wait_audio", "id": "a", "timeout_ms": 10000, "energy": 0.01},
        {"op": "sleep", "ms": 2500},
        {"op": "stats", "id": "b"},
    ]));
    assert_eq!(step(&r, "open", "a")["status"], 200);
    assert_decoded(step(&r, "wait_frames", "a"), 640, 360);
    assert_decoded(step(&r, "wait_frames", "b"), 640, 360);
    let audio = step(&r, "wait_audio", "a");
    assert_eq!(audio["ok"], true, "no audio energy: {audio}");
    assert_eq!(audio["audioCodec"], "audio/opus", "{audio}");
    assert!(audio["audioSamples"].as_u64().unwrap() > 48_000, "{audio}");
    let token = serve.token.clone();
    let log = serve.stop();
    assert!(!log.contains(&token), "token in the log");
    // Both viewers were fed by one encoder running at the source's rate (not twice it).
    let stats = json_stats(&log);
    let with_two: Vec<&Value> = stats
        .iter()
        .filter(|s| {
            s["outputs"][0]["peers"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
        })
        .collect();
    assert!(!with_two.is_empty(), "stats never showed two peers:\n{log}");
    let last = with_two.last().unwrap();
    let fps = last["encoded_fps"].as_f64().unwrap();
    assert!(
        (25.0..=35.0).contains(&fps),
        "encoded fps {fps} with two viewers"
    );
    for p in last["outputs"][0]["peers"].as_array().unwrap() {
        assert_eq!(p["connected"], true, "{p}");
        assert!(p["bitrate_kbps"].as_f64().unwrap() > 50.0, "{p}");
        assert!(p["video_packets"].as_u64().unwrap() > 60, "{p}");
        assert!(p["audio_packets"].as_u64().unwrap() > 50, "{p}");
    }
    assert_eq!(log.matches("peer_connected").count(), 2, "{log}");
}

#[test]
fn viewer_leaves_and_rejoins_and_first_frame_comes_fast() {
    // A 10 s keyframe interval: without castline's keyframe-on-join a new viewer would wait
    // up to 10 s for its first picture.
    let serve = Serve::start(
        "webrtc-rejoin",
        &mut castline(),
        &[
            "--source", "testsrc", "--size", "320x240", "--audio", "none", "--keyint", "10",
            "--stats", "json",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let r = browser(json!([
        {"op": "open", "id": "a", "url": serve.url},
        {"op": "wait_frames", "id": "a", "n": 60, "timeout_ms": 10000},
        {"op": "leave", "id": "a"},
        {"op": "sleep", "ms": 1000},
        {"op": "join", "id": "a"},
        {"op": "wait_frames", "id": "a", "n": 60, "timeout_ms": 10000},
    ]));
    let first = nth_step(&r, "wait_frames", "a", 0);
    let again = nth_step(&r, "wait_frames", "a", 1);
    assert_decoded(first, 320, 240);
    assert_decoded(again, 320, 240);
    for w in [first, again] {
        let ms = w["firstFrameMs"].as_u64().unwrap();
        assert!(ms < 2000, "first frame after {ms} ms: {w}");
    }
    let log = serve.stop();
    assert_eq!(log.matches("peer_connected").count(), 2, "{log}");
    assert!(log.contains("reason=\"removed\""), "{log}");
    assert!(log.contains("reason=\"new_peer\""), "{log}");
}

#[test]
fn wrong_or_missing_token_gets_401_and_nothing_else() {
    let serve = Serve::start(
        "webrtc-token",
        &mut castline(),
        &[
            "--source", "testsrc", "--size", "320x240", "--audio", "none",
        ],
    );
    let b = &serve.base;
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let offer = b"v=0\r\n";
    let cases: Vec<(u16, String)> = vec![
        http("GET", &format!("{b}/"), &[], b""),
        http("GET", &format!("{b}/?token=wrong"), &[], b""),
        http("GET", &format!("{b}/ws"), &upgrade, b""),
        http("GET", &format!("{b}/ws?token=nope"), &upgrade, b""),
        http(
            "POST",
            &format!("{b}/whep"),
            &[("Content-Type", "application/sdp")],
            offer,
        ),
        http(
            "POST",
            &format!("{b}/whep"),
            &[
                ("Authorization", "Bearer wrong"),
                ("Content-Type", "application/sdp"),
            ],
            offer,
        ),
        http(
            "DELETE",
            &format!("{b}/whep/1"),
            &[("Authorization", "Bearer x")],
            b"",
        ),
    ];
    for (status, body) in &cases {
        assert_eq!((*status, body.as_str()), (401, "unauthorized\n"));
    }
    // The right token opens the page; a browser with a wrong one sees 401.
    let (ok, page) = http("GET", &serve.url, &[], b"");
    assert_eq!(ok, 200);
    assert!(page.contains("<video"));
    let r = browser(json!([
        {"op": "open", "id": "x", "url": format!("{b}/?token=0123456789abcdef")},
    ]));
    assert_eq!(step(&r, "open", "x")["status"], 401);
    let token = serve.token.clone();
    let log = serve.stop();
    assert!(!log.contains(&token), "token in the log:\n{log}");
}

#[test]
fn whep_player_on_another_origin_decodes_and_leaves_with_delete() {
    let serve = Serve::start(
        "webrtc-whep",
        &mut castline(),
        &[
            "--source", "testsrc", "--size", "640x360", "--audio", "none",
        ],
    );
    let endpoint = format!("{}/whep", serve.base);
    let r = browser(json!([
        {"op": "whep", "id": "w", "endpoint": endpoint, "token": serve.token},
        {"op": "wait_frames", "id": "w", "n": 60, "timeout_ms": 10000},
        {"op": "whep_delete", "id": "w", "token": serve.token},
        {"op": "sleep", "ms": 500},
    ]));
    let w = step(&r, "whep", "w");
    assert_eq!(w["ok"], true, "{w}");
    assert!(w["location"].as_str().unwrap().contains("/whep/"), "{w}");
    assert_decoded(step(&r, "wait_frames", "w"), 640, 360);
    assert_eq!(step(&r, "whep_delete", "w")["status"], 200);
    let log = serve.stop();
    assert!(log.contains("via=\"whep\""), "{log}");
    assert!(
        log.contains("reason=\"removed\""),
        "DELETE did not remove the peer:\n{log}"
    );
}

/// Send one text message on a signaling socket and read the reply.
fn ws_roundtrip(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    msg: tungstenite::Message,
) -> Value {
    ws.send(msg).unwrap();
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            _ => continue,
        }
    }
}

#[test]
fn malformed_signaling_and_sdp_get_errors_while_a_viewer_keeps_playing() {
    use tungstenite::Message;
    let serve = Serve::start(
        "webrtc-bad",
        &mut castline(),
        &[
            "--source", "testsrc", "--size", "320x240", "--audio", "none",
        ],
    );
    // A real viewer watches throughout.
    let url = serve.url.clone();
    let viewer = std::thread::spawn(move || {
        browser(json!([
            {"op": "open", "id": "v", "url": url},
            {"op": "wait_frames", "id": "v", "n": 30, "timeout_ms": 10000},
            {"op": "sleep", "ms": 4000},
            {"op": "stats", "id": "v"},
        ]))
    });
    std::thread::sleep(Duration::from_secs(1));
    let ws_url = format!(
        "{}/ws?token={}",
        serve.base.replace("http", "ws"),
        serve.token
    );
    let (mut ws, _) = tungstenite::connect(ws_url.as_str()).unwrap();
    let code = |v: Value| v["code"].as_str().unwrap_or("").to_string();
    assert_eq!(
        code(ws_roundtrip(&mut ws, Message::text("{"))),
        "bad_message"
    );
    assert_eq!(
        code(ws_roundtrip(&mut ws, Message::text("[1,2]"))),
        "bad_message"
    );
    assert_eq!(
        code(ws_roundtrip(&mut ws, Message::text(r#"{"type":"dance"}"#))),
        "bad_message"
    );
    assert_eq!(
        code(ws_roundtrip(&mut ws, Message::binary(vec![0u8, 1, 2]))),
        "bad_message"
    );
    assert_eq!(
        code(ws_roundtrip(
            &mut ws,
            Message::text(r#"{"type":"offer","sdp":"v=0"}"#)
        )),
        "not_joined"
    );
    let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(100_000));
    assert_eq!(code(ws_roundtrip(&mut ws, Message::text(big))), "too_large");
    assert_eq!(
        ws_roundtrip(&mut ws, Message::text(r#"{"type":"join"}"#))["type"],
        "joined"
    );
    for sdp in ["v=0", "garbage\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n"] {
        let offer = json!({"type": "offer", "sdp": sdp}).to_string();
        let reply = ws_roundtrip(&mut ws, Message::text(offer));
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(code(reply), "bad_sdp");
    }
    let cand = json!({"type": "ice_candidate", "candidate": "candidate:garbage"}).to_string();
    assert_eq!(
        code(ws_roundtrip(&mut ws, Message::text(cand))),
        "not_joined"
    );
    ws.close(None).ok();
    // WHEP: malformed and oversized offers.
    let auth = format!("Bearer {}", serve.token);
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/sdp"),
    ];
    let whep = format!("{}/whep", serve.base);
    let (status, body) = http("POST", &whep, &h, b"not an sdp");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SDP"), "{body}");
    assert_eq!(http("POST", &whep, &h, &vec![b'a'; 100_000]).0, 413);
    assert_eq!(
        http(
            "PATCH",
            &format!("{whep}/999"),
            &h,
            b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n"
        )
        .0,
        404
    );
    assert_eq!(
        http("GET", &format!("{}/nope", serve.base), &[], b"").0,
        404
    );
    // The viewer never stopped.
    let r = viewer.join().unwrap();
    assert_eq!(step(&r, "wait_frames", "v")["ok"], true);
    let s = step(&r, "stats", "v");
    assert!(s["framesDecoded"].as_u64().unwrap() >= 130, "{s}");
    assert_eq!(s["state"], "connected", "{s}");
    let log = serve.stop();
    assert!(log.contains("signaling_message_rejected"), "{log}");
}

fn child_ffmpeg_pid(parent: u32) -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &parent.to_string(), "-x", "ffmpeg"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
}

#[test]
fn ffmpeg_process_source_passes_through_and_recovers_when_the_child_is_killed() {
    let serve = Serve::start(
        "webrtc-ffmpeg",
        &mut castline(),
        &[
            "--source",
            "ffmpeg:-re -f lavfi -i testsrc=size=640x360:rate=30",
            "--keyint",
            "1",
            "--audio",
            "none",
        ],
    );
    let url = serve.url.clone();
    let viewer = std::thread::spawn(move || {
        browser(json!([
            {"op": "open", "id": "v", "url": url},
            {"op": "wait_frames", "id": "v", "n": 60, "timeout_ms": 10000},
            {"op": "sleep", "ms": 2500},
            {"op": "stats", "id": "v"},
            {"op": "wait_frames", "id": "v", "n": 240, "timeout_ms": 15000},
        ]))
    });
    // Kill the child once the viewer plays.
    let t0 = std::time::Instant::now();
    while !serve.log().contains("peer_connected") && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = child_ffmpeg_pid(serve.proc.0.id()).expect("castline's ffmpeg child");
    kill_pid(pid);
    let r = viewer.join().unwrap();
    assert_decoded(step(&r, "wait_frames", "v"), 640, 360);
    let before = step(&r, "stats", "v")["framesDecoded"].as_u64().unwrap();
    let after = nth_step(&r, "wait_frames", "v", 1);
    assert_eq!(
        after["ok"], true,
        "viewer did not recover after the restart: {after}"
    );
    assert!(
        after["framesDecoded"].as_u64().unwrap() >= before + 60,
        "{after}"
    );
    let new_pid = child_ffmpeg_pid(serve.proc.0.id()).expect("a restarted ffmpeg");
    assert_ne!(new_pid, pid);
    let log = serve.stop();
    // Lifecycle events, in order.
    let pos = |e: &str| log.find(e).unwrap_or_else(|| panic!("no {e} in\n{log}"));
    assert!(pos("ffmpeg_spawned") < pos("first_frame_ingested"), "{log}");
    assert!(pos("first_frame_ingested") < pos("track_active"), "{log}");
    assert!(pos("track_active") < pos("peer_connected"), "{log}");
    assert!(log.contains("ffmpeg_restarting"), "{log}");
    assert_eq!(log.matches("ffmpeg_spawned").count(), 2, "{log}");
    // Passed through, not re-encoded: no encoder was opened.
    assert!(!log.contains("encoder_selected"), "{log}");
}

fn kill_pid(pid: u32) {
    // SAFETY: plain kill(2) on a pid we just looked up.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

#[test]
fn lost_packets_are_nacked_and_retransmitted_from_the_send_history() {
    // 5 % of castline's datagrams are dropped on their way to the browser (nftables in a
    // private network namespace; `tc netem` is not available in this kernel).
    if !std::process::Command::new("nft")
        .arg("--version")
        .status()
        .is_ok_and(|s| s.success())
    {
        panic!("nft missing: run scripts/setup.sh (apt-get install nftables)");
    }
    let ns = Netns::create("nack");
    let serve = Serve::start(
        "webrtc-nack",
        &mut ns.cmd(CASTLINE),
        &[
            "--source", "testsrc", "--size", "640x360", "--audio", "none", "--stats", "json",
        ],
    );
    let media = serve
        .log()
        .lines()
        .find_map(|l| {
            l.split("webrtc_media_socket media=127.0.0.1:")
                .nth(1)
                .map(str::to_string)
        })
        .expect("media socket logged");
    let nft = |args: &str| {
        let s = ns.cmd("nft").args(args.split(' ')).status().unwrap();
        assert!(s.success(), "nft {args}");
    };
    nft("add table inet loss");
    nft("add chain inet loss input { type filter hook input priority 0 ; }");
    nft(&format!(
        "add rule inet loss input udp sport {} numgen random mod 100 < 5 drop",
        media.trim()
    ));
    let mut node = ns.cmd("node");
    node.env_remove("DISPLAY");
    let r = browser_with(
        node,
        json!([
            {"op": "open", "id": "v", "url": serve.url},
            {"op": "wait_frames", "id": "v", "n": 240, "timeout_ms": 20000},
        ]),
    );
    let w = step(&r, "wait_frames", "v");
    assert_eq!(w["ok"], true, "{w}");
    assert!(w["nackCount"].as_u64().unwrap() > 0, "no NACKs sent: {w}");
    assert!(
        w["retransmittedPackets"].as_u64().unwrap() > 0,
        "no retransmission received: {w}"
    );
    let log = serve.stop();
    let nacks = json_stats(&log)
        .iter()
        .filter_map(|s| s["outputs"][0]["peers"][0]["nacks"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(nacks > 0, "castline's stats show no NACKs:\n{log}");
}

/// (open fds, threads, RSS in KiB) of a process, from /proc.
fn resources(pid: u32) -> (usize, usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (fds, threads, rss)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_flood_of_bad_clients_is_bounded_and_the_viewer_never_stalls() {
    let serve = Serve::start(
        "webrtc-flood",
        &mut castline(),
        &[
            "--source", "testsrc", "--size", "640x360", "--fps", "30", "--audio", "none",
        ],
    );
    let pid = serve.proc.0.id();
    const WATCH_S: u64 = 40;
    let url = serve.url.clone();
    let viewer = std::thread::spawn(move || {
        browser(json!([
            {"op": "open", "id": "v", "url": url},
            {"op": "wait_frames", "id": "v", "n": 30, "timeout_ms": 15000},
            {"op": "monitor", "id": "v", "seconds": WATCH_S},
        ]))
    });
    // The viewer's page and signaling socket are open and its frames flow: the baseline.
    let t0 = std::time::Instant::now();
    while !serve.log().contains("peer_connected") {
        assert!(t0.elapsed() < Duration::from_secs(30), "no viewer joined");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(4));
    let before = resources(pid);
    let port = serve.base.rsplit(':').next().unwrap().to_string();
    let (flood_from, flood_s) = (unix_ms(), 15);
    let flood = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flood/flood.py"))
        .args(["127.0.0.1", &port, &flood_s.to_string(), "300"])
        .args(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the flood runs, a newcomer on another address still gets the page at once.
    std::thread::sleep(Duration::from_secs(5));
    let during = resources(pid);
    let t = std::time::Instant::now();
    let (status, page) = http("GET", &serve.url, &[], b"");
    let page_ms = t.elapsed().as_millis();
    assert_eq!(status, 200, "{page}");
    let out = flood.wait_with_output().unwrap();
    assert!(out.status.success(), "flood.py failed");
    let flood_until = unix_ms();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("flood: {report}");
    eprintln!("resources (fds, threads, rss KiB): before {before:?}, during {during:?}");
    eprintln!("the page took {page_ms} ms during the flood");
    // Resources come back once the slow clients are timed out.
    std::thread::sleep(Duration::from_secs(7));
    let after = resources(pid);
    eprintln!("after {after:?}");
    let r = viewer.join().unwrap();
    let log = serve.stop();

    let connections = report["connections"].as_u64().unwrap();
    assert!(connections >= 2000, "a flood of {connections} connections");
    let st = |attack: &str, code: &str| report["statuses"][attack][code].as_u64().unwrap_or(0);
    for (attack, code) in [
        ("garbage", "400"),
        ("huge_header", "431"),
        ("many_headers", "431"),
        ("huge_body", "413"),
        ("chunked", "411"),
        ("bad_token", "401"),
        ("bad_ws", "401"),
        ("bad_whep", "401"),
        ("pipelined_404", "404"),
        ("slowloris", "408"),
    ] {
        assert!(st(attack, code) > 0, "{attack} never got {code}: {report}");
    }
    let refused: u64 = report["statuses"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["503"].as_u64().unwrap_or(0))
        .sum();
    assert!(refused > 0, "the per-address cap never refused: {report}");
    let held = report["held_s"]["slowloris"].as_f64().unwrap();
    assert!(held < 7.0, "a slowloris client held its socket {held:.1} s");
    assert!(
        page_ms < 1000,
        "the page took {page_ms} ms during the flood"
    );
    // Threads are bounded during the flood (one per admitted connection, 32 per address).
    assert!(
        during.1 <= before.1 + 3 * 32 + 2,
        "threads {during:?} vs {before:?}"
    );
    assert!(after.0 <= before.0 + 2, "fds {after:?} vs {before:?}");
    assert!(after.1 <= before.1 + 1, "threads {after:?} vs {before:?}");
    assert!(
        after.2 <= before.2 + 16 * 1024,
        "RSS {after:?} vs {before:?}"
    );
    assert!(log.contains("connection_refused"), "{log}");

    // The viewer decoded throughout: no stall over 1 s from the flood's start to its end + 5 s.
    let m = step(&r, "monitor", "v");
    assert_eq!(m["ok"], true, "{m}");
    let samples: Vec<(u64, u64)> = m["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
        .filter(|s| s.0 >= flood_from && s.0 <= flood_until + 5000)
        .collect();
    assert!(samples.len() > 100, "{} samples", samples.len());
    let (mut last_change, mut last_frames, mut worst) = (samples[0].0, samples[0].1, 0);
    for (t, frames) in &samples {
        if *frames != last_frames {
            worst = worst.max(t - last_change);
            last_change = *t;
            last_frames = *frames;
        }
    }
    worst = worst.max(samples.last().unwrap().0 - last_change);
    let decoded = samples.last().unwrap().1 - samples[0].1;
    eprintln!("viewer: {decoded} frames during the flood, longest stall {worst} ms");
    assert!(
        worst <= 1000,
        "the viewer stalled {worst} ms during the flood"
    );
    assert!(decoded >= 20 * (flood_s + 5), "{decoded} frames decoded");
}
