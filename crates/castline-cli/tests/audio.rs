//! Audio against a real PulseAudio daemon started per test (null sinks, tones played by ffmpeg,
//! flash + beep from the testkit), read back from the files with ffprobe/ffmpeg.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Start/end/duration of one stream, seconds.
fn stream_duration(path: &Path, select: &str) -> f64 {
    probe_stream(path, select, "stream=duration")
        .first()
        .and_then(|s| s.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no {select} duration in {}", path.display()))
}

/// The video lasts `secs` and the audio track ends within 50 ms of it.
fn assert_tracks_end_together(path: &Path, secs: f64) {
    let (v, a) = (stream_duration(path, "v:0"), stream_duration(path, "a:0"));
    assert!((v - secs).abs() < 0.1, "video {v} s, expected {secs}");
    assert!((v - a).abs() <= 0.050, "video {v} s vs audio {a} s");
}

fn audio_params(path: &Path) -> String {
    probe_stream(path, "a:0", "stream=codec_name,sample_rate,channels").join(",")
}

fn testsrc_record(pulse: &Pulse, file: &Path, audio: &str, secs: u32) -> Command {
    let mut c = castline();
    pulse.env(&mut c).arg("record").arg(file).args([
        "--source",
        "testsrc",
        "--size",
        "640x360",
        "--preset",
        "ultrafast",
        "--stats",
        "json",
        "--audio",
        audio,
        "--duration",
        &secs.to_string(),
    ]);
    c
}

fn last_audio_stats(stderr: &str) -> serde_json::Value {
    json_stats(stderr)
        .into_iter()
        .rev()
        .find_map(|s| s.get("audio").cloned())
        .expect("stats carry an audio object")
}

fn source<'a>(audio: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    audio["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {audio}"))
}

#[test]
fn system_audio_is_recorded_as_aac_with_the_played_tone() {
    let pulse = Pulse::start("system");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let dir = tmpdir("audio-system");
    let file = dir.join("a.mp4");
    let out = run(&mut testsrc_record(&pulse, &file, "system", 7));
    assert!(out.status.success());
    assert_eq!(audio_params(&file), "aac,48000,2");
    assert_tracks_end_together(&file, 7.0);
    let (samples, start) = decode_audio(&file);
    // PulseAudio delivers a monitor's first data only once the sink renders again (up to its
    // configured latency, ~2 s with ffmpeg as the player): measure after that.
    let w = window(&samples, 3.0 - start, 6.5 - start);
    let f = dominant_frequency(&w);
    let amp = tone_amplitude(&w, 440.0);
    eprintln!(
        "dominant {f} Hz, 440 Hz amplitude {amp:.3}, rms {:.3}",
        rms(&w)
    );
    assert!((f - 440.0).abs() <= 5.0, "dominant frequency {f}");
    // ffmpeg's sine has amplitude 1/8; AAC at 128 kb/s keeps it.
    assert!((0.11..0.14).contains(&amp), "440 Hz amplitude {amp}");
    let stats = last_audio_stats(&stderr(&out));
    let sys = source(&stats, "system");
    assert_eq!(sys["live"], true);
    assert!(sys["peak_dbfs"].as_f64().unwrap() > -25.0, "{sys}");
}

#[test]
fn mic_and_system_are_mixed_and_an_unplugged_mic_becomes_silence() {
    let pulse = Pulse::start("both");
    let _sys = pulse.tone(440, "toneA", "speakers");
    let mic_tone = pulse.tone(1000, "voice", "micsink");
    let dir = tmpdir("audio-both");
    let file = dir.join("both.mp4");
    let child = spawn_castline(&mut testsrc_record(&pulse, &file, "both", 12));
    std::thread::sleep(Duration::from_millis(6500));
    pulse.unplug_mic();
    drop(mic_tone);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(out.status.success());
    assert!(err.contains("audio_source_lost"), "the loss is reported");
    // 12 s of video: the run did not stall when the mic went away.
    assert_tracks_end_together(&file, 12.0);
    let (samples, start) = decode_audio(&file);
    let before = window(&samples, 3.0 - start, 6.0 - start);
    let after = window(&samples, 8.0 - start, 11.5 - start);
    let amp = |w: &[f32], f| tone_amplitude(w, f);
    eprintln!(
        "before: 440 {:.3} 1000 {:.3}; after: 440 {:.3} 1000 {:.3}",
        amp(&before, 440.0),
        amp(&before, 1000.0),
        amp(&after, 440.0),
        amp(&after, 1000.0)
    );
    assert!(amp(&before, 440.0) > 0.08 && amp(&before, 1000.0) > 0.08);
    assert!(amp(&after, 440.0) > 0.08, "system audio continues");
    assert!(amp(&after, 1000.0) < 0.005, "the unplugged mic is silent");
    let stats = last_audio_stats(&err);
    assert_eq!(source(&stats, "mic")["live"], false);
    assert_eq!(source(&stats, "system")["live"], true);
}

