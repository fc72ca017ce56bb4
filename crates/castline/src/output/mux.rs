//! What every libavformat-based output shares: an H.264 stream (and an audio stream when the run
//! has audio) described from the encoders' parameters, packets rescaled from µs to each stream's
//! time base (read back after the header, since muxers may change it), interleaved by DTS, and
//! the I/O error check after each write.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ffmpeg_next::{self as ff, ffi, Dictionary, Rational};

use crate::encode::{AudioCodec, AudioStreamInfo, EncodedPacket, MediaInfo};

/// A deadline FFmpeg's blocking I/O polls (every ~100 ms) through its interrupt callback: an
/// operation still blocked when it passes fails with AVERROR_EXIT. 0 = no deadline.
#[derive(Default)]
pub(crate) struct IoDeadline(AtomicU64);

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl IoDeadline {
    pub fn arm(&self, within: Duration) {
        let at = process_start().elapsed() + within;
        self.0.store(at.as_millis() as u64 + 1, Ordering::SeqCst);
    }

    fn expired(&self) -> bool {
        let at = self.0.load(Ordering::SeqCst);
        at != 0 && process_start().elapsed().as_millis() as u64 >= at
    }
}

unsafe extern "C" fn io_interrupt(opaque: *mut libc::c_void) -> libc::c_int {
    // SAFETY: opaque points at the IoDeadline kept alive by the Muxer that owns the context.
    let d = unsafe { &*(opaque as *const IoDeadline) };
    d.expired() as libc::c_int
}

pub(crate) struct Muxer {
    octx: ff::format::context::Output,
    /// Referenced by the context's interrupt callback; declared after `octx` so it outlives it.
    _deadline: Option<Arc<IoDeadline>>,
    video_tb: Rational,
    /// Time base of the audio stream (index 1), when there is one.
    audio_tb: Option<Rational>,
    /// DTS of the first packet written; timestamps are rebased so each session starts at 0.
    base_dts_us: Option<i64>,
    /// Video packets written (audio ones are counted apart).
    pub packets: u64,
    pub audio_packets: u64,
    pub bytes: u64,
    /// The main encode's SPS/PPS, and those the muxer announced last: a lower tier's keyframe
    /// carries its own (another size), announced as new extradata (FLV: a new sequence header).
    main_extradata: Vec<u8>,
    announced: Vec<u8>,
}

// SAFETY: the format context is owned by this value and used by one thread at a time.
unsafe impl Send for Muxer {}

