//! Recording end to end: real Xvfb with moving content, real ffprobe/ffmpeg reading files back.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= expected * tolerance
}

#[test]
fn screen_recording_has_asked_size_rate_duration_and_moving_frames() {
    let x = Xvfb::start(1280, 720);
    let _content = x.moving_content(30);
    let dir = tmpdir("screen");
    let file = dir.join("screen.mp4");
    let out = run(x.castline().arg("record").arg(&file).args([
        "--fps",
        "30",
        "--duration",
        "4",
        "--size",
        "960x540",
        "--stats",
        "off",
    ]));
    assert!(out.status.success());
    let p = probe(&file);
    assert_eq!((p.codec.as_str(), p.pix_fmt.as_str()), ("h264", "yuv420p"));
    assert_eq!((p.width, p.height), (960, 540));
    assert_eq!(
        (p.color_space.as_str(), p.color_range.as_str()),
        ("bt709", "tv")
    );
    assert!(within(p.frames as f64, 120.0, 0.05), "frames {}", p.frames);
    assert!(within(p.duration, 4.0, 0.05), "duration {}", p.duration);
    // The content scrolls every frame: nearly every recorded frame must differ.
    let distinct = distinct_frames(&file);
    assert!(
        distinct as f64 >= p.frames as f64 * 0.8,
        "only {distinct} distinct of {}",
        p.frames
    );
    // A clean stop leaves a standard MP4: moov before the media, no fragments.
    let boxes = mp4_boxes(&file);
    assert!(!boxes.contains(&"moof".to_string()), "{boxes:?}");
    let moov = boxes.iter().position(|b| b == "moov").unwrap();
    let mdat = boxes.iter().position(|b| b == "mdat").unwrap();
    assert!(moov < mdat, "{boxes:?}");
}

#[test]
fn static_screen_is_not_regrabbed_and_still_constant_rate() {
    let x = Xvfb::start(640, 480);
    let still = Command::new(TESTKIT)
        .args(["content", "--static"])
        .env("DISPLAY", &x.display)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _still = Proc(still);
    std::thread::sleep(Duration::from_millis(1500));
    let dir = tmpdir("static");
    let file = dir.join("static.mp4");
    let out = run(x.castline().arg("record").arg(&file).args([
        "--duration",
        "3",
        "--stats",
        "json",
        "--no-cursor",
    ]));
    assert!(out.status.success());
    // After the first second nothing changed on screen: no grabs, but frames still flow.
    let stats: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(stats.len() >= 2, "{stats:?}");
    let last = &stats[stats.len() - 1];
    assert_eq!(last["changed_ratio"].as_f64(), Some(0.0), "{last}");
    assert!(last["capture_fps"].as_f64().unwrap() > 25.0, "{last}");
    let p = probe(&file);
    assert!(within(p.frames as f64, 90.0, 0.05), "frames {}", p.frames);
}

#[test]
fn display_index_and_odd_screen_size_crop_to_even() {
    let x = Xvfb::start(1365, 767);
    let _content = x.moving_content(30);
    let out = run(x.castline().args(["list", "displays", "--json"]));
    assert!(out.status.success());
    let mons: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mons[0]["width"], 1365);
    assert_eq!(mons[0]["height"], 767);
    let dir = tmpdir("odd");
    let file = dir.join("odd.mp4");
    let out = run(x.castline().arg("record").arg(&file).args([
        "--source",
        "display:0",
        "--duration",
        "2",
        "--stats",
        "off",
    ]));
    assert!(out.status.success());
    let p = probe(&file);
    assert_eq!((p.width, p.height), (1364, 766));
    assert!(within(p.frames as f64, 60.0, 0.05), "frames {}", p.frames);
}

/// Centre pixel (RGB) of decoded frame `index`.
fn centre_pixel(file: &std::path::Path, w: usize, h: usize, index: usize, dx: usize) -> [u8; 3] {
    let (rgb, _) = decode(file, "rgb24");
    let frame = &rgb[index * w * h * 3..(index + 1) * w * h * 3];
    let i = ((h / 4) * w + w / 4 + dx) * 3;
    [frame[i], frame[i + 1], frame[i + 2]]
}

