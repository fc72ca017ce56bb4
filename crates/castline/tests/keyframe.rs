//! The force-keyframe call: an IDR appears in the recording at the requested time.

use std::process::Command;
use std::time::Duration;

use castline::capture::SourceSpec;
use castline::encode::EncoderSettings;
use castline::output::OutputSpec;
use castline::pipeline::{Pipeline, PipelineConfig};

#[test]
fn request_keyframe_produces_an_idr_mid_gop() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keyframe");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kf.mp4");
    let cfg = PipelineConfig {
        source: SourceSpec::TestSrc,
        size: Some((320, 240)),
        // A 60 s keyframe interval: any keyframe after the first one was forced.
        encoder: EncoderSettings {
            keyint_s: 60.0,
            ..EncoderSettings::default()
        },
        outputs: vec![OutputSpec::Mp4(file.clone())],
        duration: Some(Duration::from_secs(3)),
        ..PipelineConfig::default()
    };
    let p = Pipeline::start(cfg).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    p.request_keyframe();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.sample_stats().keyframes, 2, "first IDR + the forced one");
    let summary = p.wait().unwrap();
    assert_eq!(summary.frames_encoded, 90);
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame,pict_type,pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("1,"))
        .filter_map(|l| l.split(',').nth(1).and_then(|t| t.parse().ok()))
        .collect();
    assert_eq!(keys.len(), 2, "keyframes at {keys:?}\n{text}");
    assert_eq!(keys[0], 0.0);
    assert!(
        (1.4..=1.8).contains(&keys[1]),
        "forced keyframe at {}",
        keys[1]
    );
}