#[test]
fn app_capture_records_only_that_application() {
    let pulse = Pulse::start("app");
    let _a = pulse.tone(440, "toneA", "speakers");
    let _b = pulse.tone(1000, "toneB", "speakers");
    let dir = tmpdir("audio-app");
    let file = dir.join("app.mp4");
    let out = run(&mut testsrc_record(&pulse, &file, "app:toneA", 7));
    assert!(out.status.success());
    let (samples, start) = decode_audio(&file);
    let w = window(&samples, 3.0 - start, 6.5 - start);
    let (a, b) = (tone_amplitude(&w, 440.0), tone_amplitude(&w, 1000.0));
    eprintln!("440 {a:.4}, 1000 {b:.4}");
    assert!(a > 0.08, "toneA captured: {a}");
    assert!(b < 0.003, "toneB not captured: {b}");

    // Unknown application: a clear error before anything is written.
    let missing = dir.join("missing.mp4");
    let out = run(&mut testsrc_record(&pulse, &missing, "app:nosuch", 2));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no application 'nosuch'"), "{err}");
    assert!(err.contains("toneA"), "lists what is playing: {err}");
    assert!(!missing.exists());
    let out = run(&mut testsrc_record(&pulse, &missing, "mic:nosuch", 2));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown audio source 'nosuch'"));
}

