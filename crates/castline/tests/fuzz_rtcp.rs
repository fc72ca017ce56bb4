//! Property-based fuzzing of the plain-RTP output's RTCP handling: random datagrams and
//! mutations of valid SR/RR/PLI/FIR/NACK packets never panic; malformed ones are counted.

use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use castline::encode::{H264Profile, MediaInfo, VideoStreamInfo};
use castline::output::rtp::{RtpOptions, RtpOutput, RtpTarget};
use castline::pipeline::clock::MediaClock;
use proptest::prelude::*;
use rtcp_types::{
    Fir, Nack, PayloadFeedback, Pli, ReceiverReport, ReportBlock, RtcpPacketWriterExt,
    SenderReport, TransportFeedback,
};

fn output() -> (RtpOutput, UdpSocket) {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = RtpTarget::parse_url(&format!(
        "rtp://{}?video_pt=96&video_ssrc=1111",
        rx.local_addr().unwrap()
    ))
    .unwrap();
    let info = MediaInfo {
        video: VideoStreamInfo {
            encoder_name: "test".into(),
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
    .unwrap();
    (out, rx)
}

fn valid_packets() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut push = |w: &dyn Fn(&mut [u8]) -> usize| {
        let mut b = vec![0u8; 256];
        let n = w(&mut b);
        b.truncate(n);
        v.push(b);
    };
    push(&|b| {
        ReceiverReport::builder(7)
            .add_report_block(
                ReportBlock::builder(1111)
                    .fraction_lost(10)
                    .interarrival_jitter(90),
            )
            .write_into(b)
            .unwrap()
    });
    push(&|b| {
        SenderReport::builder(7)
            .ntp_timestamp(1 << 40)
            .write_into(b)
            .unwrap()
    });
    push(&|b| {
        PayloadFeedback::builder_owned(Pli::builder())
            .sender_ssrc(7)
            .media_ssrc(1111)
            .write_into(b)
            .unwrap()
    });
    push(&|b| {
        PayloadFeedback::builder_owned(Fir::builder().add_ssrc(1111, 1))
            .sender_ssrc(7)
            .write_into(b)
            .unwrap()
    });
    push(&|b| {
        TransportFeedback::builder_owned(Nack::builder().add_rtp_sequence(5).add_rtp_sequence(9))
            .sender_ssrc(7)
            .media_ssrc(1111)
            .write_into(b)
            .unwrap()
    });
    v
}

thread_local! {
    static OUT: std::cell::RefCell<(RtpOutput, UdpSocket)> = std::cell::RefCell::new(output());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_datagrams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        OUT.with(|o| o.borrow_mut().0.handle_rtcp(&data));
    }

    #[test]
    fn mutated_valid_rtcp_never_panics(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
        compound in any::<bool>(),
    ) {
        let packets = valid_packets();
        let mut d = packets[which].clone();
        if compound {
            d.extend_from_slice(&packets[(which + 1) % packets.len()]);
        }
        for (i, b) in flips {
            let n = d.len();
            d[i % n] = b;
        }
        d.truncate(cut % (d.len() + 1));
        OUT.with(|o| o.borrow_mut().0.handle_rtcp(&d));
    }
}

#[test]
fn valid_feedback_is_counted_and_garbage_is_not() {
    let (mut out, _rx) = output();
    for p in valid_packets() {
        out.handle_rtcp(&p);
    }
    out.handle_rtcp(&[0x80, 201, 0xff, 0xff]);
    let r = out.report().lock().unwrap().clone();
    assert_eq!((r.plis, r.firs, r.nacks), (1, 1, 1), "{r:?}");
    assert_eq!(r.keyframes_requested, 1, "rate-limited to one: {r:?}");
    assert_eq!(r.malformed, 1, "{r:?}");
    assert!((r.loss.unwrap() - 10.0 / 256.0).abs() < 1e-9);
}
