//! `castline publish livekit://…` against the real LiveKit server (built from the Go module proxy
//! by scripts/setup.sh), with LiveKit's own client (PyPI `livekit`) as the subscriber.
//!
//! The server runs on loopback only: HTTP and UDP on 127.0.0.1, no TCP fallback, and a loopback
//! STUN address so neither it nor its clients ever ask a public STUN server. Where the server
//! binary or the Python client is missing (no Go on this machine), each test says so and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const API_KEY: &str = "castlinetest";
const API_SECRET: &str = "castline-test-secret-0123456789abcdef";

fn server_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CASTLINE_LIVEKIT_SERVER") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = Path::new(&home).join(".cache/castline/livekit-bin/server");
    p.exists().then_some(p)
}

fn python_client() -> bool {
    Command::new("python3")
        .args(["-c", "import livekit.rtc, livekit.api"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the tests need, or why they skip.
fn available() -> Option<PathBuf> {
    let Some(bin) = server_binary() else {
        eprintln!("SKIPPED: no LiveKit server (scripts/setup.sh builds it when Go is installed)");
        return None;
    };
    if !python_client() {
        eprintln!(
            "SKIPPED: the Python LiveKit client is missing (pip install livekit livekit-api)"
        );
        return None;
    }
    Some(bin)
}

struct LiveKit {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    proc: Option<Proc>,
}

impl LiveKit {
    fn start(bin: PathBuf, name: &str) -> LiveKit {
        let dir = tmpdir(&format!("livekit-server-{name}"));
        let port = free_port();
        let udp = free_udp_port();
        let config = dir.join("livekit.yaml");
        std::fs::write(
            &config,
            format!(
                "port: {port}\n\
                 bind_addresses: [127.0.0.1]\n\
                 log_level: info\n\
                 rtc:\n  node_ip: 127.0.0.1\n  udp_port: {udp}\n  tcp_port: 0\n  \
                 use_external_ip: false\n  enable_loopback_candidate: true\n  \
                 stun_servers: [\"127.0.0.1:3478\"]\n  ips:\n    includes: [127.0.0.1/32]\n\
                 keys:\n  {API_KEY}: {API_SECRET}\n"
            ),
        )
        .unwrap();
        let mut lk = LiveKit {
            bin,
            config,
            log: dir.join("server.log"),
            port,
            proc: None,
        };
        lk.run();
        lk
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let p = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("livekit server starts");
        self.proc = Some(Proc(p));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("LiveKit did not start:\n{}", self.log_text());
    }

    /// A crash: SIGKILL (a SIGTERM'd LiveKit drains and waits for its participants to leave).
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    fn url(&self) -> String {
        format!("livekit://127.0.0.1:{}", self.port)
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// LiveKit's Python client as a subscriber for `secs`; its JSON lines.
fn subscribe(lk: &LiveKit, room: &str, secs: f64, stamps: bool) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/livekit/subscriber.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args([
            "--url",
            &lk.ws(),
            "--api-key",
            API_KEY,
            "--api-secret",
            API_SECRET,
        ])
        .args(["--room", room, "--seconds", &secs.to_string()]);
    if stamps {
        cmd.arg("--stamps");
    }
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("subscriber:\n{text}");
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn summary(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|l| l["event"] == "summary")
        .cloned()
        .unwrap_or_else(|| panic!("no summary from the subscriber: {lines:?}"))
}

fn publish(cmd: &mut Command, lk: &LiveKit, room: &str) {
    cmd.args(["publish", &lk.url()])
        .env("LIVEKIT_API_KEY", API_KEY)
        .env("LIVEKIT_API_SECRET", API_SECRET)
        .args(["--room", room, "--identity", "castline-test"])
        .args(["--stats", "json"]);
}

/// castline in the background, its stderr into `log` (read when it has ended).
fn spawn_logged(cmd: &mut Command, log: &Path) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn no_secrets(text: &str, token: Option<&str>) {
    assert!(!text.contains(API_SECRET), "API secret leaked:\n{text}");
    assert!(!text.contains("eyJ"), "a token leaked:\n{text}");
    if let Some(t) = token {
        assert!(!text.contains(t), "the token leaked:\n{text}");
    }
}

#[test]
fn publishes_a_screen_share_livekits_own_client_decodes() {
    let Some(bin) = available() else { return };
    let lk = LiveKit::start(bin, "share");
    let x = Xvfb::start(1280, 720);
    let _content = x.moving_content(30);
    let pulse = Pulse::start("livekit");
    let _tone = pulse.tone(440, "player", "speakers");
    let dir = tmpdir("livekit-share");
    let mut cmd = x.castline();
    publish(&mut cmd, &lk, "share");
    cmd.args(["--audio", "system", "--duration", "16"]);
    pulse.env(&mut cmd);
    let mut castline = spawn_logged(&mut cmd, &dir.join("err"));
    // Join mid-stream: the picture must come within a second of subscribing.
    std::thread::sleep(Duration::from_secs(3));
    let lines = subscribe(&lk, "share", 10.0, false);
    wait_proc(&mut castline, Duration::from_secs(30));
    let err = std::fs::read_to_string(dir.join("err")).unwrap();
    eprintln!("castline:\n{err}");
    let s = summary(&lines);
    assert_eq!(s["video_source"], "SOURCE_SCREENSHARE", "{s}");
    assert_eq!(s["audio_source"], "SOURCE_SCREENSHARE_AUDIO", "{s}");
    assert!(s["frames"].as_u64().unwrap() >= 60, "{s}");
    assert_eq!(
        s["sizes"].as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["1280x720"],
        "every frame has the screen's size: {s}"
    );
    assert!(s["first_frame_s"].as_f64().unwrap() <= 1.0, "{s}");
    assert!(
        s["audio_rms"].as_f64().unwrap() > 0.01,
        "audio has energy: {s}"
    );
    assert_eq!(castline.0.wait().unwrap().code(), Some(0));
    assert!(err.contains("livekit_track_published"), "{err}");
    no_secrets(&err, None);
    // The rate controller runs on the server's transport-wide feedback (TWCC).
    let stats = json_stats(&err);
    let estimate = stats
        .iter()
        .rev()
        .find_map(|v| v["outputs"][0]["peers"][0]["estimate_kbps"].as_f64());
    assert!(estimate.is_some_and(|e| e > 0.0), "no estimate from TWCC");
    let log = lk.log_text();
    // Stopping said `leave`: the server closed the participant at the client's request.
    assert!(
        log.lines().any(|l| l.contains("participant closing")
            && l.contains("castline-test")
            && l.contains("CLIENT_REQUEST_LEAVE")),
        "{log}"
    );
    // Nothing left the machine: the server was never told of a public STUN server.
    assert!(!log.contains("stun.l.google"), "{log}");
}

#[test]
fn reconnects_after_a_server_crash_and_the_recording_keeps_every_frame() {
    let Some(bin) = available() else { return };
    let mut lk = LiveKit::start(bin, "restart");
    let dir = tmpdir("livekit-restart");
    let rec = dir.join("rec.mp4");
    let mut cmd = castline();
    publish(&mut cmd, &lk, "restart");
    cmd.args(["--source", "testsrc", "--audio", "none", "--duration", "24"])
        .args(["--reconnect-delay", "0.5", "--reconnect-max-delay", "1"])
        .arg("-o")
        .arg(&rec);
    let mut castline = spawn_logged(&mut cmd, &dir.join("err"));
    std::thread::sleep(Duration::from_secs(5));
    lk.kill();
    std::thread::sleep(Duration::from_secs(3));
    lk.run();
    let restarted = Instant::now();
    // castline rejoins on its own; a subscriber of the new server decodes again.
    std::thread::sleep(Duration::from_secs(4));
    let lines = subscribe(&lk, "restart", 6.0, true);
    wait_proc(&mut castline, Duration::from_secs(30));
    let err = std::fs::read_to_string(dir.join("err")).unwrap();
    eprintln!("castline:\n{err}");
    assert_eq!(castline.0.wait().unwrap().code(), Some(0), "{err}");
    let s = summary(&lines);
    assert!(s["frames"].as_u64().unwrap() >= 120, "{s}");
    assert_eq!(s["video_source"], "SOURCE_SCREENSHARE");
    assert!(err.contains("reconnecting"), "{err}");
    let stats = json_stats(&err);
    let reconnects = stats
        .iter()
        .filter_map(|v| v["outputs"][0]["reconnects"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(reconnects >= 1, "stats count the rejoin");
    assert!(restarted.elapsed() < Duration::from_secs(40));
    // The recording beside it was never disturbed: every frame of 24 s at 30 fps.
    let p = probe(&rec);
    let n = p.frames;
    eprintln!("recording: {n} frames, {:?}", p.duration);
    assert!(n >= 715, "recording frames: {n}");
    assert!((p.duration - 24.0).abs() < 0.2, "{:?}", p.duration);
}

fn token(secret: &str, can_publish: bool) -> String {
    let out = Command::new("python3")
        .args(["-c", &format!(
            "from livekit import api; print(api.AccessToken('{API_KEY}', '{secret}').with_identity('t').with_grants(api.VideoGrants(room_join=True, room='r', can_publish={})).to_jwt())",
            if can_publish { "True" } else { "False" }
        )])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Exit 1 within 5 s, the classified message, the token never printed.
fn refused(args: &[&str], token: &str, expect: &str) {
    let t0 = Instant::now();
    let out = run(castline()
        .args(args)
        .args(["--source", "testsrc", "--audio", "none", "--duration", "20"])
        .env("CASTLINE_LIVEKIT_TOKEN", token));
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(text.contains(expect), "expected '{expect}':\n{text}");
    no_secrets(&text, Some(token));
}

#[test]
fn bad_tokens_and_a_missing_server_are_classified() {
    let Some(bin) = available() else { return };
    let lk = LiveKit::start(bin, "errors");
    let url = lk.url();
    let forged = token("not-the-secret-not-the-secret-0123", true);
    refused(&["publish", &url], &forged, "refused the access token");
    let viewer = token(API_SECRET, false);
    refused(&["publish", &url], &viewer, "does not grant canPublish");
    let good = token(API_SECRET, true);
    let closed = format!("livekit://127.0.0.1:{}", free_port());
    refused(&["publish", &closed], &good, "connection refused");
    refused(&["publish", &url], "not-a-jwt", "unusable access token");
}

/// nginx's stream module terminating TLS (a certificate for 127.0.0.1 from a private CA) in front
/// of LiveKit's port, as a self-hosted deployment does; returns the TLS port, the CA certificate
/// and the proxy process.
fn tls_proxy(lk: &LiveKit, name: &str) -> (u16, PathBuf, Proc) {
    let dir = tmpdir(&format!("livekit-tls-{name}"));
    // A private CA and a server certificate it signed (webpki takes no CA as a server's own
    // certificate).
    let sh = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    sh(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
    ]
    .into_iter()
    .chain([
        "/CN=castline test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])
    .collect::<Vec<_>>());
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             stream {{ server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem; proxy_pass 127.0.0.1:{}; }} }}\n",
            lk.port
        ),
    )
    .unwrap();
    let p = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx libnginx-mod-stream)");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nginx did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (port, dir.join("ca.pem"), Proc(p))
}

#[test]
fn publishes_over_wss_and_refuses_a_certificate_it_cannot_trust() {
    let Some(bin) = available() else { return };
    let lk = LiveKit::start(bin, "wss");
    let (port, cert, _proxy) = tls_proxy(&lk, "wss");
    let url = format!("livekit+wss://127.0.0.1:{port}");
    let env = |c: &mut Command| {
        c.env("LIVEKIT_API_KEY", API_KEY)
            .env("LIVEKIT_API_SECRET", API_SECRET)
            .args(["--room", "wss", "--source", "testsrc", "--audio", "none"]);
    };
    // Not trusted by the webpki roots: a classified failure at once, exit 1.
    let mut untrusted = castline();
    untrusted.args(["publish", &url, "--duration", "5"]);
    env(&mut untrusted);
    let t0 = Instant::now();
    let out = run(&mut untrusted);
    assert_eq!(out.status.code(), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let text = stderr(&out);
    assert!(
        text.contains("TLS") || text.contains("certificate"),
        "{text}"
    );
    no_secrets(&text, None);
    // Trusted through --ca-file: the subscriber (on plain ws) decodes the share.
    let dir = tmpdir("livekit-wss");
    let mut cmd = castline();
    cmd.args(["publish", &url, "--duration", "12", "--ca-file"])
        .arg(&cert);
    env(&mut cmd);
    let mut castline = spawn_logged(&mut cmd, &dir.join("err"));
    std::thread::sleep(Duration::from_secs(3));
    let s = summary(&subscribe(&lk, "wss", 5.0, false));
    wait_proc(&mut castline, Duration::from_secs(20));
    let err = std::fs::read_to_string(dir.join("err")).unwrap();
    assert!(s["frames"].as_u64().unwrap() >= 60, "{s}\n{err}");
    assert_eq!(s["video_source"], "SOURCE_SCREENSHARE");
    assert_eq!(castline.0.wait().unwrap().code(), Some(0), "{err}");
    assert!(err.contains("wss://127.0.0.1"), "{err}");
    no_secrets(&err, None);
}
