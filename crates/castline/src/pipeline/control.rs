//! Live control of a running pipeline: another source, outputs added and removed, bitrate,
//! frame rate and audio mute changed — while every other output keeps running on the same
//! encode (no renegotiation, no new track, no cut recording).
//!
//! [`Control`] is a cheap handle (clone it into any thread). Each change is validated and
//! prepared on the caller's thread (a source or an output is opened there, so a bad argument
//! fails the call and changes nothing), then handed to the pipeline's threads, which pick it up
//! at their next frame: the capture thread swaps the source, the encode and audio threads
//! re-read the output set when its version changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::stats::OutputCounters;
use super::PipelineConfig;
use crate::capture::{self, SourceSpec, VideoSource};
use crate::encode::{self, AudioCodec, AudioEncoder, AudioStreamInfo, H264Profile};
use crate::encode::{MediaInfo, VideoStreamInfo};
use crate::error::{Error, OutputError, Result};
use crate::output::{OutputSpec, OutputSummary};

/// Identifies an output of a running pipeline (the outputs it started with are 0, 1, …, in
/// the order given).
pub type OutputId = u64;

pub(crate) type OutputThread = JoinHandle<std::result::Result<OutputSummary, OutputError>>;

/// The outputs the encode and audio threads fan out to. They keep a copy and re-read it when
/// `version` moves (one atomic load per frame).
#[derive(Default)]
pub(crate) struct OutputSet {
    state: Mutex<SetState>,
    version: AtomicU64,
}

#[derive(Default)]
struct SetState {
    outputs: Vec<Arc<OutputCounters>>,
    /// The encode (or ingest) thread has ended: no more video for anyone.
    video_closed: bool,
    /// The audio thread has ended.
    audio_closed: bool,
}

impl OutputSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, SetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn all(&self) -> Vec<Arc<OutputCounters>> {
        self.lock().outputs.clone()
    }

    /// The current outputs when they changed since `seen` (updated).
    pub(crate) fn changed_since(&self, seen: &mut u64) -> Option<Vec<Arc<OutputCounters>>> {
        let v = self.version.load(Ordering::Acquire);
        if v == *seen {
            return None;
        }
        let st = self.lock();
        *seen = self.version.load(Ordering::Acquire);
        Some(st.outputs.clone())
    }

    pub(crate) fn push_initial(&self, c: Arc<OutputCounters>) {
        self.lock().outputs.push(c);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The video producer is done: close its side of every queue, and take no new output.
    pub(crate) fn close_video(&self) {
        let mut st = self.lock();
        st.video_closed = true;
        for o in &st.outputs {
            o.queue.close();
        }
    }

    /// The audio producer is done (only outputs that take audio count it as a producer).
    pub(crate) fn close_audio(&self) {
        let mut st = self.lock();
        st.audio_closed = true;
        for o in st.outputs.iter().filter(|o| o.audio.is_some()) {
            o.queue.close();
        }
    }
}

/// Settings the encode and audio threads read at every frame.
pub(crate) struct LiveSettings {
    pub bitrate: AtomicU64,
    pub max_fps: AtomicU32,
    pub audio_muted: AtomicBool,
}

/// The encoded streams' parameters, as an output opened now must be told them: the main tier's
/// (live outputs) and the recording tier's while recordings keep a size the main tier left.
#[derive(Clone)]
pub(crate) struct StreamInfos {
    pub main: VideoStreamInfo,
    pub record: Option<VideoStreamInfo>,
}

/// What the pipeline's threads and its [`Control`] handles share.
pub(crate) struct Shared {
    pub cfg: PipelineConfig,
    pub clock: super::clock::MediaClock,
    pub stop: Arc<AtomicBool>,
    pub keyframe: Arc<AtomicBool>,
    pub outputs: OutputSet,
    pub threads: Mutex<Vec<(OutputId, OutputThread)>>,
    pub next_id: AtomicU64,
    /// A source opened by `set_source`, taken by the capture thread at its next tick.
    pub next_source: Mutex<Option<Box<dyn VideoSource>>>,
    pub live: LiveSettings,
    pub streams: Mutex<StreamInfos>,
    /// Audio: whether the run has audio, the streams its encoders produce, and encoders opened
    /// for outputs added with a codec the run did not have yet (the audio thread takes them).
    pub has_audio: bool,
    pub audio_info: Mutex<HashMap<AudioCodec, AudioStreamInfo>>,
    pub new_audio_encoders: Mutex<Vec<Box<dyn AudioEncoder>>>,
    /// Video passed through from an ffmpeg child: no source to change, no rate to set.
    pub passthrough: bool,
}

