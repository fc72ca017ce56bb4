//! H.264 through FFmpeg's libavcodec: libx264 (software) and the hardware encoders VAAPI, NVENC
//! and QSV. libx264 gets I420; hardware encoders get NV12 (uploaded to a VAAPI surface for
//! `h264_vaapi`). Timestamps go in and come out in µs (time base 1/1 000 000).

use std::sync::Arc;

use ffmpeg_next::{self as ff, ffi, format::Pixel, Dictionary, Rational};

use super::{EncodedPacket, EncoderKind, EncoderSettings, VideoEncoder, VideoStreamInfo};
use crate::convert::{YuvLayout, YuvPlanesMut};
use crate::error::EncodeError;

pub struct FfmpegH264Encoder {
    enc: ff::encoder::Video,
    frame: ff::frame::Video,
    vaapi: Option<VaapiUpload>,
    packet: ff::Packet,
    info: VideoStreamInfo,
    layout: YuvLayout,
    frame_duration_us: i64,
    vbv_s: f64,
}

fn vbv_bits(bps: u64, seconds: f64) -> i32 {
    ((bps as f64 * seconds.clamp(0.05, 10.0)) as u64).min(i32::MAX as u64) as i32
}

// SAFETY: the encoder context, frame and packet are owned exclusively by this value and only used
// from the thread that currently owns it; ffmpeg-next marks them !Send only because of an
// internal Rc that is never shared for contexts created here.
unsafe impl Send for FfmpegH264Encoder {}

fn unavailable(kind: EncoderKind, reason: impl std::fmt::Display) -> EncodeError {
    EncodeError::Unavailable {
        name: kind.ffmpeg_name().into(),
        reason: reason.to_string(),
    }
}

/// Map an x264 preset onto NVENC's p1 (fastest) … p7 (slowest).
fn nvenc_preset(x264: &str) -> &'static str {
    match x264 {
        "ultrafast" | "superfast" => "p1",
        "veryfast" => "p2",
        "faster" => "p3",
        "fast" => "p4",
        "medium" => "p5",
        "slow" => "p6",
        _ => "p7",
    }
}

pub const X264_PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

