//! RTCP compound packets as the plain-RTP output receives them from a native ingest
//! (mediasoup): SR/RR, PLI/FIR, NACK, REMB/TWCC, and anything else.
#![no_main]
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use castline::encode::{H264Profile, MediaInfo, VideoStreamInfo};
use castline::output::rtp::{RtpOptions, RtpOutput, RtpTarget};
use castline::pipeline::clock::MediaClock;
use libfuzzer_sys::fuzz_target;

fn output() -> &'static Mutex<(RtpOutput, UdpSocket)> {
    static OUT: OnceLock<Mutex<(RtpOutput, UdpSocket)>> = OnceLock::new();
    OUT.get_or_init(|| {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let target = RtpTarget::parse_url(&format!(
            "rtp://{}?video_pt=96&video_ssrc=1111&audio_pt=100&audio_ssrc=2222",
            rx.local_addr().expect("addr")
        ))
        .expect("target");
        let info = MediaInfo {
            video: VideoStreamInfo {
                encoder_name: "fuzz".into(),
                width: 320,
                height: 240,
                fps: 30,
                bitrate: 1_000_000,
                extradata: Vec::new(),
                profile: H264Profile::Baseline,
            },
            audio: None,
        };
        let out = RtpOutput::connect(
            target,
            &info,
            MediaClock::new(),
            Arc::new(AtomicBool::new(false)),
            RtpOptions::default(),
        )
        .expect("connect");
        Mutex::new((out, rx))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut o = output().lock().unwrap_or_else(|p| p.into_inner());
    o.0.handle_rtcp(data);
});
