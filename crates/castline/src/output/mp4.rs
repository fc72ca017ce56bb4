//! MP4 recording that survives being killed.
//!
//! While recording, the file is a fragmented MP4 (empty `moov`, then a `moof`+`mdat` pair at
//! least every second and at every keyframe, flushed to disk as written): a process killed with
//! SIGKILL leaves a file that plays up to its last fragment. On a clean stop the fragments are
//! remuxed (stream copy, no re-encode) into a standard MP4 with the `moov` at the front, written
//! beside the recording and renamed over it, so the final file is seekable with an exact
//! duration. If that step fails (disk full), the fragmented file stays and is still playable.

use std::path::{Path, PathBuf};

use ffmpeg_next::{self as ff, ffi, Dictionary, Rational};

use super::{Output, OutputSummary};
use crate::encode::{EncodedPacket, VideoStreamInfo};
use crate::error::OutputError;

/// Track time base: the usual 90 kHz.
const TRACK_TIMESCALE: i32 = 90_000;

pub struct Mp4Output {
    path: PathBuf,
    octx: ff::format::context::Output,
    time_base: Rational,
    packets: u64,
    bytes: u64,
    /// Timestamps are rebased so the file starts at 0.
    first_dts_us: Option<i64>,
}

// SAFETY: the muxer context is owned by this value and used by one thread at a time.
unsafe impl Send for Mp4Output {}

fn ff_error(path: &Path, e: ff::Error) -> OutputError {
    match e {
        ff::Error::Other { errno } if errno == libc::ENOSPC => OutputError::DiskFull {
            path: path.to_path_buf(),
        },
        e => OutputError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

impl Mp4Output {
    pub fn create(path: &Path, info: &VideoStreamInfo) -> Result<Self, OutputError> {
        let unwritable = |reason: String| OutputError::Unwritable {
            path: path.to_path_buf(),
            reason,
        };
        if path.is_dir() {
            return Err(unwritable("it is a directory".into()));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(unwritable(format!(
                "directory '{}' does not exist",
                parent.display()
            )));
        }
        ff::init().map_err(|e| unwritable(e.to_string()))?;
        let mut octx = ff::format::output_as(path, "mp4").map_err(|e| match e {
            ff::Error::Other { errno } => {
                unwritable(std::io::Error::from_raw_os_error(errno).to_string())
            }
            e => unwritable(e.to_string()),
        })?;
        // SAFETY: a new stream on our context; codecpar fields are plain data and extradata is
        // allocated with FFmpeg's allocator (freed by the context) with the required padding.
        unsafe {
            let st = ffi::avformat_new_stream(octx.as_mut_ptr(), std::ptr::null());
            if st.is_null() {
                return Err(unwritable("cannot add a video stream".into()));
            }
            (*st).time_base = ffi::AVRational {
                num: 1,
                den: TRACK_TIMESCALE,
            };
            (*st).avg_frame_rate = ffi::AVRational {
                num: info.fps as i32,
                den: 1,
            };
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
                return Err(unwritable("out of memory".into()));
            }
            std::ptr::copy_nonoverlapping(info.extradata.as_ptr(), buf, n);
            (*par).extradata = buf;
            (*par).extradata_size = n as i32;
        }
        let mut opts = Dictionary::new();
        opts.set("movflags", "frag_keyframe+empty_moov+default_base_moof");
        opts.set("frag_duration", "1000000");
        opts.set("flush_packets", "1");
        octx.write_header_with(opts).map_err(|e| match e {
            ff::Error::Other { errno } if errno == libc::ENOSPC => OutputError::DiskFull {
                path: path.to_path_buf(),
            },
            e => unwritable(e.to_string()),
        })?;
        let time_base = octx
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(Rational(1, TRACK_TIMESCALE));
        tracing::info!(path = %path.display(), "output_opened");
        Ok(Self {
            path: path.to_path_buf(),
            octx,
            time_base,
            packets: 0,
            bytes: 0,
            first_dts_us: None,
        })
    }

    fn io_error(&self) -> Option<OutputError> {
        // SAFETY: pb is the open AVIOContext of our muxer.
        let err = unsafe {
            let pb = (*self.octx.as_ptr()).pb;
            if pb.is_null() {
                0
            } else {
                (*pb).error
            }
        };
        (err < 0).then(|| ff_error(&self.path, ff::Error::from(err)))
    }
}

impl Output for Mp4Output {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn write(&mut self, pkt: &EncodedPacket) -> Result<(), OutputError> {
        let base = *self.first_dts_us.get_or_insert(pkt.dts_us);
        let mut p = ff::Packet::copy(&pkt.data);
        let us = Rational(1, 1_000_000);
        let rescale = |t: i64| ff::rescale::Rescale::rescale(&(t - base), us, self.time_base);
        p.set_pts(Some(rescale(pkt.pts_us)));
        p.set_dts(Some(rescale(pkt.dts_us)));
        p.set_duration(ff::rescale::Rescale::rescale(
            &pkt.duration_us,
            us,
            self.time_base,
        ));
        p.set_stream(0);
        if pkt.keyframe {
            p.set_flags(ff::packet::Flags::KEY);
        }
        p.write_interleaved(&mut self.octx)
            .map_err(|e| ff_error(&self.path, e))?;
        if let Some(e) = self.io_error() {
            return Err(e);
        }
        self.packets += 1;
        self.bytes += pkt.data.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>, clean: bool) -> Result<OutputSummary, OutputError> {
        let name = self.name();
        if self.packets == 0 {
            // Nothing was recorded: leave no empty file behind.
            drop(self.octx);
            let _ = std::fs::remove_file(&self.path);
            return Ok(OutputSummary {
                name,
                bytes: 0,
                packets: 0,
                warning: Some("no frames were recorded; file removed".into()),
            });
        }
        self.octx
            .write_trailer()
            .map_err(|e| ff_error(&self.path, e))?;
        if let Some(e) = self.io_error() {
            return Err(e);
        }
        let (path, packets, bytes) = (self.path.clone(), self.packets, self.bytes);
        drop(self.octx);
        let warning = if clean {
            match remux_faststart(&path) {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "finalize_failed");
                    Some(format!("kept as fragmented MP4 (still playable): {e}"))
                }
            }
        } else {
            Some("kept as fragmented MP4 (pipeline ended on an error)".into())
        };
        tracing::info!(path = %path.display(), packets, "output_finished");
        Ok(OutputSummary {
            name,
            bytes,
            packets,
            warning,
        })
    }
}