#[test]
fn window_capture_records_that_windows_pixels_and_follows_resizes() {
    let x = Xvfb::start(1280, 720);
    let _content = x.moving_content(30);
    let (_win_proc, id) = x.window(&[
        "--title",
        "castline green",
        "--size",
        "320x240",
        "--color",
        "00ff00",
        "--at",
        "200,150",
        "--resize-after",
        "2",
        "--resize-to",
        "480x240",
    ]);
    // Another window on top of it: with XComposite it must not show in the capture.
    let (_cover, _) = x.window(&[
        "--title", "cover", "--size", "200x200", "--color", "0000ff", "--at", "150,100",
    ]);
    let out = run(x.castline().args(["list", "windows", "--json"]));
    let wins: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = wins
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .expect("window listed");
    assert_eq!(w["title"], "castline green");
    assert!(w["pid"].as_u64().is_some());
    assert_eq!(
        w["process_name"]
            .as_str()
            .map(|s| s.starts_with("castline-testk")),
        Some(true)
    );

    let dir = tmpdir("window");
    let file = dir.join("window.mp4");
    let out = run(x.castline().arg("record").arg(&file).args([
        "--source",
        &format!("window:{id:#x}"),
        "--duration",
        "4",
        "--stats",
        "off",
        "--no-cursor",
    ]));
    assert!(out.status.success());
    let p = probe(&file);
    assert_eq!((p.width, p.height), (320, 240));
    assert!(within(p.frames as f64, 120.0, 0.05), "frames {}", p.frames);
    // Before the resize: the window's own green, even where the blue window covers it.
    let [r, g, b] = centre_pixel(&file, 320, 240, 30, 0);
    assert!(
        g > 200 && r < 60 && b < 60,
        "frame 30 at (80,60) is {r},{g},{b}"
    );
    // After the resize to 480x240 the picture is scaled into the fixed size (letterboxed):
    // still green, with black bars above and below.
    let (rgb, _) = decode(&file, "rgb24");
    let last = &rgb[(p.frames as usize - 1) * 320 * 240 * 3..p.frames as usize * 320 * 240 * 3];
    let px = |x: usize, y: usize| &last[(y * 320 + x) * 3..(y * 320 + x) * 3 + 3];
    assert!(px(80, 120 - 30)[1] > 200, "after resize: {:?}", px(80, 90));
    assert!(
        px(80, 10).iter().all(|&c| c < 40),
        "letterbox bar: {:?}",
        px(80, 10)
    );
}

#[test]
fn testsrc_timestamps_decode_back_from_the_file() {
    let dir = tmpdir("stamps");
    let file = dir.join("stamps.mp4");
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let out = run(castline().arg("record").arg(&file).args([
        "--source",
        "testsrc",
        "--size",
        "640x360",
        "--duration",
        "2",
        "--bitrate",
        "1M",
        "--stats",
        "off",
    ]));
    assert!(out.status.success());
    let (luma, _) = decode(&file, "gray");
    let (w, h) = (640usize, 360usize);
    let frames = luma.len() / (w * h);
    assert!(within(frames as f64, 60.0, 0.05), "{frames} frames");
    let stamps: Vec<_> = luma
        .chunks_exact(w * h)
        .map(|f| castline::capture::testsrc::read_stamp(f, w as u32, h as u32, w))
        .collect();
    assert!(
        stamps.iter().all(|s| s.is_some()),
        "undecodable stamps: {:?}",
        stamps.iter().filter(|s| s.is_none()).count()
    );
    let stamps: Vec<_> = stamps.into_iter().flatten().collect();
    for pair in stamps.windows(2) {
        assert_eq!(pair[1].tick, pair[0].tick + 1);
        let dt = pair[1].wall_us - pair[0].wall_us;
        assert!((33_000..=34_000).contains(&dt), "frame interval {dt} µs");
    }
    assert!(stamps[0].wall_us >= before && stamps[0].wall_us < before + 5_000_000);
}