/// Changes a running pipeline. Obtained from [`super::Pipeline::control`]; every method is
/// safe to call from any thread, during or after the run (then it fails with a clear error).
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

impl Control {
    fn ensure_running(&self) -> Result<()> {
        if self.shared.stop.load(Ordering::SeqCst) || self.shared.outputs.lock().video_closed {
            return Err(bad("the session has stopped"));
        }
        Ok(())
    }

    /// Capture another display, window or the test picture from the next frame on. Outputs keep
    /// running: live ones get a keyframe (of the new size, when the size changes and they can
    /// follow it), recordings keep their size (the new picture is scaled into it).
    pub fn set_source(&self, spec: SourceSpec) -> Result<()> {
        self.ensure_running()?;
        if self.shared.passthrough {
            return Err(bad(
                "an ffmpeg source passes its video through; it cannot be changed while running",
            ));
        }
        if matches!(spec, SourceSpec::FfmpegProcess(_)) {
            return Err(bad(
                "a running session cannot switch to an ffmpeg source (it delivers encoded video)",
            ));
        }
        let mut opts = self.shared.cfg.source_options.clone();
        if let Some(size) = self.shared.cfg.size {
            opts.testsrc_size = size;
        }
        let source = capture::open_source(&spec, &opts)?;
        tracing::debug!(source = source.describe(), "source_opened");
        *self
            .shared
            .next_source
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(source);
        Ok(())
    }

