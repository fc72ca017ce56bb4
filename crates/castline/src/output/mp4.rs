//! MP4 recording that survives being killed.
//!
//! While recording, the file is a fragmented MP4 (empty `moov`, then a `moof`+`mdat` pair at
//! least every second and at every keyframe, flushed to disk as written): a process killed with
//! SIGKILL leaves a file that plays up to its last fragment. On a clean stop the fragments are
//! remuxed (stream copy, no re-encode) into a standard MP4 with the `moov` at the front, written
//! beside the recording and renamed over it, so the final file is seekable with an exact
//! duration. If that step fails (disk full), the fragmented file stays and is still playable.

use std::path::{Path, PathBuf};

use ffmpeg_next::{self as ff, Dictionary, Rational};

use super::mux::Muxer;
use super::{Output, OutputSummary, Written};
use crate::encode::{EncodedPacket, MediaInfo};
use crate::error::OutputError;

pub struct Mp4Output {
    path: PathBuf,
    muxer: Muxer,
}

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
    pub fn create(path: &Path, info: &MediaInfo) -> Result<Self, OutputError> {
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
        let target = path
            .to_str()
            .ok_or_else(|| unwritable("path is not valid UTF-8".into()))?;
        let mut mux_opts = Dictionary::new();
        mux_opts.set("movflags", "frag_keyframe+empty_moov+default_base_moof");
        mux_opts.set("frag_duration", "1000000");
        mux_opts.set("flush_packets", "1");
        // The usual 90 kHz track timescale.
        let muxer = Muxer::open(
            target,
            "mp4",
            Dictionary::new(),
            mux_opts,
            info,
            Rational(1, 90_000),
            None,
        )
        .map_err(|e| match ff_error(path, e) {
            // Failing to create the file is "cannot write", not a write failure.
            OutputError::Write { reason, .. } => unwritable(reason),
            e => e,
        })?;
        tracing::info!(path = %path.display(), "output_opened");
        Ok(Self {
            path: path.to_path_buf(),
            muxer,
        })
    }
}

impl Output for Mp4Output {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn write(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError> {
        self.muxer.write(pkt).map_err(|e| ff_error(&self.path, e))?;
        Ok(Written::Sent)
    }

    fn finish(self: Box<Self>, clean: bool) -> Result<OutputSummary, OutputError> {
        let name = self.name();
        let Self { path, mut muxer } = *self;
        let (packets, bytes) = (muxer.packets, muxer.bytes);
        if packets == 0 {
            // Nothing was recorded: leave no empty file behind.
            drop(muxer);
            let _ = std::fs::remove_file(&path);
            return Ok(OutputSummary {
                name,
                bytes: 0,
                packets: 0,
                warning: Some("no frames were recorded; file removed".into()),
            });
        }
        muxer.trailer().map_err(|e| ff_error(&path, e))?;
        drop(muxer);
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