/// Rewrite a fragmented MP4 as a standard one (moov first), replacing it atomically.
fn remux_faststart(path: &Path) -> Result<(), String> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.finalizing"));
    let result = (|| -> Result<(), ff::Error> {
        let mut ictx = ff::format::input(path)?;
        let mut octx = ff::format::output_as(&tmp, "mp4")?;
        let mut tbs = Vec::new();
        for ist in ictx.streams() {
            let mut ost = octx.add_stream(ff::encoder::find(ff::codec::Id::None))?;
            ost.set_parameters(ist.parameters());
            ost.set_time_base(ist.time_base());
            ost.set_avg_frame_rate(ist.avg_frame_rate());
            // SAFETY: reset the tag so the muxer picks its own for the codec.
            unsafe { (*(*ost.as_mut_ptr()).codecpar).codec_tag = 0 };
            tbs.push(ist.time_base());
        }
        let mut opts = Dictionary::new();
        opts.set("movflags", "+faststart");
        octx.write_header_with(opts)?;
        for (ist, mut pkt) in ictx.packets() {
            let i = ist.index();
            let out_tb = octx.stream(i).map(|s| s.time_base()).unwrap_or(tbs[i]);
            pkt.rescale_ts(tbs[i], out_tb);
            pkt.set_position(-1);
            pkt.write_interleaved(&mut octx)?;
        }
        octx.write_trailer()?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            e.to_string()
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.to_string())
        }
    }
}