    /// Open another output (any target the pipeline's options accept) and start feeding it at
    /// the next keyframe, which is asked for now. The others are not disturbed.
    pub fn add_output(&self, spec: OutputSpec) -> Result<OutputId> {
        self.ensure_running()?;
        let sh = &self.shared;
        if spec.is_webrtc() && sh.cfg.encoder.profile == H264Profile::High {
            return Err(bad(
                "this session encodes H.264 High profile, which WebRTC peers do not all decode: \
                 start it with the baseline profile (or with a live output) to add live outputs later",
            ));
        }
        if let OutputSpec::Mp4(path) = &spec {
            let same = sh.outputs.all().iter().any(|o| {
                o.path.as_deref() == Some(path.as_path()) && !o.finished.load(Ordering::SeqCst)
            });
            if same {
                return Err(bad(format!(
                    "{} is already being recorded by this session",
                    path.display()
                )));
            }
        }
        let streams = sh.streams.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let video = match (&spec, streams.record) {
            (OutputSpec::Mp4(_) | OutputSpec::Rtmp(_), Some(record)) => record,
            _ => streams.main,
        };
        // Audio: the run's encoder for this output's codec, or a new one the audio thread
        // takes over once the output is in (opened first: a failure changes nothing).
        let codec = spec.audio_codec();
        let mut new_encoder = None;
        let audio = if sh.has_audio {
            let known = sh
                .audio_info
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&codec)
                .cloned();
            match known {
                Some(i) => Some(i),
                None => {
                    let enc = encode::open_audio_encoder(codec, sh.cfg.audio.bitrate)?;
                    let info = enc.info().clone();
                    new_encoder = Some(enc);
                    Some(info)
                }
            }
        } else {
            None
        };
        let media = MediaInfo { video, audio };
        let out = super::open_one_output(sh, &spec, &media)?;
        let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
        let (mut counters, feedback) = super::output_counters(sh, id, &spec, out.as_ref());
        counters.awaiting_video.store(true, Ordering::SeqCst);
        // Under the set's lock: the encode and audio threads cannot end half-way through this.
        let mut st = sh.outputs.lock();
        if st.video_closed {
            drop(st);
            let _ = out.finish(false);
            return Err(bad("the session has stopped"));
        }
        if sh.has_audio && !st.audio_closed {
            counters.audio = Some(codec);
            counters.queue.add_producer();
            if let Some(enc) = new_encoder {
                sh.audio_info
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(codec, enc.info().clone());
                sh.new_audio_encoders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(enc);
            }
        }
        let counters = Arc::new(counters);
        let thread = super::spawn_output(sh, out, counters.clone(), feedback, false)?;
        st.outputs.push(counters.clone());
        sh.outputs.version.fetch_add(1, Ordering::AcqRel);
        drop(st);
        sh.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, thread));
        tracing::info!(output = %counters.name, id, "output_added");
        Ok(id)
    }

    /// Stop one output: what is queued for it is written, a recording is finalized (returned
    /// once it is). The last output cannot be removed — stop the pipeline instead.
    pub fn remove_output(&self, id: OutputId) -> Result<OutputSummary> {
        let sh = &self.shared;
        let removed = {
            let mut st = sh.outputs.lock();
            let Some(pos) = st.outputs.iter().position(|o| o.id == id) else {
                return Err(bad(format!("no output {id} in this session")));
            };
            let live = st
                .outputs
                .iter()
                .filter(|o| !o.failed.load(Ordering::SeqCst) && !o.finished.load(Ordering::SeqCst))
                .count();
            let this_live = !st.outputs[pos].failed.load(Ordering::SeqCst)
                && !st.outputs[pos].finished.load(Ordering::SeqCst);
            if this_live && live <= 1 && !st.video_closed {
                return Err(bad(
                    "this is the session's last running output: stop the session instead",
                ));
            }
            let o = st.outputs.remove(pos);
            sh.outputs.version.fetch_add(1, Ordering::AcqRel);
            o
        };
        // Ends the output's queue whoever still produces for it; it drains and finishes.
        removed.queue.end();
        let thread = {
            let mut threads = sh.threads.lock().unwrap_or_else(|p| p.into_inner());
            threads
                .iter()
                .position(|(i, _)| *i == id)
                .map(|p| threads.remove(p).1)
        };
        let summary = match thread {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(OutputError::Write {
                    path: Default::default(),
                    reason: "output thread panicked".into(),
                })
            }),
            None => return Err(bad(format!("output {id} was already removed"))),
        };
        tracing::info!(output = %removed.name, id, "output_removed");
        Ok(summary?)
    }

    /// The video bitrate, bit/s, between the adaptive controller's floor (`min_bitrate`) and
    /// the bitrate the pipeline started with (live outputs' rate controllers are bounded by it).
    /// No keyframe, no new stream: x264 is re-rated in place.
    pub fn set_bitrate(&self, bps: u64) -> Result<()> {
        self.ensure_running()?;
        let (lo, hi) = (
            self.shared
                .cfg
                .adapt
                .min_bitrate
                .min(self.shared.cfg.encoder.bitrate),
            self.shared.cfg.encoder.bitrate,
        );
        if !(lo..=hi).contains(&bps) {
            return Err(bad(format!(
                "bitrate {bps} out of range {lo}..={hi} bit/s (from the minimum bitrate to the one the session started with)"
            )));
        }
        if self.shared.passthrough {
            return Err(bad("an ffmpeg source keeps its own bitrate"));
        }
        self.shared.live.bitrate.store(bps, Ordering::SeqCst);
        tracing::info!(bitrate = bps, "bitrate_changed");
        Ok(())
    }

    /// The highest frame rate encoded, 1 up to the rate the pipeline started with (the capture
    /// keeps its rate; the encode keeps this many frames of it).
    pub fn set_fps(&self, fps: u32) -> Result<()> {
        self.ensure_running()?;
        let max = self.shared.cfg.fps;
        if !(1..=max).contains(&fps) {
            return Err(bad(format!(
                "fps {fps} out of range 1..={max} (up to the rate the session started with)"
            )));
        }
        if self.shared.passthrough {
            return Err(bad("an ffmpeg source keeps its own frame rate"));
        }
        self.shared.live.max_fps.store(fps, Ordering::SeqCst);
        tracing::info!(fps, "fps_changed");
        Ok(())
    }

    /// Silence the audio track (it keeps running, so players and SFUs see no gap) or bring the
    /// sound back.
    pub fn set_audio_muted(&self, muted: bool) -> Result<()> {
        self.ensure_running()?;
        if !self.shared.has_audio {
            return Err(bad("this session captures no audio"));
        }
        self.shared.live.audio_muted.store(muted, Ordering::SeqCst);
        if muted {
            tracing::info!("audio_muted");
        } else {
            tracing::info!("audio_unmuted");
        }
        Ok(())
    }

    /// The video encoder the main tier runs (`libx264`, `h264_vaapi`, …).
    pub fn encoder_name(&self) -> String {
        self.shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .main
            .encoder_name
            .clone()
    }

    /// The ids of the outputs currently running, with their log-safe names.
    pub fn outputs(&self) -> Vec<(OutputId, String)> {
        self.shared
            .outputs
            .all()
            .iter()
            .map(|o| (o.id, o.name.clone()))
            .collect()
    }
}