impl FfmpegH264Encoder {
    pub fn open(
        kind: EncoderKind,
        s: &EncoderSettings,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Self, EncodeError> {
        if !X264_PRESETS.contains(&s.preset.as_str()) {
            return Err(EncodeError::InvalidSetting(format!(
                "unknown preset '{}' (expected one of {})",
                s.preset,
                X264_PRESETS.join(", ")
            )));
        }
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) || width < 16 || height < 16 {
            return Err(EncodeError::InvalidSetting(format!(
                "size {width}x{height}: 4:2:0 needs even dimensions of at least 16"
            )));
        }
        ff::init().map_err(|e| unavailable(kind, e))?;
        // Keep FFmpeg quiet on stderr; castline reports errors itself.
        ff::util::log::set_level(ff::util::log::Level::Fatal);
        let codec = ff::encoder::find_by_name(kind.ffmpeg_name())
            .ok_or_else(|| unavailable(kind, "not built into this FFmpeg"))?;
        let mut v = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| unavailable(kind, e))?;
        let layout = if kind == EncoderKind::X264 {
            YuvLayout::I420
        } else {
            YuvLayout::Nv12
        };
        let sw_format = match layout {
            YuvLayout::I420 => Pixel::YUV420P,
            YuvLayout::Nv12 => Pixel::NV12,
        };
        v.set_width(width);
        v.set_height(height);
        v.set_format(sw_format);
        v.set_time_base(Rational(1, 1_000_000));
        v.set_frame_rate(Some(Rational(fps as i32, 1)));
        v.set_bit_rate(s.bitrate as usize);
        v.set_max_bit_rate(s.bitrate as usize);
        v.set_gop(((s.keyint_s * fps as f64).round() as u32).max(1));
        v.set_max_b_frames(0);
        v.set_colorspace(ff::color::Space::BT709);
        v.set_color_range(ff::color::Range::MPEG);
        v.set_color_primaries(ff::color::Primaries::BT709);
        v.set_color_transfer_characteristic(ff::color::TransferCharacteristic::BT709);
        // SAFETY: fields of a not-yet-opened context we own.
        unsafe {
            let p = v.as_mut_ptr();
            (*p).rc_buffer_size = vbv_bits(s.bitrate, s.vbv_s);
            // SPS/PPS in extradata for containers (MP4, FLV).
            (*p).flags |= ffi::AV_CODEC_FLAG_GLOBAL_HEADER as i32;
        }
        let mut opts = Dictionary::new();
        let profile = s.profile.as_str();
        match kind {
            EncoderKind::Auto | EncoderKind::X264 => {
                opts.set("preset", &s.preset);
                opts.set("tune", "zerolatency");
                opts.set("profile", profile);
                opts.set("forced-idr", "1");
                if s.inband_headers {
                    opts.set("x264-params", "repeat-headers=1");
                }
            }
            EncoderKind::Nvenc => {
                opts.set("preset", nvenc_preset(&s.preset));
                opts.set("tune", "ll");
                opts.set("zerolatency", "1");
                opts.set("rc", "cbr");
                opts.set("profile", profile);
                opts.set("forced-idr", "1");
            }
            EncoderKind::Qsv => {
                opts.set(
                    "preset",
                    if s.preset.contains("fast") {
                        "veryfast"
                    } else {
                        "medium"
                    },
                );
                opts.set("profile", profile);
                opts.set("forced_idr", "1");
            }
            EncoderKind::Vaapi => {
                opts.set("rc_mode", "CBR");
                opts.set(
                    "profile",
                    if profile == "baseline" {
                        "constrained_baseline"
                    } else {
                        profile
                    },
                );
            }
        }
        let vaapi = if kind == EncoderKind::Vaapi {
            let up = VaapiUpload::new(width, height).map_err(|e| unavailable(kind, e))?;
            // SAFETY: hands the encoder its own reference to the frames context.
            unsafe {
                let p = v.as_mut_ptr();
                (*p).pix_fmt = ffi::AVPixelFormat::AV_PIX_FMT_VAAPI;
                (*p).hw_frames_ctx = ffi::av_buffer_ref(up.frames_ctx);
            }
            Some(up)
        } else {
            None
        };
        let enc = v
            .open_as_with(codec, opts)
            .map_err(|e| unavailable(kind, e))?;
        // SAFETY: extradata/extradata_size are set by the opened encoder.
        let extradata = unsafe {
            let p = enc.as_ptr();
            if (*p).extradata.is_null() || (*p).extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts((*p).extradata, (*p).extradata_size as usize).to_vec()
            }
        };
        if extradata.is_empty() {
            return Err(unavailable(kind, "encoder produced no SPS/PPS"));
        }
        Ok(Self {
            enc,
            frame: ff::frame::Video::new(sw_format, width, height),
            vaapi,
            packet: ff::Packet::empty(),
            info: VideoStreamInfo {
                encoder_name: kind.ffmpeg_name().into(),
                width,
                height,
                fps,
                bitrate: s.bitrate,
                extradata,
                profile: s.profile,
            },
            layout,
            frame_duration_us: 1_000_000 / fps.max(1) as i64,
            vbv_s: s.vbv_s,
        })
    }

    fn drain(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), EncodeError> {
        loop {
            match self.enc.receive_packet(&mut self.packet) {
                Ok(()) => {
                    let Some(data) = self.packet.data() else {
                        continue;
                    };
                    let pts = self.packet.pts().unwrap_or(0);
                    out.push(EncodedPacket {
                        data: Arc::from(data),
                        pts_us: pts,
                        dts_us: self.packet.dts().unwrap_or(pts),
                        duration_us: match self.packet.duration() {
                            d if d > 0 => d,
                            _ => self.frame_duration_us,
                        },
                        keyframe: self.packet.is_key(),
                        media: super::MediaKind::Video,
                        layer: 0,
                    });
                }
                Err(ff::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) => return Err(EncodeError::Failed(e.to_string())),
            }
        }
    }
}

impl VideoEncoder for FfmpegH264Encoder {
    fn info(&self) -> &VideoStreamInfo {
        &self.info
    }

