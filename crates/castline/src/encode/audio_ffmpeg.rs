//! AAC-LC (FFmpeg's native `aac`) and Opus (`libopus`; FFmpeg's own `opus` encoder is
//! experimental) through libavcodec. Input is the mixer's 48 kHz stereo float; it is re-cut into
//! the codec's frame size (1024 for AAC, 960 = 20 ms for Opus), so the mixer's frame size may
//! differ when one mix feeds both codecs. Timestamps are sample counts (time base 1/48000) and
//! leave as µs on the pipeline clock.

use std::sync::Arc;

use ffmpeg_next::{self as ff, ffi, format::Sample, ChannelLayout, Dictionary, Rational};

use super::{AudioCodec, AudioEncoder, AudioStreamInfo, EncodedPacket, MediaKind};
use crate::error::EncodeError;
use crate::mix::{self, CHANNELS, SAMPLE_RATE};

pub struct FfmpegAudioEncoder {
    enc: ff::encoder::Audio,
    frame: ff::frame::Audio,
    packet: ff::Packet,
    info: AudioStreamInfo,
    planar: bool,
    /// Interleaved samples not yet encoded; `pending_start` is the index of the first frame.
    pending: Vec<f32>,
    pending_start: i64,
}

// SAFETY: the codec context, frame and packet are owned by this value and used by one thread at
// a time (see FfmpegH264Encoder).
unsafe impl Send for FfmpegAudioEncoder {}

impl FfmpegAudioEncoder {
    pub fn open(codec: AudioCodec, bitrate: u64) -> Result<Self, EncodeError> {
        let name = codec.ffmpeg_name();
        let unavailable = |reason: String| EncodeError::Unavailable {
            name: name.into(),
            reason,
        };
        if !(8_000..=512_000).contains(&bitrate) {
            return Err(EncodeError::InvalidSetting(format!(
                "audio bitrate {bitrate} out of range 8000..=512000"
            )));
        }
        ff::init().map_err(|e| unavailable(e.to_string()))?;
        let c = ff::encoder::find_by_name(name)
            .ok_or_else(|| unavailable("not built into this FFmpeg".into()))?;
        let mut a = ff::codec::context::Context::new_with_codec(c)
            .encoder()
            .audio()
            .map_err(|e| unavailable(e.to_string()))?;
        let planar = codec == AudioCodec::Aac;
        let format = if planar {
            Sample::F32(ff::format::sample::Type::Planar)
        } else {
            Sample::F32(ff::format::sample::Type::Packed)
        };
        a.set_rate(SAMPLE_RATE as i32);
        a.set_channel_layout(ChannelLayout::STEREO);
        a.set_channels(CHANNELS as i32);
        a.set_format(format);
        a.set_bit_rate(bitrate as usize);
        a.set_time_base(Rational(1, SAMPLE_RATE as i32));
        // SAFETY: a field of the not-yet-opened context we own. AudioSpecificConfig / OpusHead
        // go to extradata for containers.
        unsafe {
            (*a.as_mut_ptr()).flags |= ffi::AV_CODEC_FLAG_GLOBAL_HEADER as i32;
        }
        let mut opts = Dictionary::new();
        if codec == AudioCodec::Opus {
            opts.set("application", "audio");
            opts.set("frame_duration", "20");
        }
        let enc = a
            .open_as_with(c, opts)
            .map_err(|e| unavailable(e.to_string()))?;
        let frame_size = enc.frame_size().max(1) as usize;
        // SAFETY: reading fields of the opened context.
        let (extradata, initial_padding) = unsafe {
            let p = enc.as_ptr();
            let ed = if (*p).extradata.is_null() || (*p).extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts((*p).extradata, (*p).extradata_size as usize).to_vec()
            };
            (ed, (*p).initial_padding.max(0) as u32)
        };
        let mut frame = ff::frame::Audio::new(format, frame_size, ChannelLayout::STEREO);
        // SAFETY: FFmpeg 5.1 still reads the legacy channel count of frames.
        unsafe {
            (*frame.as_mut_ptr()).channels = CHANNELS as i32;
        }
        frame.set_rate(SAMPLE_RATE);
        let info = AudioStreamInfo {
            codec,
            encoder_name: name.into(),
            sample_rate: SAMPLE_RATE,
            channels: CHANNELS as u32,
            bitrate,
            frame_size: frame_size as u32,
            extradata,
            initial_padding,
        };
        Ok(Self {
            enc,
            frame,
            packet: ff::Packet::empty(),
            info,
            planar,
            pending: Vec::with_capacity(frame_size * CHANNELS * 2),
            pending_start: 0,
        })
    }

    fn fill_frame(&mut self, samples: &[f32]) {
        let n = self.info.frame_size as usize;
        if self.planar {
            for ch in 0..CHANNELS {
                let plane = self.frame.plane_mut::<f32>(ch);
                for (i, d) in plane.iter_mut().take(n).enumerate() {
                    *d = samples.get(i * CHANNELS + ch).copied().unwrap_or(0.0);
                }
            }
        } else {
            let bytes = self.frame.data_mut(0);
            for (i, d) in bytes.chunks_exact_mut(4).take(n * CHANNELS).enumerate() {
                d.copy_from_slice(&samples.get(i).copied().unwrap_or(0.0).to_ne_bytes());
            }
        }
    }

    fn receive(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), EncodeError> {
        loop {
            match self.enc.receive_packet(&mut self.packet) {
                Ok(()) => {
                    let pts = self.packet.pts().unwrap_or(0);
                    let dts = self.packet.dts().unwrap_or(pts);
                    let dur = if self.packet.duration() > 0 {
                        self.packet.duration()
                    } else {
                        self.info.frame_size as i64
                    };
                    out.push(EncodedPacket {
                        data: Arc::from(self.packet.data().unwrap_or_default()),
                        pts_us: mix::sample_to_us(pts),
                        dts_us: mix::sample_to_us(dts),
                        duration_us: mix::sample_to_us(dur),
                        keyframe: false,
                        media: MediaKind::Audio,
                        layer: 0,
                    });
                }
                Err(ff::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) => return Err(EncodeError::Failed(e.to_string())),
            }
        }
    }

    fn encode_frame(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), EncodeError> {
        let n = self.info.frame_size as usize * CHANNELS;
        let take: Vec<f32> = self.pending.drain(..n.min(self.pending.len())).collect();
        self.fill_frame(&take);
        self.frame.set_pts(Some(self.pending_start));
        self.pending_start += self.info.frame_size as i64;
        self.enc
            .send_frame(&self.frame)
            .map_err(|e| EncodeError::Failed(e.to_string()))?;
        self.receive(out)
    }
}

impl AudioEncoder for FfmpegAudioEncoder {
    fn info(&self) -> &AudioStreamInfo {
        &self.info
    }

    fn encode(
        &mut self,
        start: i64,
        samples: &[f32],
        out: &mut Vec<EncodedPacket>,
    ) -> Result<(), EncodeError> {
        if self.pending.is_empty() {
            self.pending_start = start;
        }
        self.pending.extend_from_slice(samples);
        while self.pending.len() >= self.info.frame_size as usize * CHANNELS {
            self.encode_frame(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<EncodedPacket>) -> Result<(), EncodeError> {
        // A partial last frame is dropped: audio never runs past the video's end.
        self.pending.clear();
        self.enc
            .send_eof()
            .map_err(|e| EncodeError::Failed(e.to_string()))?;
        self.receive(out)
    }
}
