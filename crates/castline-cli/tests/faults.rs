//! The failure policy against real faults: an ffmpeg child that crashes in a loop, the X
//! server killed mid-recording, the sound server killed mid-recording. Each gives the
//! documented health events in order, and the recording stays playable.

mod common;

use std::time::Duration;

use common::*;

/// Byte offset of the first log line naming `event` (panics when absent).
fn pos(log: &str, event: &str) -> usize {
    log.find(event)
        .unwrap_or_else(|| panic!("no {event} in\n{log}"))
}

#[test]
fn an_ffmpeg_child_crashing_in_a_loop_is_unstable_and_stop_on_unstable_ends_the_run_cleanly() {
    let dir = tmpdir("faults-ffmpeg");
    let file = dir.join("loop.mp4");
    // Each child lives one second: restarts at ~1.3 s, ~2.8 s, ~4.8 s.
    let out = run(castline().arg("record").arg(&file).args([
        "--source",
        "ffmpeg:-re -f lavfi -i testsrc=size=320x240:rate=30 -t 1",
        "--keyint",
        "1",
        "--audio",
        "none",
        "--duration",
        "30",
        "--stop-on-unstable",
    ]));
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(
        log.contains("stopped on an unstable run (capture: "),
        "{log}"
    );
    assert_eq!(log.matches("ffmpeg_restarting").count(), 3, "{log}");
    let degraded = pos(&log, "stage_degraded");
    let unstable = pos(&log, "unstable");
    let fallback = pos(&log, "fallback_recommended");
    assert!(pos(&log, "ffmpeg_restarting") < degraded, "{log}");
    assert!(degraded < unstable && unstable < fallback, "{log}");
    assert!(
        log[unstable..].starts_with("unstable stage=\"capture\" reason=\"source_restarted\"")
            || log[unstable..fallback].contains("count=3"),
        "{log}"
    );
    assert!(fallback < pos(&log, "stop_on_unstable"), "{log}");
    // Stopped within a second or two of the third restart, the file finalized and playable.
    let p = probe(&file);
    assert!(p.duration > 2.0 && p.duration < 8.0, "{p:?}");
}

#[test]
fn the_x_server_killed_mid_recording_recommends_a_fallback_and_the_recording_plays() {
    let mut x = Xvfb::start(640, 360);
    let _content = x.moving_content(30);
    let dir = tmpdir("faults-x");
    let file = dir.join("x.mp4");
    let child = spawn_castline(x.castline().arg("record").arg(&file).args([
        "--source",
        "screen",
        "--audio",
        "none",
        "--duration",
        "30",
    ]));
    std::thread::sleep(Duration::from_secs(3));
    x.kill();
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    assert!(!out.status.success(), "the capture failed: {log}");
    let failed = pos(&log, "capture_failed");
    let unstable = pos(&log, "unstable");
    let fallback = pos(&log, "fallback_recommended");
    assert!(failed < unstable && unstable < fallback, "{log}");
    assert!(log[fallback..].contains("stage=\"capture\""), "{log}");
    let p = probe(&file);
    assert!(p.duration > 2.0 && p.duration < 5.0, "{p:?}");
}

#[test]
fn the_sound_server_killed_mid_recording_degrades_audio_and_the_run_goes_on() {
    let mut pulse = Pulse::start("faults");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let dir = tmpdir("faults-pulse");
    let file = dir.join("a.mp4");
    let mut cmd = castline();
    pulse.env(&mut cmd).arg("record").arg(&file).args([
        "--source",
        "testsrc",
        "--size",
        "320x240",
        "--audio",
        "system",
        "--duration",
        "8",
        "--stats",
        "json",
    ]);
    let child = spawn_castline(&mut cmd);
    std::thread::sleep(Duration::from_secs(3));
    pulse.kill();
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let lost = pos(&log, "audio_source_lost");
    let degraded = pos(&log, "stage_degraded");
    assert!(lost < degraded, "{log}");
    assert!(log[degraded..].contains("stage=\"audio\""), "{log}");
    assert!(
        !log.contains("fallback_recommended"),
        "one loss is no reason to give up: {log}"
    );
    // The stats say so: audio degraded, its reason, the rest ok.
    let stats = json_stats(&log);
    let last = stats.last().unwrap();
    let health = last["health"].as_array().unwrap();
    let audio = health.iter().find(|h| h["stage"] == "audio").unwrap();
    assert_eq!(audio["state"], "degraded", "{health:?}");
    assert_eq!(audio["last_reason"], "audio_source_lost", "{health:?}");
    assert!(
        health
            .iter()
            .filter(|h| h["stage"] != "audio")
            .all(|h| h["state"] == "ok"),
        "{health:?}"
    );
    // Audio went on (silence) to the end: both tracks the full 8 s.
    let p = probe(&file);
    assert!((p.duration - 8.0).abs() < 0.3, "{p:?}");
}

#[test]
fn an_rtmp_server_that_black_holes_mid_stream_makes_that_output_unstable_and_nothing_else() {
    let net = NetPair::create("blackhole");
    let dir = tmpdir("faults-blackhole");
    let _nginx = net.nginx_rtmp(&dir);
    let file = dir.join("rec.mp4");
    let log = dir.join("castline.log");
    let mut castline = Proc(
        NetPair::cmd(&net.a, CASTLINE)
            .args(["stream", &format!("rtmp://{NET_B}:1935/live/k")])
            .arg("-o")
            .arg(&file)
            .args([
                "--source",
                "testsrc",
                "--size",
                "640x360",
                "--audio",
                "none",
                "--keyint",
                "1",
                "--duration",
                "30",
                "--stats",
                "json",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(5));
    // The server's address now swallows everything (nftables drop, no reset).
    let nft = |rule: &str| {
        let s = NetPair::cmd(&net.a, "nft").arg(rule).status().unwrap();
        assert!(s.success(), "nft {rule}");
    };
    nft("add table inet blackhole");
    nft("add chain inet blackhole out { type filter hook output priority 0 ; }");
    nft(&format!(
        "add rule inet blackhole out ip daddr {NET_B} drop"
    ));
    wait_proc(&mut castline, Duration::from_secs(60));
    let log = std::fs::read_to_string(&log).unwrap();
    let connected = pos(&log, "output_connected");
    let degraded = pos(&log, "stage_degraded");
    let unstable = pos(&log, "unstable");
    assert!(connected < degraded && degraded < unstable, "{log}");
    assert!(log[degraded..].contains("stage=\"rtmp://"), "{log}");
    assert!(log[unstable..].contains("stage=\"rtmp://"), "{log}");
    // The recording is not a reason to give up, and it has every frame.
    assert!(!log.contains("fallback_recommended"), "{log}");
    let p = probe(&file);
    assert!((p.duration - 30.0).abs() < 0.2, "{p:?}");
    let last = json_stats(&log).pop().unwrap();
    let health = last["health"].as_array().unwrap().clone();
    let rec = health
        .iter()
        .find(|h| h["stage"].as_str().unwrap().ends_with("rec.mp4"))
        .unwrap();
    assert_eq!(rec["state"], "ok", "{health:?}");
    let rtmp = health
        .iter()
        .find(|h| h["stage"].as_str().unwrap().starts_with("rtmp://"))
        .unwrap();
    assert_eq!(rtmp["state"], "failing", "{health:?}");
}