#[test]
fn sigkill_mid_recording_leaves_a_playable_file() {
    let dir = tmpdir("sigkill");
    let file = dir.join("killed.mp4");
    let mut child = castline()
        .arg("record")
        .arg(&file)
        .args(["--source", "testsrc", "--size", "640x360", "--stats", "off"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&file, 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(5000));
    kill(&child, libc::SIGKILL);
    let _ = child.wait();
    let p = probe(&file);
    assert_eq!(p.codec, "h264");
    // Recording ran ~5 s; at most 2 s may be lost.
    assert!(p.frames >= 90, "only {} frames survived", p.frames);
    let (_, errors) = decode(&file, "gray");
    assert!(!errors.contains("Invalid data"), "{errors}");
    assert!(mp4_boxes(&file).contains(&"moof".to_string()));
}

#[test]
fn sigterm_stops_gracefully_with_a_finalized_file() {
    let dir = tmpdir("sigterm");
    let file = dir.join("term.mp4");
    let child = castline()
        .arg("record")
        .arg(&file)
        .args(["--source", "testsrc", "--size", "640x360", "--stats", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&file, 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(2000));
    kill(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let p = probe(&file);
    assert!(p.frames >= 50, "{} frames", p.frames);
    assert!(
        within(p.duration, p.frames as f64 / 30.0, 0.02),
        "duration {} for {} frames",
        p.duration,
        p.frames
    );
    assert!(!mp4_boxes(&file).contains(&"moof".to_string()));
}

#[test]
fn one_encode_feeds_every_output() {
    let dir = tmpdir("fanout");
    let (a, b) = (dir.join("a.mp4"), dir.join("b.mp4"));
    let out = run(castline().arg("record").arg(&a).arg("-o").arg(&b).args([
        "--source",
        "testsrc",
        "--size",
        "320x240",
        "--duration",
        "2",
        "--stats",
        "json",
    ]));
    assert!(out.status.success());
    let (pa, pb) = (probe(&a), probe(&b));
    assert_eq!(pa.frames, pb.frames);
    assert!(std::fs::read(&a).unwrap().len() > 1000);
    // Same encode: identical decoded pictures.
    assert_eq!(decode(&a, "gray").0, decode(&b, "gray").0);
    let last: serde_json::Value = stderr(&out)
        .lines()
        .rfind(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(last["outputs"].as_array().unwrap().len(), 2);
    for k in [
        "capture_fps",
        "encoded_fps",
        "encode_ms_avg",
        "encode_ms_p95",
        "bitrate_kbps",
    ] {
        assert!(last[k].as_f64().is_some(), "{k} missing in {last}");
    }
    assert!(last["drops"]["capture"].is_u64() && last["queues"]["raw"].is_u64());
}

#[test]
fn auto_encoder_falls_back_to_x264_and_explicit_hardware_fails_clearly() {
    let dir = tmpdir("encoder");
    let file = dir.join("auto.mp4");
    let out = run(castline().arg("record").arg(&file).args([
        "--source",
        "testsrc",
        "--size",
        "320x240",
        "--duration",
        "1",
        "--encoder",
        "auto",
        "--profile",
        "baseline",
        "--stats",
        "off",
    ]));
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("encoder_skipped") && err.contains("h264_vaapi"),
        "{err}"
    );
    assert!(
        err.contains("encoder_selected") && err.contains("libx264") && err.contains("fallback"),
        "{err}"
    );
    assert_eq!(probe(&file).profile, "Constrained Baseline");

    for (hw, name) in [
        ("vaapi", "h264_vaapi"),
        ("nvenc", "h264_nvenc"),
        ("qsv", "h264_qsv"),
    ] {
        let file = dir.join(format!("{hw}.mp4"));
        let out = run(castline().arg("record").arg(&file).args([
            "--source",
            "testsrc",
            "--duration",
            "1",
            "--encoder",
            hw,
        ]));
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("encoder '{name}' is not available")),
            "{err}"
        );
        assert!(
            !file.exists(),
            "no file may be left for a run that never started"
        );
    }
}

#[test]
fn cursor_is_composited_unless_disabled() {
    let x = Xvfb::start(640, 480);
    let (_win, _) = x.window(&[
        "--title", "bg", "--size", "640x480", "--color", "00ff00", "--at", "0,0",
    ]);
    let moved = std::process::Command::new(TESTKIT)
        .args(["pointer", "100", "300"])
        .env("DISPLAY", &x.display)
        .status()
        .unwrap();
    assert!(moved.success());
    let dir = tmpdir("cursor");
    // Non-green pixels in the 16x16 area below-right of the pointer's hot spot.
    let cursor_pixels = |file: &std::path::Path| -> usize {
        let (rgb, _) = decode(file, "rgb24");
        let frame = &rgb[..640 * 480 * 3];
        let mut n = 0;
        for y in 292..312 {
            for x in 92..112 {
                let i = (y * 640 + x) * 3;
                let (r, g, b) = (frame[i], frame[i + 1], frame[i + 2]);
                if !(g > 200 && r < 60 && b < 60) {
                    n += 1;
                }
            }
        }
        n
    };
    let with = dir.join("with.mp4");
    let out = run(x.castline().arg("record").arg(&with).args([
        "--duration",
        "1",
        "--stats",
        "off",
        "--bitrate",
        "4M",
    ]));
    assert!(out.status.success());
    let without = dir.join("without.mp4");
    let out = run(x.castline().arg("record").arg(&without).args([
        "--duration",
        "1",
        "--stats",
        "off",
        "--bitrate",
        "4M",
        "--no-cursor",
    ]));
    assert!(out.status.success());
    let (a, b) = (cursor_pixels(&with), cursor_pixels(&without));
    assert!(a >= 20, "only {a} cursor pixels around the pointer");
    assert!(b <= 2, "{b} non-background pixels with --no-cursor");
}

#[test]
fn keyframes_follow_the_keyframe_interval() {
    let dir = tmpdir("keyint");
    let file = dir.join("keyint.mp4");
    let out = run(castline().arg("record").arg(&file).args([
        "--source",
        "testsrc",
        "--size",
        "320x240",
        "--duration",
        "4",
        "--keyint",
        "1",
        "--stats",
        "off",
    ]));
    assert!(out.status.success());
    let keys: Vec<f64> = probe_entries(&file, "packet=pts_time,flags")
        .iter()
        .filter(|l| l.contains('K'))
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect();
    assert_eq!(keys.len(), 4, "keyframes at {keys:?}");
    for (i, k) in keys.iter().enumerate() {
        assert!((k - i as f64).abs() < 0.02, "keyframes at {keys:?}");
    }
}
