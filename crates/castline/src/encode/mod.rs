//! Encoders. The video encode thread fills the encoder's input planes (see `convert`), then asks
//! for packets; the audio thread hands each audio encoder the mixer's frames. One encoder per
//! codec feeds every output through shared, reference-counted packets.

mod audio_ffmpeg;
mod h264_ffmpeg;

use std::sync::Arc;

use crate::convert::YuvPlanesMut;
use crate::error::EncodeError;

pub use audio_ffmpeg::FfmpegAudioEncoder;
pub use h264_ffmpeg::FfmpegH264Encoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Video,
    Audio,
}

/// One encoded access unit (Annex-B H.264) or audio frame (raw AAC / Opus), timestamps on the
/// pipeline clock (µs).
#[derive(Debug, Clone)]
pub struct EncodedPacket {
    pub data: Arc<[u8]>,
    pub pts_us: i64,
    pub dts_us: i64,
    pub duration_us: i64,
    /// Video only: an IDR picture. (Every audio packet decodes on its own.)
    pub keyframe: bool,
    pub media: MediaKind,
    /// Video: which encode tier produced it (0 = the configured quality, 1 = the lower tier
    /// encoded while some live sink cannot take the configured bitrate; see `adapt`).
    pub layer: u8,
}

impl EncodedPacket {
    pub fn is_audio(&self) -> bool {
        self.media == MediaKind::Audio
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    /// AAC-LC: MP4 and RTMP.
    Aac,
    /// Opus: WebRTC, WHIP and RTP.
    Opus,
}

impl AudioCodec {
    pub fn ffmpeg_name(self) -> &'static str {
        match self {
            Self::Aac => "aac",
            Self::Opus => "libopus",
        }
    }

    /// Bitrate used when none is given, bit/s.
    pub fn default_bitrate(self) -> u64 {
        match self {
            Self::Aac => 128_000,
            Self::Opus => 96_000,
        }
    }
}

/// What outputs need to know about an encoded audio stream.
#[derive(Debug, Clone)]
pub struct AudioStreamInfo {
    pub codec: AudioCodec,
    pub encoder_name: String,
    pub sample_rate: u32,
    pub channels: u32,
    pub bitrate: u64,
    /// Samples per packet.
    pub frame_size: u32,
    /// AudioSpecificConfig (AAC) or OpusHead (Opus).
    pub extradata: Vec<u8>,
    /// Encoder delay in samples (the first packet starts this much before the first input).
    pub initial_padding: u32,
}

/// Everything an output is told about the streams it carries.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    pub video: VideoStreamInfo,
    /// The audio stream in the codec this output takes, if the run has audio.
    pub audio: Option<AudioStreamInfo>,
}

pub trait AudioEncoder: Send {
    fn info(&self) -> &AudioStreamInfo;
    /// Encode interleaved stereo samples whose first frame is sample index `start` (contiguous
    /// with the previous call).
    fn encode(
        &mut self,
        start: i64,
        samples: &[f32],
        out: &mut Vec<EncodedPacket>,
    ) -> Result<(), EncodeError>;
    fn flush(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), EncodeError>;
}

/// Open the FFmpeg encoder for `codec`; `bitrate` None = the codec's default.
pub fn open_audio_encoder(
    codec: AudioCodec,
    bitrate: Option<u64>,
) -> Result<Box<dyn AudioEncoder>, EncodeError> {
    let enc = FfmpegAudioEncoder::open(codec, bitrate.unwrap_or(codec.default_bitrate()))?;
    tracing::info!(
        encoder = codec.ffmpeg_name(),
        bitrate = enc.info().bitrate,
        frame_size = enc.info().frame_size,
        "audio_encoder_selected"
    );
    Ok(Box::new(enc))
}

/// What outputs need to know about the encoded video stream.
#[derive(Debug, Clone)]
pub struct VideoStreamInfo {
    /// FFmpeg encoder that produces the stream ("libx264", "h264_vaapi", …).
    pub encoder_name: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Target bitrate, bit/s.
    pub bitrate: u64,
    /// SPS and PPS in Annex-B form.
    pub extradata: Vec<u8>,
    pub profile: H264Profile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Profile {
    /// Constrained baseline (x264 "baseline"): what every WebRTC peer decodes.
    Baseline,
    Main,
    High,
}

impl H264Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Main => "main",
            Self::High => "high",
        }
    }
}

impl std::str::FromStr for H264Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "baseline" => Ok(Self::Baseline),
            "main" => Ok(Self::Main),
            "high" => Ok(Self::High),
            _ => Err(format!(
                "unknown profile '{s}' (expected baseline, main or high)"
            )),
        }
    }
}

