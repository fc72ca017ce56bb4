//! BGRA → 4:2:0 at 1080p: castline's converter (yuvutils-rs) against swscale doing the same job
//! (BT.709 limited range, bilinear, no scaling). Prints ms per frame and the ratio.
//! Run: `cargo bench -p castline --bench convert`.

use std::sync::Arc;
use std::time::Instant;

use castline::capture::Picture;
use castline::convert::{Converter, YuvLayout, YuvPlanesMut};
use ffmpeg_next::ffi;

const W: u32 = 1920;
const H: u32 = 1080;
const ROUNDS: usize = 300;

fn picture() -> Picture {
    let px: Vec<u8> = (0..W * H)
        .flat_map(|i| {
            let (x, y) = (i % W, i / W);
            [(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8, 255]
        })
        .collect();
    Picture {
        width: W,
        height: H,
        stride: (W * 4) as usize,
        pixels: Arc::new(px),
    }
}

fn time_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let t = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    t.elapsed().as_secs_f64() * 1000.0 / ROUNDS as f64
}

fn castline_ms(pic: &Picture, layout: YuvLayout) -> f64 {
    let (w, h) = (W as usize, H as usize);
    let mut y = vec![0u8; w * h];
    let mut c1 = vec![0u8; w * h / 2];
    let mut c2 = vec![0u8; w * h / 4];
    let mut conv = Converter::new(W, H);
    time_ms(|| {
        let (planes, strides): (Vec<&mut [u8]>, Vec<usize>) = match layout {
            YuvLayout::I420 => (
                vec![&mut y[..], &mut c1[..w * h / 4], &mut c2[..]],
                vec![w, w / 2, w / 2],
            ),
            YuvLayout::Nv12 => (vec![&mut y[..], &mut c1[..]], vec![w, w]),
        };
        conv.convert(
            pic,
            YuvPlanesMut {
                layout,
                width: W,
                height: H,
                planes,
                strides,
            },
        )
        .unwrap();
    })
}

fn swscale_ms(pic: &Picture, dst_fmt: ffi::AVPixelFormat) -> f64 {
    let (w, h) = (W as usize, H as usize);
    let mut y = vec![0u8; w * h];
    let mut c1 = vec![0u8; w * h / 2];
    let mut c2 = vec![0u8; w * h / 4];
    let nv12 = dst_fmt == ffi::AVPixelFormat::AV_PIX_FMT_NV12;
    // SAFETY: benchmark-local swscale context over buffers sized for 1080p.
    unsafe {
        let ctx = ffi::sws_getContext(
            W as i32,
            H as i32,
            ffi::AVPixelFormat::AV_PIX_FMT_BGRA,
            W as i32,
            H as i32,
            dst_fmt,
            ffi::SWS_BILINEAR,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null(),
        );
        assert!(!ctx.is_null());
        // Same job as castline: BT.709 coefficients, limited range.
        let coefs = ffi::sws_getCoefficients(ffi::SWS_CS_ITU709);
        ffi::sws_setColorspaceDetails(ctx, coefs, 1, coefs, 0, 0, 1 << 16, 1 << 16);
        let src = [
            pic.pixels.bytes().as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
        ];
        let src_stride = [(W * 4) as i32, 0, 0, 0];
        let ms = time_ms(|| {
            let dst = [
                y.as_mut_ptr(),
                c1.as_mut_ptr(),
                c2.as_mut_ptr(),
                std::ptr::null_mut(),
            ];
            let stride = if nv12 {
                [w as i32, w as i32, 0, 0]
            } else {
                [w as i32, (w / 2) as i32, (w / 2) as i32, 0]
            };
            ffi::sws_scale(
                ctx,
                src.as_ptr(),
                src_stride.as_ptr(),
                0,
                H as i32,
                dst.as_ptr(),
                stride.as_ptr(),
            );
        });
        ffi::sws_freeContext(ctx);
        ms
    }
}

fn main() {
    let pic = picture();
    println!("BGRA -> 4:2:0, {W}x{H}, BT.709 limited, {ROUNDS} rounds (ms per frame)");
    for (name, layout, fmt) in [
        (
            "I420",
            YuvLayout::I420,
            ffi::AVPixelFormat::AV_PIX_FMT_YUV420P,
        ),
        ("NV12", YuvLayout::Nv12, ffi::AVPixelFormat::AV_PIX_FMT_NV12),
    ] {
        let ours = castline_ms(&pic, layout);
        let sws = swscale_ms(&pic, fmt);
        println!(
            "{name}: castline (yuvutils-rs) {ours:.3} ms   swscale {sws:.3} ms   ratio {:.2}x",
            ours / sws
        );
    }
}