/// `sh -c 'sleep DELAY; ffmpeg … 440 Hz as "callapp"; true'`: a "call app" whose player is its
/// child and starts after `delay_s` (the trailing `true` keeps sh from exec'ing ffmpeg).
fn call_app(pulse: &Pulse, delay_s: u32) -> Proc {
    let script = format!(
        "sleep {delay_s}; ffmpeg -hide_banner -loglevel error -re -f lavfi \
         -i sine=frequency=440:sample_rate=48000 -f pulse -name callapp -device speakers tone; true"
    );
    let child = pulse
        .env(&mut Command::new("sh"))
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

fn stop_call_app(app: Proc) {
    let _ = Command::new("pkill")
        .args(["-P", &app.0.id().to_string()])
        .status();
    drop(app);
}

#[test]
fn system_except_leaves_out_one_application_and_its_children() {
    let pulse = Pulse::start("except");
    let _b = pulse.tone(1000, "toneB", "speakers");
    let dir = tmpdir("audio-except");

    // By PID: the excluded shell's child starts playing 2 s after the share began.
    let app = call_app(&pulse, 2);
    let file = dir.join("except-pid.mp4");
    let out = run(&mut testsrc_record(
        &pulse,
        &file,
        &format!("system-except:{}", app.0.id()),
        8,
    ));
    let listed = pulse.pactl(&["list", "sink-inputs"]);
    stop_call_app(app);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        listed.contains("application.name = \"callapp\""),
        "the call app was playing: {listed}"
    );
    let (samples, start) = decode_audio(&file);
    let w = window(&samples, 4.0 - start, 7.5 - start);
    let (a, b) = (tone_amplitude(&w, 440.0), tone_amplitude(&w, 1000.0));
    eprintln!("by pid: 440 {a:.4}, 1000 {b:.4}");
    assert!(b > 0.08, "the other application is captured: {b}");
    assert!(a < 0.003, "the excluded application's child is not: {a}");

    // By name, the app already playing when the share starts.
    let app = call_app(&pulse, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let file = dir.join("except-name.mp4");
    let out = run(&mut testsrc_record(
        &pulse,
        &file,
        "system-except:callapp",
        5,
    ));
    stop_call_app(app);
    assert!(out.status.success(), "{}", stderr(&out));
    let (samples, start) = decode_audio(&file);
    let w = window(&samples, 2.0 - start, 4.5 - start);
    let (a, b) = (tone_amplitude(&w, 440.0), tone_amplitude(&w, 1000.0));
    eprintln!("by name: 440 {a:.4}, 1000 {b:.4}");
    assert!(b > 0.08, "the other application is captured: {b}");
    assert!(a < 0.003, "the excluded application is not: {a}");

    // The same PID through plain `app:` captures exactly the other side (sanity of the tones).
    let app = call_app(&pulse, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let file = dir.join("only-app.mp4");
    let out = run(&mut testsrc_record(&pulse, &file, "app:callapp", 4));
    stop_call_app(app);
    assert!(out.status.success(), "{}", stderr(&out));
    let (samples, start) = decode_audio(&file);
    let w = window(&samples, 1.5 - start, 3.5 - start);
    assert!(tone_amplitude(&w, 440.0) > 0.08);
    assert!(tone_amplitude(&w, 1000.0) < 0.003);
}

/// Onsets of white flashes in the video (frame time minus half a frame interval) and of beeps in
/// the audio, seconds on the file's timeline.
fn flash_and_beep_onsets(file: &Path, fps: f64) -> (Vec<f64>, Vec<f64>) {
    let v_start: f64 = probe_entries(file, "stream=start_time")
        .first()
        .and_then(|s| s.trim_end_matches(',').parse().ok())
        .unwrap_or(0.0);
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args([
            "-map",
            "0:v",
            "-vf",
            "scale=16:9,format=gray",
            "-f",
            "rawvideo",
            "-",
        ])
        .output()
        .unwrap();
    let luma: Vec<f64> = out
        .stdout
        .chunks_exact(144)
        .map(|f| f.iter().map(|&v| v as f64).sum::<f64>() / 144.0)
        .collect();
    // Constant frame rate: frame i is at start + i / fps.
    let flashes = (1..luma.len())
        .filter(|&i| luma[i] > 128.0 && luma[i - 1] <= 128.0)
        .map(|i| v_start + (i as f64 - 0.5) / fps)
        .collect();
    let (samples, start) = decode_audio(file);
    let mut beeps = Vec::new();
    let mut on = false;
    // 1 ms windows: a beep starts where the envelope first passes 0.1.
    for (i, w) in samples.chunks(96).enumerate() {
        let loud = w.iter().any(|v| v.abs() > 0.1);
        if loud && !on {
            beeps.push(start + i as f64 * 0.001);
        }
        on = loud;
    }
    (flashes, beeps)
}

#[test]
fn flash_and_beep_stay_within_40_ms_for_a_minute() {
    let pulse = Pulse::start("sync");
    let x = Xvfb::start(640, 360);
    let mut kit = Command::new(TESTKIT);
    kit.arg("flashbeep").env("DISPLAY", &x.display);
    let _kit = Proc(
        pulse
            .env(&mut kit)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let dir = tmpdir("audio-sync");
    let file = dir.join("sync.mp4");
    let mut c = x.castline();
    pulse.env(&mut c).arg("record").arg(&file).args([
        "--fps",
        "60",
        "--preset",
        "ultrafast",
        "--audio",
        "system",
        "--stats",
        "off",
        "--duration",
        "66",
    ]);
    let out = run(&mut c);
    assert!(out.status.success());
    let (flashes, beeps) = flash_and_beep_onsets(&file, 60.0);
    let offsets: Vec<(f64, f64)> = flashes
        .iter()
        .filter(|&&f| f > 3.0)
        .map(|&f| {
            let b = beeps
                .iter()
                .copied()
                .min_by(|a, b| (a - f).abs().total_cmp(&(b - f).abs()))
                .expect("beeps in the audio");
            (f, (b - f) * 1000.0)
        })
        .collect();
    for (f, o) in &offsets {
        eprintln!("flash at {f:6.3} s: beep {o:+6.1} ms");
    }
    assert!(offsets.len() >= 55, "{} flashes found", offsets.len());
    let worst = offsets.iter().map(|(_, o)| o.abs()).fold(0.0, f64::max);
    assert!(worst <= 40.0, "worst A/V offset {worst:.1} ms");
    assert!(
        offsets.last().unwrap().0 > 60.0,
        "measured after a minute too"
    );
}

#[test]
fn rtmp_stream_carries_aac() {
    let pulse = Pulse::start("rtmp");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let nginx = Nginx::start();
    let url = nginx.url("live", "audiokey");
    let dir = tmpdir("audio-rtmp");
    let mut c = castline();
    pulse.env(&mut c).arg("stream").arg(&url).args([
        "--source",
        "testsrc",
        "--size",
        "640x360",
        "--preset",
        "ultrafast",
        "--audio",
        "system",
        "--duration",
        "11",
        "--stats",
        "off",
    ]);
    let mut child = Proc(spawn_castline(&mut c));
    std::thread::sleep(Duration::from_millis(1500));
    let got = dir.join("live.mkv");
    read_live(&url, 6, &got);
    wait_proc(&mut child, Duration::from_secs(15));
    assert_eq!(audio_params(&got), "aac,48000,2");
    let (samples, start) = decode_audio(&got);
    let w = window(&samples, 2.0 - start.min(1.0), 4.5 - start.min(1.0));
    let amp = tone_amplitude(&w, 440.0);
    assert!(amp > 0.08, "440 Hz in the live stream: {amp}");
}

#[test]
fn without_a_sound_server_the_default_is_no_audio_and_explicit_audio_fails() {
    let dir = tmpdir("audio-none");
    let file = dir.join("silent.mp4");
    let nowhere = format!("unix:{}", dir.join("no-such-socket").display());
    let mut c = castline();
    c.env("PULSE_SERVER", &nowhere)
        .arg("record")
        .arg(&file)
        .args([
            "--source",
            "testsrc",
            "--size",
            "320x240",
            "--duration",
            "2",
            "--stats",
            "off",
        ]);
    let out = run(&mut c);
    assert!(out.status.success());
    let err = stderr(&out);
    assert_eq!(
        err.matches("no PulseAudio server reachable").count(),
        1,
        "one warning line"
    );
    assert!(probe_stream(&file, "a", "stream=codec_name").is_empty());
    assert_eq!(probe(&file).frames, 60);

    let file2 = dir.join("fails.mp4");
    let mut c = castline();
    c.env("PULSE_SERVER", &nowhere)
        .arg("record")
        .arg(&file2)
        .args([
            "--source",
            "testsrc",
            "--audio",
            "system",
            "--duration",
            "2",
        ]);
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach the PulseAudio server"));
    assert!(!file2.exists());
}

#[test]
fn list_audio_shows_sources_sinks_and_applications() {
    let pulse = Pulse::start("list");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let mut c = castline();
    let out = run(pulse.env(&mut c).args(["list", "audio", "--json"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(names("sinks").contains(&"speakers".to_string()));
    assert!(names("sources").contains(&"micsink.monitor".to_string()));
    assert!(names("applications").contains(&"toneA".to_string()));
    let default_sink = v["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["default"] == true)
        .unwrap();
    assert_eq!(default_sink["name"], "speakers");
    assert_eq!(default_sink["monitor"], "speakers.monitor");
}

#[test]
fn bad_audio_options_are_usage_errors() {
    for args in [
        &["--audio", "speakers"][..],
        &["--audio", "app:"],
        &["--audio", "none,system"],
        &["--mic-gain", "-1"],
        &["--mic-gain", "loud"],
        &["--audio-bitrate", "2M"],
    ] {
        let mut c = castline();
        let out = run(c
            .args(["record", "/tmp/never.mp4", "--source", "testsrc"])
            .args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!stderr(&out).contains("panicked"));
    }
}
