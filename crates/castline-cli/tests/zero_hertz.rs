//! Zero-hertz screen sharing: a still screen shared with `serve` to headless Chromium costs
//! keep-alive frames only, the viewer keeps its picture, a change is shown at once, and the
//! still picture is refined until it matches the screen; recordings keep a constant rate unless
//! `--vfr`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The screen as ffmpeg's x11grab sees it, as the luma (BT.709, limited range) castline encodes.
fn grab_luma(display: &str, w: u32, h: u32) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "x11grab",
            "-video_size",
            &format!("{w}x{h}"),
        ])
        .args(["-i", display, "-frames:v", "1"])
        .args([
            "-vf",
            "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
        ])
        .args(["-f", "rawvideo", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "x11grab: {out:?}");
    out.stdout[..(w * h) as usize].to_vec()
}

/// The luma plane of the last frame of a recording (as coded: limited range).
fn last_frame_luma(path: &Path, w: u32, h: u32) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "decode: {out:?}");
    let frame = (w * h * 3 / 2) as usize;
    assert!(out.stdout.len() >= frame, "no frames decoded");
    let start = (out.stdout.len() / frame - 1) * frame;
    out.stdout[start..start + (w * h) as usize].to_vec()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[test]
fn a_still_screen_idles_keeps_its_viewer_and_shows_a_change_at_once() {
    let (w, h) = (1280, 720);
    let x = Xvfb::start(w, h);
    let _content = x.static_content();
    let dir = tmpdir("zh-still");
    let rec = dir.join("rec.mp4");
    let duration = 75;
    let serve = Serve::start(
        "zh-serve",
        &mut x.castline(),
        &[
            "--fps",
            "30",
            "--bitrate",
            "3M",
            "--audio",
            "none",
            "--stats",
            "json",
            "--duration",
            &duration.to_string(),
            "--vfr",
            "-o",
            rec.to_str().unwrap(),
        ],
    );
    // The viewer watches for 60 s; at 35 s a red window appears at (200, 200).
    let plan = json!({ "steps": [
        { "op": "open", "id": "v", "url": serve.url },
        { "op": "wait_frames", "id": "v", "n": 10, "timeout_ms": 15000 },
        { "op": "watch", "id": "v", "seconds": 60, "x": 300, "y": 300, "rgb": [255, 0, 0] },
    ]});
    let dir_b = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let mut node = Command::new("node")
        .arg(dir_b.join("peer.mjs"))
        .arg(json!(plan).to_string())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = node.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("viewer: {}", &line[..line.len().min(300)]);
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let waited = rx.recv_timeout(Duration::from_secs(40)).unwrap();
    let waited = if waited["op"] == "open" {
        rx.recv_timeout(Duration::from_secs(40)).unwrap()
    } else {
        waited
    };
    assert_eq!(waited["ok"], true, "{waited}");
    let joined = serve.started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(35));
    let changed_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let changed = serve.started.elapsed().as_secs_f64();
    let (_win, _id) = x.window(&["--size", "300x300", "--at", "200,200", "--color", "ff0000"]);
    let watch = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let _ = node.wait();
    // Still again: refinement frames, then keep-alives. Compare the screen with the last frame.
    std::thread::sleep(Duration::from_secs(3));
    let screen = grab_luma(&x.display, w, h);
    let log = serve.stop();
    let stats = json_stats(&log);

    // While the screen is still (from 3 s after the viewer joined to the change), the encoder
    // idles at the keep-alive rate.
    let still: Vec<&Value> = stats
        .iter()
        .filter(|s| {
            let t = s["time_s"].as_f64().unwrap();
            t > joined + 3.0 && t < changed - 0.1
        })
        .collect();
    assert!(still.len() >= 25, "{} still seconds", still.len());
    for s in &still {
        assert!(s["encoded_fps"].as_f64().unwrap() <= 2.0, "{s}");
        assert_eq!(s["encoder_idle"], true, "{s}");
    }
    assert!(log.contains("zero_hertz_on"), "{log}");

    // The viewer kept a live picture the whole minute, connected.
    assert_eq!(watch["ok"], true, "{watch}");
    let samples = watch["samples"].as_array().unwrap();
    assert!(samples.len() >= 55, "{}", samples.len());
    for s in samples {
        assert!(s[1].as_f64().unwrap() > 10.0, "picture went black: {s}");
        assert_eq!(s[2], "live", "{s}");
        assert_eq!(s[3], "connected", "{s}");
    }
    // The change reached the viewer at once.
    let shown = watch["matched_at"]
        .as_i64()
        .expect("the red window never showed");
    let latency = shown - changed_wall;
    eprintln!("change shown after {latency} ms");
    assert!((0..=400).contains(&latency), "{latency} ms");

    // Refinement: the last frame encoded matches the still screen closely.
    let last = last_frame_luma(&rec, w, h);
    let db = psnr(&last, &screen);
    eprintln!("PSNR of the last frame against the screen: {db:.1} dB");
    assert!(db >= 40.0, "{db:.1} dB");

    // The --vfr recording: exactly as long as the run, frames only where needed.
    let p = probe(&rec);
    eprintln!("recording: {} frames, {} s", p.frames, p.duration);
    assert!(
        (p.duration - duration as f64).abs() < 0.15,
        "{}",
        p.duration
    );
    assert!(
        p.frames < 400,
        "{} frames (CFR would be {})",
        p.frames,
        duration * 30
    );
}

#[test]
fn recordings_keep_a_constant_rate_unless_vfr() {
    let (w, h) = (640, 360);
    let x = Xvfb::start(w, h);
    let _content = x.static_content();
    let dir = tmpdir("zh-rec");
    for vfr in [false, true] {
        let rec = dir.join(format!("vfr-{vfr}.mp4"));
        let mut cmd = x.castline();
        cmd.args(["record"]).arg(&rec).args([
            "--duration",
            "6",
            "--audio",
            "none",
            "--stats",
            "json",
        ]);
        if vfr {
            cmd.arg("--vfr");
        }
        let t0 = Instant::now();
        let out = run(&mut cmd);
        assert!(out.status.success());
        assert!(t0.elapsed() < Duration::from_secs(20));
        let p = probe(&rec);
        eprintln!("vfr={vfr}: {} frames, {} s", p.frames, p.duration);
        assert!((p.duration - 6.0).abs() < 0.1, "{}", p.duration);
        if vfr {
            // One change (the first frame), 15 refinements, ~6 keep-alives, the last frame.
            assert!(p.frames <= 30, "{}", p.frames);
            assert!(stderr(&out).contains("zero_hertz_on"));
        } else {
            assert!(p.frames >= 178, "{}", p.frames);
            assert!(stderr(&out).contains("zero_hertz_off"));
        }
    }
}