/// Which encoder to use. `Auto` probes hardware first and falls back to libx264.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    Auto,
    X264,
    Vaapi,
    Nvenc,
    Qsv,
}

impl EncoderKind {
    pub fn ffmpeg_name(self) -> &'static str {
        match self {
            Self::Auto | Self::X264 => "libx264",
            Self::Vaapi => "h264_vaapi",
            Self::Nvenc => "h264_nvenc",
            Self::Qsv => "h264_qsv",
        }
    }
}

impl std::str::FromStr for EncoderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "x264" | "libx264" => Ok(Self::X264),
            "vaapi" => Ok(Self::Vaapi),
            "nvenc" => Ok(Self::Nvenc),
            "qsv" => Ok(Self::Qsv),
            _ => Err(format!(
                "unknown encoder '{s}' (expected auto, x264, vaapi, nvenc or qsv)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EncoderSettings {
    pub kind: EncoderKind,
    /// Target bitrate, bit/s (CBR: VBV max rate = bitrate, buffer = 1 s).
    pub bitrate: u64,
    /// x264 preset (ultrafast … veryslow); mapped to the nearest for hardware encoders.
    pub preset: String,
    pub profile: H264Profile,
    /// Keyframe interval in seconds.
    pub keyint_s: f64,
    /// SPS and PPS in front of every keyframe too (not only in the extradata), for a stream
    /// whose parameter sets change mid-stream (a lower tier that changes size).
    pub inband_headers: bool,
    /// VBV buffer, seconds of the bitrate: how far one frame (a keyframe) may exceed the
    /// average. 1 s for recordings and RTMP; a tier for congested paths takes less, since a
    /// keyframe burst over a narrow link is lost in the bottleneck's queue.
    pub vbv_s: f64,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self {
            kind: EncoderKind::Auto,
            bitrate: 5_000_000,
            preset: "veryfast".into(),
            profile: H264Profile::High,
            keyint_s: 2.0,
            inband_headers: false,
            vbv_s: 1.0,
        }
    }
}

pub trait VideoEncoder: Send {
    fn info(&self) -> &VideoStreamInfo;
    /// The planes to fill with the next picture.
    fn input(&mut self) -> Result<YuvPlanesMut<'_>, EncodeError>;
    /// Encode the picture last written into `input()` (or the previous one again).
    fn encode(
        &mut self,
        pts_us: i64,
        force_keyframe: bool,
        out: &mut Vec<EncodedPacket>,
    ) -> Result<(), EncodeError>;
    /// Drain delayed packets at end of stream.
    fn flush(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), EncodeError>;
    /// Change the target bitrate from the next frame on: no keyframe, no new stream. False when
    /// the encoder cannot (it keeps its rate).
    fn set_bitrate(&mut self, _bps: u64) -> bool {
        false
    }
}

/// Open the encoder `settings` ask for. With `EncoderKind::Auto`, hardware encoders are tried in
/// order (VAAPI, NVENC, QSV) and libx264 is the fallback; every skipped candidate is logged with
/// the reason. An explicitly named hardware encoder that cannot open is an error (no fallback).
pub fn open_video_encoder(
    settings: &EncoderSettings,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<Box<dyn VideoEncoder>, EncodeError> {
    let candidates: &[EncoderKind] = match settings.kind {
        EncoderKind::Auto => &[
            EncoderKind::Vaapi,
            EncoderKind::Nvenc,
            EncoderKind::Qsv,
            EncoderKind::X264,
        ],
        k => &[k][..],
    };
    let mut last_err = None;
    for &kind in candidates {
        match FfmpegH264Encoder::open(kind, settings, width, height, fps) {
            Ok(enc) => {
                let reason = if settings.kind == EncoderKind::Auto && kind == EncoderKind::X264 {
                    "no hardware encoder could open; software fallback"
                } else if settings.kind == EncoderKind::Auto {
                    "hardware encoder available"
                } else {
                    "requested explicitly"
                };
                tracing::info!(
                    encoder = kind.ffmpeg_name(),
                    reason,
                    profile = settings.profile.as_str(),
                    "encoder_selected"
                );
                return Ok(Box::new(enc));
            }
            Err(e) => {
                if settings.kind == EncoderKind::Auto {
                    tracing::info!(encoder = kind.ffmpeg_name(), reason = %e, "encoder_skipped");
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| EncodeError::Unavailable {
        name: "h264".into(),
        reason: "no candidate encoder".into(),
    }))
}