    fn input(&mut self) -> Result<YuvPlanesMut<'_>, EncodeError> {
        // SAFETY: make_writable gives this frame its own buffers when the encoder still holds a
        // reference to them; afterwards each plane is linesize × plane-height bytes we own.
        unsafe {
            let f = self.frame.as_mut_ptr();
            if ffi::av_frame_make_writable(f) < 0 {
                return Err(EncodeError::Failed(
                    "cannot make input frame writable".into(),
                ));
            }
            let (w, h) = (self.info.width, self.info.height);
            let n = match self.layout {
                YuvLayout::I420 => 3,
                YuvLayout::Nv12 => 2,
            };
            let mut planes = Vec::with_capacity(n);
            let mut strides = Vec::with_capacity(n);
            for i in 0..n {
                let rows = if i == 0 { h } else { h / 2 } as usize;
                let ls = (*f).linesize[i] as usize;
                planes.push(std::slice::from_raw_parts_mut((*f).data[i], ls * rows));
                strides.push(ls);
            }
            Ok(YuvPlanesMut {
                layout: self.layout,
                width: w,
                height: h,
                planes,
                strides,
            })
        }
    }

    fn encode(
        &mut self,
        pts_us: i64,
        force_keyframe: bool,
        out: &mut Vec<EncodedPacket>,
    ) -> Result<(), EncodeError> {
        self.frame.set_pts(Some(pts_us));
        // SAFETY: plain field write on our frame.
        unsafe {
            (*self.frame.as_mut_ptr()).pict_type = if force_keyframe {
                ffi::AVPictureType::AV_PICTURE_TYPE_I
            } else {
                ffi::AVPictureType::AV_PICTURE_TYPE_NONE
            };
        }
        let sent = match &self.vaapi {
            Some(up) => {
                let hw = up.upload(&self.frame)?;
                self.enc.send_frame(&hw)
            }
            None => self.enc.send_frame(&self.frame),
        };
        sent.map_err(|e| EncodeError::Failed(e.to_string()))?;
        self.drain(out)
    }

    fn flush(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), EncodeError> {
        self.enc
            .send_eof()
            .map_err(|e| EncodeError::Failed(e.to_string()))?;
        self.drain(out)
    }

    fn set_bitrate(&mut self, bps: u64) -> bool {
        // FFmpeg's libx264 wrapper compares these fields with x264's parameters before every
        // frame and calls x264_encoder_reconfig when they differ (bitrate and VBV).
        if self.info.encoder_name != "libx264" {
            return false;
        }
        let bps = bps.clamp(10_000, i32::MAX as u64);
        // SAFETY: plain field writes on the context we own; read by the next send_frame.
        unsafe {
            let p = self.enc.as_mut_ptr();
            (*p).bit_rate = bps as i64;
            (*p).rc_max_rate = bps as i64;
            (*p).rc_buffer_size = vbv_bits(bps, self.vbv_s);
        }
        self.info.bitrate = bps;
        true
    }
}

/// System-memory NV12 → VAAPI surface upload for `h264_vaapi`.
struct VaapiUpload {
    device: *mut ffi::AVBufferRef,
    frames_ctx: *mut ffi::AVBufferRef,
}

impl VaapiUpload {
    fn new(width: u32, height: u32) -> Result<Self, String> {
        // SAFETY: FFmpeg hwcontext API; every pointer is checked and freed in Drop.
        unsafe {
            let mut device = std::ptr::null_mut();
            let r = ffi::av_hwdevice_ctx_create(
                &mut device,
                ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_VAAPI,
                std::ptr::null(),
                std::ptr::null_mut(),
                0,
            );
            if r < 0 {
                return Err(format!("no VAAPI device ({})", ff::Error::from(r)));
            }
            let frames_ctx = ffi::av_hwframe_ctx_alloc(device);
            if frames_ctx.is_null() {
                ffi::av_buffer_unref(&mut device);
                return Err("cannot allocate VAAPI frames".into());
            }
            let fc = (*frames_ctx).data as *mut ffi::AVHWFramesContext;
            (*fc).format = ffi::AVPixelFormat::AV_PIX_FMT_VAAPI;
            (*fc).sw_format = ffi::AVPixelFormat::AV_PIX_FMT_NV12;
            (*fc).width = width as i32;
            (*fc).height = height as i32;
            (*fc).initial_pool_size = 8;
            let mut up = Self { device, frames_ctx };
            let r = ffi::av_hwframe_ctx_init(up.frames_ctx);
            if r < 0 {
                ffi::av_buffer_unref(&mut up.frames_ctx);
                return Err(format!("VAAPI frames init failed ({})", ff::Error::from(r)));
            }
            Ok(up)
        }
    }

    fn upload(&self, sw: &ff::frame::Video) -> Result<ff::frame::Video, EncodeError> {
        // SAFETY: allocates a surface from our pool and copies the sw frame into it.
        unsafe {
            let mut hw = ff::frame::Video::empty();
            let failed = |what: &str, r: i32| {
                EncodeError::Failed(format!("VAAPI {what}: {}", ff::Error::from(r)))
            };
            let r = ffi::av_hwframe_get_buffer(self.frames_ctx, hw.as_mut_ptr(), 0);
            if r < 0 {
                return Err(failed("surface", r));
            }
            let r = ffi::av_hwframe_transfer_data(hw.as_mut_ptr(), sw.as_ptr(), 0);
            if r < 0 {
                return Err(failed("upload", r));
            }
            ffi::av_frame_copy_props(hw.as_mut_ptr(), sw.as_ptr());
            Ok(hw)
        }
    }
}

impl Drop for VaapiUpload {
    fn drop(&mut self) {
        // SAFETY: both refs came from FFmpeg allocators (unref tolerates null).
        unsafe {
            ffi::av_buffer_unref(&mut self.frames_ctx);
            ffi::av_buffer_unref(&mut self.device);
        }
    }
}
