//! The audio encoders on their own: a 440 Hz tone in mixer-sized chunks is encoded, the packets
//! are decoded by FFmpeg's decoders, and the tone, timestamps and packet sizes are checked.

use castline::encode::{open_audio_encoder, AudioCodec, EncodedPacket};
use ffmpeg_next::{self as ff, ffi};

fn tone(start: usize, frames: usize) -> Vec<f32> {
    (start..start + frames)
        .flat_map(|n| {
            let v = 0.25 * (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 48_000.0).sin();
            [v, v]
        })
        .collect()
}

fn decode(codec: AudioCodec, extradata: &[u8], packets: &[EncodedPacket]) -> Vec<f32> {
    let id = match codec {
        AudioCodec::Aac => ff::codec::Id::AAC,
        AudioCodec::Opus => ff::codec::Id::OPUS,
    };
    let dec = ff::decoder::find(id).unwrap();
    let mut ctx = ff::codec::context::Context::new_with_codec(dec);
    unsafe {
        let p = ctx.as_mut_ptr();
        let buf = ffi::av_mallocz(extradata.len() + 64) as *mut u8;
        std::ptr::copy_nonoverlapping(extradata.as_ptr(), buf, extradata.len());
        (*p).extradata = buf;
        (*p).extradata_size = extradata.len() as i32;
        (*p).sample_rate = 48_000;
        (*p).channels = 2;
        (*p).channel_layout = ffi::AV_CH_LAYOUT_STEREO;
    }
    let mut d = ctx.decoder().audio().unwrap();
    let mut out = Vec::new();
    let mut frame = ff::frame::Audio::empty();
    for p in packets {
        d.send_packet(&ff::Packet::copy(&p.data)).unwrap();
        while d.receive_frame(&mut frame).is_ok() {
            // Left channel, whatever the decoder's sample layout.
            let n = frame.samples();
            if frame.is_planar() {
                out.extend_from_slice(&frame.plane::<f32>(0)[..n]);
            } else {
                let bytes = frame.data(0);
                out.extend(
                    bytes
                        .chunks_exact(8)
                        .take(n)
                        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                );
            }
        }
    }
    out
}

fn amplitude(x: &[f32], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 48_000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &v in x {
        let s0 = v as f64 + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    2.0 * (s1 * s1 + s2 * s2 - c * s1 * s2).max(0.0).sqrt() / x.len() as f64
}

fn check(codec: AudioCodec, frame_size: u32, chunk: usize) {
    let mut enc = open_audio_encoder(codec, None).unwrap();
    let info = enc.info().clone();
    assert_eq!(info.frame_size, frame_size);
    assert!(!info.extradata.is_empty());
    let mut packets = Vec::new();
    // 2 s in chunks of the *other* codec's frame size: the encoder re-cuts.
    let base = 480_000i64; // the pipeline clock is at 10 s
    for k in 0..(96_000 / chunk) {
        let start = base + (k * chunk) as i64;
        enc.encode(start, &tone(k * chunk, chunk), &mut packets)
            .unwrap();
    }
    enc.flush(&mut packets).unwrap();
    assert!(packets.iter().all(|p| p.is_audio()));
    // Packet timestamps: sample-exact steps of one frame, on the pipeline clock.
    let step = frame_size as i64 * 1_000_000 / 48_000;
    for w in packets.windows(2) {
        let d = w[1].pts_us - w[0].pts_us;
        assert!((d - step).abs() <= 1, "{codec:?}: step {d} µs");
    }
    let first = packets[0].pts_us;
    let expect_first = 10_000_000 - info.initial_padding as i64 * 1_000_000 / 48_000;
    assert!(
        (first - expect_first).abs() <= 1,
        "{codec:?}: first pts {first}"
    );
    let decoded = decode(codec, &info.extradata, &packets);
    let mid = &decoded[24_000..72_000];
    let a = amplitude(mid, 440.0);
    assert!((0.22..0.28).contains(&a), "{codec:?}: 440 Hz amplitude {a}");
    assert!(amplitude(mid, 1000.0) < 0.01);
}

#[test]
fn aac_encodes_1024_sample_frames_that_decode_to_the_tone() {
    check(AudioCodec::Aac, 1024, 960);
}

#[test]
fn opus_encodes_20_ms_frames_that_decode_to_the_tone() {
    check(AudioCodec::Opus, 960, 1024);
}
