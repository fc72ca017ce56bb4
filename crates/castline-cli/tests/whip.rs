//! `castline publish` (WHIP).
//!
//! Interop tier (skipped with a message when ../shared/interop is absent): a real SFU, Janus's
//! VideoRoom, in a network namespace (libnice ignores loopback interfaces), behind the test
//! harness's WHIP front end (tests/browser/whip-janus.mjs); headless Chromium subscribes to the
//! room and decodes what castline published.
//! Default tier: classified errors for an unreachable endpoint and a refused bearer token.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn interop_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/interop/janus");
    d.join("conf/janus.jcfg").exists().then_some(d)
}

fn start_janus(ns: &Netns, conf: &Path, log: &Path) -> Proc {
    let p = ns
        .cmd("janus")
        .arg("-F")
        .arg(conf)
        .arg("-C")
        .arg(conf.join("janus.jcfg"))
        .args(["-o", "-N", "-L"])
        .arg(log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("janus (apt-get install janus)");
    let p = Proc(p);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        let out = ns
            .cmd("curl")
            .args([
                "--noproxy",
                "*",
                "-s",
                "-X",
                "POST",
                "http://127.0.0.1:18088/janus",
            ])
            .args(["-d", r#"{"janus":"info","transaction":"x"}"#])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("server_info") {
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "Janus did not start; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The WHIP front end; its JSON event lines arrive on the returned channel.
fn start_front_end(ns: &Netns, port: u16, token: &str) -> (Proc, mpsc::Receiver<Value>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/whip-janus.mjs");
    let mut p = ns
        .cmd("node")
        .arg(script)
        .args([&port.to_string(), token])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = p.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("front end: {line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("front end listening");
    assert_eq!(first["event"], "listening");
    (Proc(p), rx)
}

fn wait_event(rx: &mpsc::Receiver<Value>, event: &str, timeout: Duration) -> Value {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
            if v["event"] == event {
                return v;
            }
        }
    }
    panic!("no '{event}' event from the WHIP front end");
}

/// Chromium in the namespace subscribes to the room and decodes.
fn subscriber(ns: &Netns, port: u16) -> Vec<Value> {
    browser_with(
        ns.cmd("node"),
        json!([
            {"op": "open", "id": "s", "url": format!("http://127.0.0.1:{port}/subscriber.html")},
            {"op": "wait_frames", "id": "s", "n": 60, "timeout_ms": 10000},
            {"op": "wait_audio", "id": "s", "timeout_ms": 10000, "energy": 0.01},
        ]),
    )
}

#[test]
fn publish_into_janus_videoroom_decoded_by_a_subscriber_survives_an_sfu_restart() {
    let Some(interop) = interop_dir() else {
        eprintln!("skipped: ../shared/interop not found (Janus interop tier)");
        return;
    };
    let dir = tmpdir("whip-janus");
    let conf = dir.join("conf");
    let s = Command::new("cp")
        .arg("-r")
        .arg(interop.join("conf"))
        .arg(&conf)
        .status()
        .unwrap();
    assert!(s.success());
    let ns = Netns::create("whip");
    let janus_log = dir.join("janus.log");
    let mut janus = start_janus(&ns, &conf, &janus_log);
    let port = free_port();
    let token = "whip-bearer-0123456789";
    let (_front, events) = start_front_end(&ns, port, token);
    // System audio (a tone into a private PulseAudio daemon) goes out as Opus.
    let pulse = Pulse::start("whip-janus");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let log = dir.join("castline.log");
    let mut castline = ns.cmd(CASTLINE);
    pulse.env(&mut castline);
    castline
        .args([
            "publish",
            &format!("http://127.0.0.1:{port}/whip"),
            "--bearer",
            token,
        ])
        .args([
            "--source", "testsrc", "--size", "640x360", "--audio", "system",
        ])
        .args(["--reconnect-delay", "1", "--stats", "json"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut pub_proc = Proc(castline.spawn().unwrap());
    let published = wait_event(&events, "published", Duration::from_secs(15));
    assert_eq!(published["video"], true);
    assert_eq!(
        published["audio"], true,
        "Janus did not take the Opus track"
    );

    let r = subscriber(&ns, port);
    let w = r
        .iter()
        .find(|v| v["op"] == "wait_frames")
        .expect("subscriber ran");
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(
        (w["frameWidth"].as_u64(), w["frameHeight"].as_u64()),
        (Some(640), Some(360))
    );
    assert_eq!(w["videoCodec"], "video/H264");
    let a = r
        .iter()
        .find(|v| v["op"] == "wait_audio")
        .expect("audio step ran");
    assert_eq!(a["ok"], true, "no audio energy through the SFU: {a}");
    assert_eq!(a["audioCodec"], "audio/opus");

    // The SFU dies and comes back: castline notices, retries with backoff, publishes again.
    kill(&janus.0, libc::SIGKILL);
    let _ = janus.0.wait();
    std::thread::sleep(Duration::from_secs(8));
    let _janus2 = start_janus(&ns, &conf, &dir.join("janus2.log"));
    let again = wait_event(&events, "published", Duration::from_secs(40));
    assert_ne!(again["session"], published["session"]);
    let r = subscriber(&ns, port);
    let w = r
        .iter()
        .find(|v| v["op"] == "wait_frames")
        .expect("subscriber ran");
    assert_eq!(w["ok"], true, "after the restart: {w}");

    // Stopping sends the WHIP DELETE.
    kill(&pub_proc.0, libc::SIGINT);
    let deleted = wait_event(&events, "deleted", Duration::from_secs(15));
    assert_eq!(deleted["known"], true);
    let status = pub_proc.0.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("peer went silent"), "{text}");
    assert!(text.contains("reconnecting"), "{text}");
    // Janus asks its publisher for keyframes (PLI/FIR) when a subscriber joins: answered.
    assert!(
        text.contains("reason=\"pli\"") || text.contains("reason=\"fir\""),
        "no keyframe request from the SFU:\n{text}"
    );
    assert!(!text.contains(token), "bearer token in the log");
    let stats = json_stats(&text);
    let last = stats.last().unwrap();
    assert!(
        last["outputs"][0]["reconnects"].as_u64().unwrap() >= 1,
        "{last}"
    );
}

#[test]
fn unreachable_endpoint_and_refused_token_are_classified_errors() {
    // Nothing listens on this port.
    let port = free_port();
    let out = run(castline().args([
        "publish",
        &format!("http://127.0.0.1:{port}/whip"),
        "--source",
        "testsrc",
        "--audio",
        "none",
        "--duration",
        "5",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("connection refused"), "{err}");

    // A real WebRTC endpoint that refuses the token: castline's own WHEP endpoint answers 401.
    let serve = Serve::start(
        "whip-401",
        &mut castline(),
        &[
            "--source", "testsrc", "--size", "320x240", "--audio", "none",
        ],
    );
    let out = run(castline().args([
        "publish",
        &format!("{}/whep", serve.base),
        "--bearer",
        "not-the-token",
        "--source",
        "testsrc",
        "--audio",
        "none",
        "--duration",
        "5",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("rejected") && err.contains("HTTP 401"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-token"),
        "bearer token printed:\n{err}"
    );
    // Bad URLs are usage errors.
    let out = run(castline().args(["publish", "ftp://x/whip", "--audio", "none"]));
    assert_eq!(out.status.code(), Some(2));
    serve.stop();
}