impl Muxer {
    /// Open `target` (a path or URL) with `format`; `io_opts` go to the protocol (avio_open2),
    /// `mux_opts` to the muxer's header.
    pub fn open(
        target: &str,
        format: &str,
        io_opts: Dictionary,
        mut mux_opts: Dictionary,
        media: &MediaInfo,
        track_time_base: Rational,
        deadline: Option<Arc<IoDeadline>>,
    ) -> Result<Self, ff::Error> {
        ff::init()?;
        let info = &media.video;
        let mut octx = open_io(target, format, io_opts, deadline.as_deref())?;
        // SAFETY: a new stream on our context; codecpar fields are plain data and extradata is
        // allocated with FFmpeg's allocator (freed with the context), padded as required.
        unsafe {
            let st = ffi::avformat_new_stream(octx.as_mut_ptr(), std::ptr::null());
            if st.is_null() {
                return Err(ff::Error::Other {
                    errno: libc::ENOMEM,
                });
            }
            (*st).time_base = track_time_base.into();
            (*st).avg_frame_rate = Rational(info.fps as i32, 1).into();
            let par = (*st).codecpar;
            (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
            (*par).codec_id = ffi::AVCodecID::AV_CODEC_ID_H264;
            (*par).width = info.width as i32;
            (*par).height = info.height as i32;
            (*par).format = ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32;
            (*par).color_range = ffi::AVColorRange::AVCOL_RANGE_MPEG;
            (*par).color_primaries = ffi::AVColorPrimaries::AVCOL_PRI_BT709;
            (*par).color_trc = ffi::AVColorTransferCharacteristic::AVCOL_TRC_BT709;
            (*par).color_space = ffi::AVColorSpace::AVCOL_SPC_BT709;
            (*par).sample_aspect_ratio = ffi::AVRational { num: 1, den: 1 };
            let n = info.extradata.len();
            let buf = ffi::av_mallocz(n + ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize) as *mut u8;
            if buf.is_null() {
                return Err(ff::Error::Other {
                    errno: libc::ENOMEM,
                });
            }
            std::ptr::copy_nonoverlapping(info.extradata.as_ptr(), buf, n);
            (*par).extradata = buf;
            (*par).extradata_size = n as i32;
        }
        if let Some(a) = &media.audio {
            add_audio_stream(&mut octx, a)?;
            // The audio encoder's first packet starts before the first frame (encoder delay):
            // shift both tracks together so nothing is negative, keeping them in sync.
            mux_opts.set("avoid_negative_ts", "make_zero");
        }
        octx.write_header_with(mux_opts)?;
        let video_tb = octx
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(track_time_base);
        let audio_tb = media
            .audio
            .as_ref()
            .and_then(|_| octx.stream(1).map(|s| s.time_base()));
        let m = Self {
            main_extradata: info.extradata.clone(),
            announced: info.extradata.clone(),
            octx,
            _deadline: deadline,
            video_tb,
            audio_tb,
            base_dts_us: None,
            packets: 0,
            audio_packets: 0,
            bytes: 0,
        };
        m.check_io()?;
        Ok(m)
    }

    pub fn write(&mut self, pkt: &EncodedPacket) -> Result<(), ff::Error> {
        let (index, tb) = match (pkt.is_audio(), self.audio_tb) {
            (false, _) => (0, self.video_tb),
            (true, Some(tb)) => (1, tb),
            // This output carries no audio.
            (true, None) => return Ok(()),
        };
        let base = *self.base_dts_us.get_or_insert(pkt.dts_us);
        let us = Rational(1, 1_000_000);
        let rescale = |t: i64| ff::rescale::Rescale::rescale(&t, us, tb);
        let mut p = ff::Packet::copy(&pkt.data);
        p.set_pts(Some(rescale(pkt.pts_us - base)));
        p.set_dts(Some(rescale(pkt.dts_us - base)));
        p.set_duration(rescale(pkt.duration_us));
        p.set_stream(index);
        if pkt.keyframe {
            p.set_flags(ff::packet::Flags::KEY);
            self.announce_parameter_sets(&mut p, &pkt.data)?;
        }
        p.write_interleaved(&mut self.octx)?;
        self.check_io()?;
        if pkt.is_audio() {
            self.audio_packets += 1;
        } else {
            self.packets += 1;
        }
        self.bytes += pkt.data.len() as u64;
        Ok(())
    }

    /// When a keyframe's parameter sets (in-band, or the main encode's when it has none) differ
    /// from the ones announced, attach them as new extradata: the FLV muxer then sends a new
    /// AVC sequence header, so RTMP players follow a change of size.
    fn announce_parameter_sets(&mut self, p: &mut ff::Packet, au: &[u8]) -> Result<(), ff::Error> {
        let sets = crate::webrtc::parameter_sets(au).unwrap_or_else(|| self.main_extradata.clone());
        if sets == self.announced || sets.is_empty() {
            return Ok(());
        }
        // SAFETY: allocates side data owned by the packet and fills exactly its size.
        unsafe {
            let d = ffi::av_packet_new_side_data(
                ff::packet::Mut::as_mut_ptr(p),
                ffi::AVPacketSideDataType::AV_PKT_DATA_NEW_EXTRADATA,
                sets.len(),
            );
            if d.is_null() {
                return Err(ff::Error::Other {
                    errno: libc::ENOMEM,
                });
            }
            std::ptr::copy_nonoverlapping(sets.as_ptr(), d, sets.len());
        }
        tracing::info!(bytes = sets.len(), "parameter_sets_changed");
        self.announced = sets;
        Ok(())
    }

    pub fn trailer(&mut self) -> Result<(), ff::Error> {
        self.octx.write_trailer()?;
        self.check_io()
    }

    /// Buffered writes report failures through the AVIOContext, not the write call.
    fn check_io(&self) -> Result<(), ff::Error> {
        // SAFETY: pb is the open AVIOContext of our muxer (or null).
        let err = unsafe {
            let pb = (*self.octx.as_ptr()).pb;
            if pb.is_null() {
                0
            } else {
                (*pb).error
            }
        };
        if err < 0 {
            Err(ff::Error::from(err))
        } else {
            Ok(())
        }
    }
}

fn add_audio_stream(
    octx: &mut ff::format::context::Output,
    a: &AudioStreamInfo,
) -> Result<(), ff::Error> {
    // SAFETY: as for the video stream: plain codecpar fields, extradata from FFmpeg's allocator.
    unsafe {
        let st = ffi::avformat_new_stream(octx.as_mut_ptr(), std::ptr::null());
        if st.is_null() {
            return Err(ff::Error::Other {
                errno: libc::ENOMEM,
            });
        }
        (*st).time_base = ffi::AVRational {
            num: 1,
            den: a.sample_rate as i32,
        };
        let par = (*st).codecpar;
        (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_AUDIO;
        (*par).codec_id = match a.codec {
            AudioCodec::Aac => ffi::AVCodecID::AV_CODEC_ID_AAC,
            AudioCodec::Opus => ffi::AVCodecID::AV_CODEC_ID_OPUS,
        };
        (*par).format = ffi::AVSampleFormat::AV_SAMPLE_FMT_FLTP as i32;
        (*par).sample_rate = a.sample_rate as i32;
        (*par).bit_rate = a.bitrate as i64;
        (*par).frame_size = a.frame_size as i32;
        ffi::av_channel_layout_default(&mut (*par).ch_layout, a.channels as i32);
        #[allow(deprecated)]
        {
            (*par).channels = a.channels as i32;
            (*par).channel_layout = ffi::AV_CH_LAYOUT_STEREO;
        }
        let n = a.extradata.len();
        if n > 0 {
            let buf = ffi::av_mallocz(n + ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize) as *mut u8;
            if buf.is_null() {
                return Err(ff::Error::Other {
                    errno: libc::ENOMEM,
                });
            }
            std::ptr::copy_nonoverlapping(a.extradata.as_ptr(), buf, n);
            (*par).extradata = buf;
            (*par).extradata_size = n as i32;
        }
    }
    Ok(())
}

/// avformat_alloc_output_context2 + avio_open2 with our interrupt callback installed before the
/// protocol connects (so connecting and handshakes are bounded too).
fn open_io(
    target: &str,
    format: &str,
    io_opts: Dictionary,
    deadline: Option<&IoDeadline>,
) -> Result<ff::format::context::Output, ff::Error> {
    let invalid = || ff::Error::InvalidData;
    let c_target = CString::new(target).map_err(|_| invalid())?;
    let c_format = CString::new(format).map_err(|_| invalid())?;
    // SAFETY: standard FFmpeg open sequence; on any failure the context is freed here, on
    // success ownership moves into ffmpeg-next's Output (which closes pb and frees it).
    unsafe {
        let mut ctx = std::ptr::null_mut();
        let r = ffi::avformat_alloc_output_context2(
            &mut ctx,
            std::ptr::null_mut(),
            c_format.as_ptr(),
            c_target.as_ptr(),
        );
        if r < 0 || ctx.is_null() {
            return Err(ff::Error::from(r.min(-1)));
        }
        if let Some(d) = deadline {
            (*ctx).interrupt_callback = ffi::AVIOInterruptCB {
                callback: Some(io_interrupt),
                opaque: d as *const IoDeadline as *mut libc::c_void,
            };
        }
        let mut opts = io_opts.disown();
        let r = ffi::avio_open2(
            &mut (*ctx).pb,
            c_target.as_ptr(),
            ffi::AVIO_FLAG_WRITE,
            &(*ctx).interrupt_callback,
            &mut opts,
        );
        Dictionary::own(opts);
        if r < 0 {
            ffi::avformat_free_context(ctx);
            return Err(ff::Error::from(r));
        }
        Ok(ff::format::context::Output::wrap(ctx))
    }
}
