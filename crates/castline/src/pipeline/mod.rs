//! Wiring: one capture thread, one encode thread (convert + scale + encode), one audio thread
//! (mixer + audio encoders, when the run has audio; each audio source captures on its own
//! thread), one thread per output, joined by bounded queues (see `queue`). The caller's thread
//! only samples stats and decides when to stop.
//!
//! Stopping is a cascade: the capture thread ends (stop requested, duration reached or source
//! failed) and closes the frame queue; the encoder drains it, flushes, and closes every output
//! queue; the audio thread produces audio up to the video's last frame, flushes and closes its side
//! of the output queues; each output drains its queue and finishes its file or connection.

pub mod clock;
pub mod control;
mod health_watch;
pub mod queue;
mod sink_feedback;
pub mod stats;
pub mod tiers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::adapt::tier::{self, TierSwitch};
use crate::adapt::{AdaptConfig, SinkAdapter};
use crate::cadence::CadenceConfig;
use crate::capture::ffmpeg_process::FfmpegIngest;
use crate::capture::pulse::PulseInput;
use crate::capture::{
    self, AudioSourceSpec, CaptureTime, SourceOptions, SourceSpec, VideoFrame, VideoSource,
};
use crate::convert::even_crop;
use crate::encode::{
    self, AudioCodec, AudioEncoder, EncodedPacket, EncoderSettings, MediaInfo, VideoEncoder,
    VideoStreamInfo,
};
use crate::error::{Error, Result};
use crate::health::{HealthConfig, HealthEvent};
use crate::mix::{self, Mixer};
use crate::output::{self, Output, OutputSpec, OutputSummary, RtmpOptions, Written};
use clock::MediaClock;
pub use control::{Control, OutputId};
use control::{LiveSettings, OutputSet, Shared, StreamInfos};
use health_watch::HealthWatch;
use queue::{FrameQueue, PacketQueue, Pop, PushOutcome};
use sink_feedback::SinkFeedback;
use stats::{
    AudioCounters, AudioStats, OutputCounters, PipelineCounters, StatsSampler, StatsSnapshot,
};
use tiers::{AdaptationReport, OutputMix, Tiers};

/// What audio to capture and how to encode it.
#[derive(Debug, Clone)]
pub struct AudioConfig {
    /// Empty: no audio track.
    pub sources: Vec<AudioSourceSpec>,
    /// Gain applied to microphone inputs (1.0 = unchanged).
    pub mic_gain: f32,
    /// Audio bitrate, bit/s; None = the codec's default (AAC 128 kb/s, Opus 96 kb/s).
    pub bitrate: Option<u64>,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            mic_gain: 1.0,
            bitrate: None,
        }
    }
}

/// How long the mixer waits behind real time before mixing a frame, so every source's samples
/// for it have arrived (capture fragments are 10 ms; scheduling adds a few more). Adds latency,
/// not offset: audio keeps its capture timestamps.
const MIX_DELAY_US: i64 = 60_000;

/// Everything needed to run one capture → encode → outputs pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub source: SourceSpec,
    pub source_options: SourceOptions,
    pub fps: u32,
    /// Encoded size; default: the source's size, cropped to even.
    pub size: Option<(u32, u32)>,
    pub encoder: EncoderSettings,
    pub outputs: Vec<OutputSpec>,
    /// Stop by itself after this much media time.
    pub duration: Option<Duration>,
    /// Queue budget of file outputs (network outputs use `rtmp.buffer_*`).
    pub file_queue_packets: usize,
    pub file_queue_duration: Duration,
    /// Stream buffer and reconnection settings of RTMP outputs.
    pub rtmp: RtmpOptions,
    pub audio: AudioConfig,
    /// Adaptive quality of live outputs (rate control, tiers, ladder).
    pub adapt: AdaptConfig,
    /// Zero-hertz: encode only changed frames, a few refinements and keep-alives, when every
    /// output can take a variable frame rate (see [`crate::cadence`]). None: always constant.
    pub zero_hertz: Option<CadenceConfig>,
    /// Recordings take a variable frame rate too (then zero-hertz applies to them); by default
    /// they keep a constant one, which video editors handle best.
    pub vfr_recordings: bool,
    /// Thresholds of the health verdicts, and whether a recommended fallback stops the run.
    pub health: HealthConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            source: SourceSpec::TestSrc,
            source_options: SourceOptions::default(),
            fps: 30,
            size: None,
            encoder: EncoderSettings::default(),
            outputs: Vec::new(),
            duration: None,
            file_queue_packets: 600,
            file_queue_duration: Duration::from_secs(10),
            rtmp: RtmpOptions::default(),
            audio: AudioConfig::default(),
            adapt: AdaptConfig::default(),
            zero_hertz: Some(CadenceConfig::default()),
            vfr_recordings: false,
            health: HealthConfig::default(),
        }
    }
}

/// How a finished run went.
#[derive(Debug)]
pub struct RunSummary {
    pub frames_encoded: u64,
    pub media_duration: Duration,
    pub stream: VideoStreamInfo,
    /// Audio produced, seconds (0 without audio).
    pub audio_duration: Duration,
    pub outputs: Vec<std::result::Result<OutputSummary, crate::error::OutputError>>,
}

/// A running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    counters: Arc<PipelineCounters>,
    raw: FrameQueue<VideoFrame>,
    sampler: Mutex<StatsSampler>,
    info: VideoStreamInfo,
    audio_stats: Option<AudioStats>,
    adaptation: Arc<Mutex<AdaptationReport>>,
    capture: JoinHandle<std::result::Result<(), Error>>,
    /// None when video is passed through (ffmpeg source).
    encode: Option<JoinHandle<std::result::Result<(), Error>>>,
    audio: Option<JoinHandle<std::result::Result<(), Error>>>,
    endpoints: Vec<String>,
    health: HealthWatch,
    health_done: Arc<AtomicBool>,
    health_thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Open the source, encoder and outputs (any failure is returned here, before a thread
    /// starts), then start the threads.
    pub fn start(cfg: PipelineConfig) -> Result<Self> {
        if cfg.fps == 0 || cfg.fps > 240 {
            return Err(Error::Config(format!(
                "frame rate {} out of range 1..=240",
                cfg.fps
            )));
        }
        if cfg.outputs.is_empty() {
            return Err(Error::Config("no output given".into()));
        }
        // The clock starts before outputs connect (network outputs pace against it); capture
        // stamps its first frame with the clock's time when it starts ticking.
        let clock = MediaClock::new();
        // Keep FFmpeg's libraries quiet on stderr; castline reports errors itself.
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
        let video = open_video(&cfg, clock)?;
        let info = match &video {
            VideoPath::Encode(_, e) => e.info().clone(),
            VideoPath::PassThrough(i) => i.info.clone(),
        };
        let (audio_inputs, audio_encoders) = open_audio(&cfg, clock)?;
        let shared = Arc::new(Shared {
            clock,
            stop: Arc::new(AtomicBool::new(false)),
            keyframe: Arc::new(AtomicBool::new(false)),
            outputs: OutputSet::default(),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            next_source: Mutex::new(None),
            live: LiveSettings {
                bitrate: AtomicU64::new(cfg.encoder.bitrate),
                max_fps: AtomicU32::new(cfg.fps),
                audio_muted: AtomicBool::new(false),
            },
            streams: Mutex::new(StreamInfos {
                main: info.clone(),
                record: None,
            }),
            has_audio: !audio_encoders.is_empty(),
            audio_info: Mutex::new(
                audio_encoders
                    .iter()
                    .map(|e| (e.info().codec, e.info().clone()))
                    .collect(),
            ),
            new_audio_encoders: Mutex::new(Vec::new()),
            passthrough: matches!(video, VideoPath::PassThrough(_)),
            cfg,
        });
        let endpoints = start_outputs(&shared, &info)?;
        let counters = Arc::new(PipelineCounters::default());
        let raw = FrameQueue::new(2);

        // Video frame 0 and audio sample 0 are both at t0; the capture thread records where
        // video ended so audio ends there too.
        let t0 = clock.now_us();
        let end_us = Arc::new(AtomicI64::new(i64::MAX));
        let (capture, encoder) = match video {
            VideoPath::Encode(source, encoder) => {
                let (raw, sh, counters, end) = (
                    raw.clone(),
                    shared.clone(),
                    counters.clone(),
                    end_us.clone(),
                );
                let capture = spawn("castline-capture", move || {
                    let _end = EndGuard(end.clone(), t0);
                    run_capture(source, &sh, t0, &raw, &counters, &end)
                })?;
                (capture, Some(encoder))
            }
            VideoPath::PassThrough(ingest) => {
                let (sh, counters, end) = (shared.clone(), counters.clone(), end_us.clone());
                let capture = spawn("castline-ingest", move || {
                    let _end = EndGuard(end.clone(), t0);
                    run_ingest(ingest, t0, &sh, &counters, &end)
                })?;
                (capture, None)
            }
        };
        let mut audio_stats = None;
        let audio = if audio_encoders.is_empty() {
            None
        } else {
            let ac = Arc::new(AudioCounters::default());
            audio_stats = Some(AudioStats {
                counters: ac.clone(),
                inputs: audio_inputs.iter().map(|i| i.input.clone()).collect(),
            });
            let (sh, end, pc) = (shared.clone(), end_us.clone(), counters.clone());
            Some(spawn("castline-audio", move || {
                run_audio(audio_inputs, audio_encoders, t0, &end, &ac, &pc, &sh)
            })?)
        };
        let adaptation = Arc::new(Mutex::new(AdaptationReport::default()));
        let encode = match encoder {
            Some(encoder) => {
                let tiers = Tiers::new(encoder, &shared.cfg, adaptation.clone());
                let (raw, counters, sh) = (raw.clone(), counters.clone(), shared.clone());
                Some(spawn("castline-encode", move || {
                    run_encode(tiers, &raw, &counters, &sh)
                })?)
            }
            None => None,
        };
        let health = HealthWatch::new(
            shared.clone(),
            counters.clone(),
            raw.clone(),
            audio_stats
                .as_ref()
                .map(|a| a.inputs.clone())
                .unwrap_or_default(),
        );
        let health_done = Arc::new(AtomicBool::new(false));
        let health_thread = Some(
            health
                .spawn(health_done.clone())
                .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?,
        );
        Ok(Self {
            health,
            health_done,
            health_thread,
            shared,
            counters,
            raw,
            sampler: Mutex::new(StatsSampler::new()),
            info,
            audio_stats,
            adaptation,
            capture,
            encode,
            audio,
            endpoints,
        })
    }

    /// Where users reach the outputs that have an address (the viewer URL of `serve`, which
    /// holds its token: show it to the user, never log it).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The stream as it was opened (live changes — another source size — do not show here).
    pub fn stream_info(&self) -> &VideoStreamInfo {
        &self.info
    }

    /// A handle that changes the running pipeline (source, outputs, bitrate, fps, mute).
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    /// Ask for a graceful stop: outputs are finalized, `wait` returns Ok.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// A handle that can stop the pipeline from another thread (signal handlers, bindings).
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.shared.stop.clone()
    }

    /// Make the next encoded frame a keyframe (IDR).
    pub fn request_keyframe(&self) {
        tracing::info!(reason = "api", "keyframe_requested");
        self.shared.keyframe.store(true, Ordering::SeqCst);
    }

    /// True once every thread has ended.
    pub fn is_finished(&self) -> bool {
        self.capture.is_finished()
            && self.encode.as_ref().is_none_or(|e| e.is_finished())
            && self.audio.as_ref().is_none_or(|a| a.is_finished())
            && self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .all(|(_, t)| t.is_finished())
    }

    /// Counters since the previous call.
    pub fn sample_stats(&self) -> StatsSnapshot {
        let t = self.shared.clock.now_us() as f64 / 1e6;
        let mut snap = self
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(
                t,
                &self.counters,
                (self.raw.len(), self.raw.dropped()),
                &self.shared.outputs.all(),
                self.audio_stats.as_ref(),
                &self.adaptation.lock().unwrap_or_else(|p| p.into_inner()),
            );
        snap.health = self.health.snapshot();
        snap
    }

    /// Health verdicts since the previous call, in order (`unstable`, `fallback_recommended`,
    /// …; see [`crate::health`]). The counters are read a few times a second; this reads them
    /// once more first, so a verdict on a stage that just ended is not missed.
    pub fn take_health_events(&self) -> Vec<HealthEvent> {
        self.health.poll();
        self.health.take_events()
    }

    /// Wait for every thread and report. The first capture or encode error wins; output errors
    /// are reported per output in the summary (and fail the run when every output failed).
    /// Outputs removed while running are not in it (`remove_output` returned theirs).
    pub fn wait(mut self) -> Result<RunSummary> {
        let join = |h: JoinHandle<std::result::Result<(), Error>>| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Internal("pipeline thread panicked".into())))
        };
        let capture = join(self.capture);
        let encode = self.encode.map(join).unwrap_or(Ok(()));
        let audio = self.audio.map(join).unwrap_or(Ok(()));
        let mut threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        threads.sort_by_key(|(id, _)| *id);
        let outputs: Vec<_> = threads
            .into_iter()
            .map(|(_, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(crate::error::OutputError::Write {
                        path: Default::default(),
                        reason: "output thread panicked".into(),
                    })
                })
            })
            .collect();
        // The last verdicts (a stage that just ended) are logged before the run reports.
        self.health_done.store(true, Ordering::SeqCst);
        if let Some(h) = self.health_thread.take() {
            let _ = h.join();
        }
        self.health.poll();
        capture?;
        encode?;
        audio?;
        // The run failed only when every output failed (others keep going past one failure).
        if let Some(Err(e)) = outputs
            .first()
            .filter(|_| outputs.iter().all(|o| o.is_err()))
        {
            return Err(e.clone().into());
        }
        let frames_encoded = self.counters.frames_encoded.load(Ordering::Relaxed);
        Ok(RunSummary {
            frames_encoded,
            media_duration: Duration::from_micros(
                frames_encoded * 1_000_000 / self.info.fps.max(1) as u64,
            ),
            stream: self.info,
            audio_duration: Duration::from_secs_f64(
                self.audio_stats
                    .as_ref()
                    .map(|a| a.counters.samples_mixed.load(Ordering::Relaxed))
                    .unwrap_or(0) as f64
                    / mix::SAMPLE_RATE as f64,
            ),
            outputs,
        })
    }
}

/// Stage 1 of the start: the video source and its encoder, or the ffmpeg child whose video is
/// passed through.
fn open_video(cfg: &PipelineConfig, clock: MediaClock) -> Result<VideoPath> {
    if let SourceSpec::FfmpegProcess(args) = &cfg.source {
        let ingest = FfmpegIngest::start(args, &cfg.encoder, cfg.fps, clock)?;
        tracing::info!(
            source = "ffmpeg process",
            width = ingest.info.width,
            height = ingest.info.height,
            "capture_started"
        );
        return Ok(VideoPath::PassThrough(ingest));
    }
    let mut source_options = cfg.source_options.clone();
    if let Some(size) = cfg.size {
        source_options.testsrc_size = size;
    }
    let source = capture::open_source(&cfg.source, &source_options)?;
    let (sw, sh) = source.size();
    let (w, h) = cfg.size.unwrap_or_else(|| even_crop(sw, sh));
    tracing::info!(
        source = source.describe(),
        width = w,
        height = h,
        fps = cfg.fps,
        "capture_started"
    );
    let encoder = encode::open_video_encoder(&cfg.encoder, w, h, cfg.fps)?;
    Ok(VideoPath::Encode(source, encoder))
}

type AudioParts = (Vec<PulseInput>, Vec<Box<dyn AudioEncoder>>);

/// Stage 2: audio sources (an unknown device fails the start) and one encoder per codec the
/// outputs take.
fn open_audio(cfg: &PipelineConfig, clock: MediaClock) -> Result<AudioParts> {
    let mut inputs = Vec::new();
    let mut encoders: Vec<Box<dyn AudioEncoder>> = Vec::new();
    if cfg.audio.sources.is_empty() {
        return Ok((inputs, encoders));
    }
    for spec in &cfg.audio.sources {
        let gain = match spec {
            AudioSourceSpec::Mic(_) => cfg.audio.mic_gain,
            _ => 1.0,
        };
        inputs.push(PulseInput::open(spec, gain, clock)?);
    }
    for spec in &cfg.outputs {
        let c = spec.audio_codec();
        if encoders.iter().all(|e| e.info().codec != c) {
            encoders.push(encode::open_audio_encoder(c, cfg.audio.bitrate)?);
        }
    }
    Ok((inputs, encoders))
}

/// Stage 3: open every configured output (a failure closes the ones already open, so no empty
/// file remains), then give each its thread. Returns the outputs' endpoints.
fn start_outputs(sh: &Arc<Shared>, info: &VideoStreamInfo) -> Result<Vec<String>> {
    let audio_info = sh
        .audio_info
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut opened: Vec<(&OutputSpec, Box<dyn Output>)> = Vec::new();
    for spec in &sh.cfg.outputs {
        let media = MediaInfo {
            video: info.clone(),
            audio: audio_info.get(&spec.audio_codec()).cloned(),
        };
        match open_one_output(sh, spec, &media) {
            Ok(o) => opened.push((spec, o)),
            Err(e) => {
                for (_, o) in opened {
                    let _ = o.finish(false);
                }
                return Err(e.into());
            }
        }
    }
    let mut endpoints = Vec::new();
    for (spec, out) in opened {
        if let Some(e) = out.endpoint() {
            endpoints.push(e);
        }
        let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
        let (mut c, feedback) = output_counters(sh, id, spec, out.as_ref());
        if sh.has_audio {
            c.audio = Some(spec.audio_codec());
            c.queue.add_producer();
        }
        let c = Arc::new(c);
        let thread = spawn_output(sh, out, c.clone(), feedback, true)?;
        sh.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, thread));
        sh.outputs.push_initial(c);
    }
    Ok(endpoints)
}

pub(crate) fn open_one_output(
    sh: &Shared,
    spec: &OutputSpec,
    media: &MediaInfo,
) -> std::result::Result<Box<dyn Output>, crate::error::OutputError> {
    let live = output::LiveOptions {
        rtmp: &sh.cfg.rtmp,
        adapt: &sh.cfg.adapt,
    };
    output::open_output(spec, media, sh.clock, &live, sh.keyframe.clone())
}

/// The counters (and queue) of one output, and the feedback loop of a single-sink live output.
pub(crate) fn output_counters(
    sh: &Shared,
    id: OutputId,
    spec: &OutputSpec,
    out: &dyn Output,
) -> (OutputCounters, Option<SinkFeedback>) {
    let cfg = &sh.cfg;
    let queue = match spec {
        OutputSpec::Mp4(_) => PacketQueue::new(cfg.file_queue_packets, cfg.file_queue_duration),
        OutputSpec::Rtmp(_) => PacketQueue::new(cfg.rtmp.buffer_packets, cfg.rtmp.buffer),
        // Live to people: a short queue; late video is worse than a skipped frame.
        OutputSpec::Serve(_)
        | OutputSpec::Whip { .. }
        | OutputSpec::Rtp(_)
        | OutputSpec::LiveKit(_) => PacketQueue::new(60, Duration::from_millis(500)),
    };
    let mut c = OutputCounters::new(out.name(), queue);
    c.id = id;
    c.hub = out.hub();
    c.rtcp = out.rtcp();
    if let Some(d) = out.demand() {
        c.demand = d;
    }
    if let OutputSpec::Mp4(p) = spec {
        c.path = Some(p.clone());
    }
    // Recordings and RTMP keep one size and (unless --vfr) a constant rate.
    c.fixed_size = matches!(spec, OutputSpec::Mp4(_) | OutputSpec::Rtmp(_));
    c.vfr = match spec {
        OutputSpec::Mp4(_) => cfg.vfr_recordings,
        OutputSpec::Rtmp(_) => false,
        _ => true,
    };
    // Single-sink live outputs adapt from their own feedback (WebRTC hubs per peer).
    let feedback = match (spec, live_rate(cfg)) {
        (OutputSpec::Rtmp(_), Some(rate)) => Some(SinkFeedback::new(SinkAdapter::new(rate), true)),
        (OutputSpec::Rtp(_), Some(rate)) => Some(SinkFeedback::new(SinkAdapter::new(rate), false)),
        _ => None,
    };
    if let Some(f) = &feedback {
        c.demand = f.demand();
    }
    (c, feedback)
}

/// The output's thread. `stop_if_never_started`: a configured output that fails before its
/// first session stops the run (it never really started); an output added later does not.
pub(crate) fn spawn_output(
    sh: &Arc<Shared>,
    out: Box<dyn Output>,
    c: Arc<OutputCounters>,
    feedback: Option<SinkFeedback>,
    stop_if_never_started: bool,
) -> Result<control::OutputThread> {
    let (kf, stop) = (sh.keyframe.clone(), sh.stop.clone());
    spawn("castline-output", move || {
        let stop = stop_if_never_started.then_some(&*stop);
        run_output(out, &c, &kf, stop, feedback)
    })
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::Internal(format!("cannot start thread {name}: {e}")))
}

/// Where video comes from: pictures to encode, or encoded video to pass through.
enum VideoPath {
    Encode(Box<dyn VideoSource>, Box<dyn VideoEncoder>),
    PassThrough(FfmpegIngest),
}

/// The encode (or ingest) thread's copy of the output set, with each output's tier route.
#[derive(Default)]
struct Fanout {
    seen: u64,
    outputs: Vec<Arc<OutputCounters>>,
    routes: Vec<TierSwitch>,
}

impl Fanout {
    /// Re-read the set when it changed; routes stay with their outputs, an added one joins at
    /// its tier's next keyframe. True when it changed.
    fn refresh(&mut self, set: &OutputSet) -> bool {
        let Some(now) = set.changed_since(&mut self.seen) else {
            return false;
        };
        let mut old: HashMap<OutputId, TierSwitch> = self
            .outputs
            .iter()
            .map(|o| o.id)
            .zip(self.routes.iter().copied())
            .collect();
        self.routes = now
            .iter()
            .map(|o| {
                old.remove(&o.id).unwrap_or_else(|| {
                    if o.awaiting_video.load(Ordering::SeqCst) {
                        TierSwitch::joining()
                    } else {
                        TierSwitch::default()
                    }
                })
            })
            .collect();
        self.outputs = now;
        true
    }

    /// The recordings' encoder now serves as `tier`: their routes follow it, no keyframe needed.
    fn move_recordings(&mut self, tier: u8) {
        for (o, route) in self.outputs.iter().zip(self.routes.iter_mut()) {
            if o.fixed_size && o.hub.is_none() && route.current != tier::NONE {
                *route = TierSwitch {
                    current: tier,
                    pending: None,
                };
            }
        }
    }

    fn all_failed(&self) -> bool {
        self.outputs
            .iter()
            .all(|o| o.failed.load(Ordering::Relaxed))
    }

    /// Which kinds of output are running now.
    fn mix(&self) -> OutputMix {
        let mut mix = OutputMix::default();
        for o in self
            .outputs
            .iter()
            .filter(|o| !o.failed.load(Ordering::Relaxed))
        {
            if o.fixed_size {
                mix.fixed = true;
            } else {
                mix.live = true;
            }
        }
        mix
    }
}

/// The ffmpeg child's restarts so far, for the health verdict (every spawn after the first).
fn note_restarts(ingest: &FfmpegIngest, counters: &PipelineCounters) {
    let spawns = ingest.counters.spawns.load(Ordering::Relaxed);
    counters
        .source_restarts
        .store(spawns.saturating_sub(1), Ordering::Relaxed);
}

/// Pass-through video: access units from the ffmpeg child go to the outputs as they are,
/// stamped with their arrival time on the pipeline clock. Keyframe requests cannot be honoured
/// (the child's GOP is fixed by --keyint); they are counted and logged once.
fn run_ingest(
    ingest: FfmpegIngest,
    t0: i64,
    sh: &Shared,
    counters: &PipelineCounters,
    ended_at: &AtomicI64,
) -> Result<()> {
    let end_us = sh.cfg.duration.map(|d| t0 + d.as_micros() as i64);
    let frame_us = 1_000_000 / ingest.info.fps.max(1) as i64;
    let mut last_pts = i64::MIN;
    let mut packets = Vec::with_capacity(1);
    let mut first = Some(ingest.first.clone());
    let mut warned_keyframe = false;
    // Passed-through video has one tier: every output takes it (an added one from a keyframe).
    let mut fan = Fanout::default();
    let mut result = Ok(());
    while !sh.stop.load(Ordering::SeqCst) {
        if fan.refresh(&sh.outputs) {
            for r in &mut fan.routes {
                r.want(tier::MAIN);
            }
        }
        note_restarts(&ingest, counters);
        let au = match first.take() {
            Some(au) => au,
            None => match ingest.recv_timeout(Duration::from_millis(200)) {
                Ok(au) => au,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        if end_us.is_some_and(|e| au.arrival_us >= e) {
            break;
        }
        if sh.keyframe.swap(false, Ordering::SeqCst) && !warned_keyframe {
            warned_keyframe = true;
            tracing::warn!(
                "keyframe request not honoured: an ffmpeg source keeps its own GOP (--keyint)"
            );
        }
        let pts = au.arrival_us.max(last_pts + 1);
        last_pts = pts;
        if counters.frames_encoded.load(Ordering::Relaxed) == 0 {
            tracing::info!("track_active");
        }
        counters.frames_captured.fetch_add(1, Ordering::Relaxed);
        counters.frames_changed.fetch_add(1, Ordering::Relaxed);
        counters.frames_encoded.fetch_add(1, Ordering::Relaxed);
        packets.push(EncodedPacket {
            data: au.data.into(),
            pts_us: pts,
            dts_us: pts,
            duration_us: frame_us,
            keyframe: au.keyframe,
            media: encode::MediaKind::Video,
            layer: 0,
        });
        fan_out(&mut packets, counters, &mut fan, &sh.keyframe);
        if fan.all_failed() {
            sh.stop.store(true, Ordering::SeqCst);
        }
    }
    note_restarts(&ingest, counters);
    if let Err(e) = ingest.finish() {
        tracing::error!(error = %e, "fatal");
        counters.stage_failed("capture", &e);
        result = Err(e.into());
    }
    ended_at.store(
        if last_pts == i64::MIN {
            t0
        } else {
            last_pts + frame_us
        },
        Ordering::SeqCst,
    );
    sh.outputs.close_video();
    result
}

/// Sets the end of media time when the capture thread ends, however it ends (the audio thread
/// waits for it).
struct EndGuard(Arc<AtomicI64>, i64);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(i64::MAX, self.1, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Tick at a constant rate; grab when the source has something new, otherwise repeat the last
/// picture. Frame `n` is stamped `t0 + n / fps` on the pipeline clock, so the output is exactly
/// CFR. A source opened by `Control::set_source` replaces the current one at the next tick. On
/// exit, `ended_at` is set to the time just after the last frame.
fn run_capture(
    mut source: Box<dyn VideoSource>,
    sh: &Shared,
    t0: i64,
    raw: &FrameQueue<VideoFrame>,
    counters: &PipelineCounters,
    ended_at: &AtomicI64,
) -> Result<()> {
    let (clock, fps) = (sh.clock, sh.cfg.fps);
    let pts_of = |tick: u64| t0 + (tick as u128 * 1_000_000 / fps as u128) as i64;
    let end_us = sh.cfg.duration.map(|d| d.as_micros() as i64);
    let mut tick = 0u64;
    let mut last: Option<VideoFrame> = None;
    let mut content_id = 0u64;
    let result = loop {
        if sh.stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let pts = pts_of(tick);
        if end_us.is_some_and(|end| pts - t0 >= end) {
            break Ok(());
        }
        let due = clock.instant_at(pts);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if let Some(next) = sh
            .next_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let (w, h) = next.size();
            tracing::info!(
                from = source.describe(),
                source = next.describe(),
                width = w,
                height = h,
                "source_changed"
            );
            source = next;
            // Every live output starts the new picture on a keyframe (a size change brings one
            // anyway; a source of the same size would otherwise arrive as P-frames).
            tracing::info!(reason = "source_changed", "keyframe_requested");
            sh.keyframe.store(true, Ordering::SeqCst);
        }
        let at = CaptureTime {
            pts_us: pts,
            wall_us: clock.wall_us(pts),
            tick,
        };
        match source.grab(at) {
            Ok(Some(picture)) => {
                content_id += 1;
                counters.frames_changed.fetch_add(1, Ordering::Relaxed);
                last = Some(VideoFrame {
                    picture,
                    pts_us: pts,
                    content_id,
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "capture_failed");
                counters.stage_failed("capture", &e);
                break Err(Error::from(e));
            }
        }
        if let Some(f) = &mut last {
            f.pts_us = pts;
            if raw.push(f.clone()) {
                tracing::debug!("frame_dropped_before_encode");
            }
            counters.frames_captured.fetch_add(1, Ordering::Relaxed);
        }
        tick += 1;
        // When a grab overran the frame interval, skip the ticks already past instead of bursting.
        let now_us = clock.now_us();
        while pts_of(tick + 1) <= now_us {
            tick += 1;
            counters.capture_late.fetch_add(1, Ordering::Relaxed);
        }
    };
    if tick == 0 || last.is_none() {
        tracing::warn!("capture ended before the first frame");
    }
    let end = if last.is_some() { pts_of(tick) } else { t0 };
    ended_at.store(end, Ordering::SeqCst);
    raw.close();
    result
}

/// The audio clock master: every mixer frame is due at a fixed time after t0, whatever the
/// sources deliver; each frame is mixed (silence while muted), encoded by every audio encoder
/// and fanned out to the outputs taking that codec. Ends at the video's end (`end_us`),
/// flushes, closes its side of the output queues, then stops the sources.
fn run_audio(
    inputs: Vec<PulseInput>,
    mut encoders: Vec<Box<dyn AudioEncoder>>,
    t0: i64,
    end_us: &AtomicI64,
    counters: &AudioCounters,
    pipeline: &PipelineCounters,
    sh: &Shared,
) -> Result<()> {
    let clock = sh.clock;
    let mut mixer = Mixer::new(inputs.iter().map(|i| i.input.clone()).collect());
    // AAC's 1024 when an output takes AAC, else Opus's 960; other encoders re-cut.
    let n = encoders
        .first()
        .map(|e| e.info().frame_size as i64)
        .unwrap_or(1024);
    let base = mix::us_to_sample(t0);
    let mut buf = vec![0f32; n as usize * mix::CHANNELS];
    let mut packets = Vec::new();
    let mut seen = 0;
    let mut outputs = Vec::new();
    let result = (|| -> Result<()> {
        let mut k = 0i64;
        loop {
            let start = base + k * n;
            let frame_end_us = mix::sample_to_us(start + n);
            let due = frame_end_us + MIX_DELAY_US;
            // Wait for the frame's time, or for the video to end before it.
            let done = loop {
                let end = end_us.load(Ordering::SeqCst);
                if end != i64::MAX && frame_end_us > end {
                    break true;
                }
                let now = clock.now_us();
                if now >= due {
                    if now - due > mix::sample_to_us(n) {
                        counters.late_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    break false;
                }
                std::thread::sleep(Duration::from_micros((due - now).min(20_000) as u64));
            };
            if done {
                break;
            }
            if let Some(now) = sh.outputs.changed_since(&mut seen) {
                outputs = now;
                encoders.append(
                    &mut sh
                        .new_audio_encoders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                );
            }
            if mixer.mix(start, &mut buf) {
                counters.clipped_frames.fetch_add(1, Ordering::Relaxed);
            }
            if sh.live.audio_muted.load(Ordering::Relaxed) {
                buf.fill(0.0);
            }
            for enc in encoders.iter_mut() {
                enc.encode(start, &buf, &mut packets)?;
                fan_out_audio(enc.info().codec, &mut packets, counters, &outputs);
            }
            counters.frames_mixed.fetch_add(1, Ordering::Relaxed);
            counters
                .samples_mixed
                .fetch_add(n as u64, Ordering::Relaxed);
            k += 1;
        }
        for enc in encoders.iter_mut() {
            enc.flush(&mut packets)?;
            fan_out_audio(enc.info().codec, &mut packets, counters, &outputs);
        }
        Ok(())
    })();
    if let Err(e) = &result {
        tracing::error!(error = %e, "audio_failed");
        pipeline.stage_failed("audio", e);
    }
    sh.outputs.close_audio();
    drop(inputs);
    result
}

/// Audio packets go to every output taking their codec (an added output once its video has
/// begun); queues never drop them.
fn fan_out_audio(
    codec: AudioCodec,
    packets: &mut Vec<EncodedPacket>,
    counters: &AudioCounters,
    outputs: &[Arc<OutputCounters>],
) {
    for p in packets.drain(..) {
        counters.packets.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(p.data.len() as u64, Ordering::Relaxed);
        let p = Arc::new(p);
        for o in outputs {
            if o.audio == Some(codec)
                && !o.failed.load(Ordering::Relaxed)
                && !o.awaiting_video.load(Ordering::Relaxed)
            {
                o.queue.push(p.clone());
            }
        }
    }
}

/// Per frame: pick up output changes, read what outputs ask for, fit the tiers' sizes, route
/// each output to its tier, encode on every tier that needs the frame, fan out. Once a second:
/// CPU pressure and the adaptation report.
fn run_encode(
    mut tiers: Tiers,
    raw: &FrameQueue<VideoFrame>,
    counters: &PipelineCounters,
    sh: &Shared,
) -> Result<()> {
    let mut packets: Vec<EncodedPacket> = Vec::with_capacity(4);
    let mut fan = Fanout::default();
    let mut first = true;
    // The last frame captured: a zero-hertz run that ends still encodes it (exact duration).
    let mut last = None;
    let result = (|| -> Result<()> {
        loop {
            let frame = match raw.pop_timeout(Duration::from_millis(200)) {
                Pop::Item(f) => f,
                Pop::Empty => continue,
                Pop::Closed => break,
            };
            if fan.refresh(&sh.outputs) {
                tiers.set_zero_hertz(fan.outputs.iter().all(|o| o.vfr));
            }
            last = Some(frame.clone());
            let t0 = Instant::now();
            tiers.set_limits(
                sh.live.bitrate.load(Ordering::Relaxed),
                sh.live.max_fps.load(Ordering::Relaxed),
            );
            tiers.plan(t0, fan.outputs.iter().map(|o| o.demand.as_ref()))?;
            let picture = (frame.picture.width, frame.picture.height);
            if tiers.fit_sizes(picture, fan.mix())? {
                let (main, record) = tiers.streams();
                *sh.streams.lock().unwrap_or_else(|p| p.into_inner()) =
                    StreamInfos { main, record };
            }
            if let Some(tier) = tiers.take_moved_recordings() {
                fan.move_recordings(tier);
            }
            let (main_needed, record_needed) = route_outputs(&mut fan, &mut tiers);
            if sh.keyframe.swap(false, Ordering::SeqCst) {
                tiers.request_keyframe(None);
            }
            tiers.encode(&frame, main_needed, record_needed, &mut packets)?;
            let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
            if !packets.is_empty() {
                counters
                    .encode_us
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(us);
                counters.frames_encoded.fetch_add(1, Ordering::Relaxed);
            }
            if first && !packets.is_empty() {
                first = false;
                tracing::info!(encode_ms = us as f64 / 1000.0, "first_frame_encoded");
            }
            fan_out(&mut packets, counters, &mut fan, &sh.keyframe);
            if let Some(main_bps) = tiers.tick(Instant::now(), raw.dropped()) {
                for o in &fan.outputs {
                    o.demand.set_main_rate(main_bps);
                }
            }
            if fan.all_failed() {
                sh.stop.store(true, Ordering::SeqCst);
            }
        }
        tiers.flush(last.as_ref(), &mut packets)?;
        fan_out(&mut packets, counters, &mut fan, &sh.keyframe);
        Ok(())
    })();
    if let Err(e) = &result {
        tracing::error!(error = %e, "fatal");
        counters.stage_failed("encode", e);
        // Let capture stop too; outputs still finalize what they have.
        sh.stop.store(true, Ordering::SeqCst);
        raw.close();
    }
    sh.outputs.close_video();
    result
}

/// Point every single-sink output at the tier it asks for (switching at that tier's next
/// keyframe, which is requested here); WebRTC hubs route per peer themselves. Returns whether
/// any output needs the main tier, and whether any still takes the recording tier.
fn route_outputs(fan: &mut Fanout, tiers: &mut Tiers) -> (bool, bool) {
    let (mut main_needed, mut record_needed) = (false, false);
    for (o, route) in fan.outputs.iter().zip(fan.routes.iter_mut()) {
        if o.failed.load(Ordering::Relaxed) {
            continue;
        }
        if o.hub.is_some() {
            main_needed |= o.demand.main_sinks() > 0;
            continue;
        }
        let want = if o.fixed_size && tiers.record_wanted() {
            tier::RECORD
        } else if o.demand.main_sinks() == 0 && o.demand.low().is_some() {
            tier::LOW
        } else {
            tier::MAIN
        };
        if route.want(want) {
            tiers.request_keyframe(Some(want));
        }
        main_needed |= route.needs(tier::MAIN);
        record_needed |= route.needs(tier::RECORD);
    }
    (main_needed, record_needed)
}

/// One encode feeds every output: packets are shared, not copied. Video goes to an output only
/// from the tier it is routed to (a WebRTC hub gets every tier and routes per peer).
fn fan_out(
    packets: &mut Vec<EncodedPacket>,
    counters: &PipelineCounters,
    fan: &mut Fanout,
    keyframe: &AtomicBool,
) {
    for p in packets.drain(..) {
        counters
            .encoded_bytes
            .fetch_add(p.data.len() as u64, Ordering::Relaxed);
        if p.keyframe {
            counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        let p = Arc::new(p);
        for (o, route) in fan.outputs.iter().zip(fan.routes.iter_mut()) {
            if o.failed.load(Ordering::Relaxed) {
                continue;
            }
            if o.hub.is_none() && !route.accept(p.layer, p.keyframe) {
                continue;
            }
            if o.hub.is_some() && p.layer == tier::RECORD {
                continue;
            }
            if o.awaiting_video.load(Ordering::Relaxed) {
                o.awaiting_video.store(false, Ordering::Relaxed);
            }
            match o.queue.push(p.clone()) {
                PushOutcome::Dropped {
                    want_keyframe: true,
                } => {
                    tracing::warn!(output = %o.name, reason = "output_queue_full", "keyframe_requested");
                    keyframe.store(true, Ordering::SeqCst);
                }
                PushOutcome::Flushed { discarded } => {
                    tracing::warn!(output = %o.name, discarded, "output_backlog_discarded");
                }
                _ => {}
            }
        }
    }
}

/// The rate bounds of a single-sink live output, None with adaptation off or passed-through
/// video (an ffmpeg source has one encode, whose rate castline does not control).
fn live_rate(cfg: &PipelineConfig) -> Option<crate::adapt::RateConfig> {
    let encoded = !matches!(cfg.source, SourceSpec::FfmpegProcess(_));
    (cfg.adapt.enabled && encoded).then_some(crate::adapt::RateConfig {
        min_bps: cfg.adapt.min_bitrate,
        max_bps: cfg.encoder.bitrate,
    })
}

/// `stop`: the pipeline's stop flag, for an output whose failure before its first session
/// means the run never really started (None for outputs added while running).
fn run_output(
    mut out: Box<dyn Output>,
    c: &OutputCounters,
    keyframe: &AtomicBool,
    stop: Option<&AtomicBool>,
    mut feedback: Option<SinkFeedback>,
) -> std::result::Result<OutputSummary, crate::error::OutputError> {
    let mut first = true;
    let mut failure = None;
    // Connection state only changes around skipped packets; refresh the stats copy then.
    let mut refresh_link = true;
    loop {
        if let Some(f) = &mut feedback {
            f.poll(c);
        }
        match c.queue.pop_timeout(Duration::from_millis(200)) {
            Pop::Item(p) => {
                let written = out.write(&p);
                let changed = refresh_link || !matches!(written, Ok(Written::Sent));
                refresh_link = !matches!(written, Ok(Written::Sent));
                match written {
                    Ok(Written::Sent) => {
                        if first {
                            first = false;
                            tracing::info!(output = %c.name, "output_connected");
                        }
                        c.bytes.fetch_add(p.data.len() as u64, Ordering::Relaxed);
                        c.packets.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Written::Skipped { want_keyframe }) => {
                        c.skipped.fetch_add(1, Ordering::Relaxed);
                        if want_keyframe && !keyframe.swap(true, Ordering::SeqCst) {
                            tracing::info!(output = %c.name, reason = "output_restart", "keyframe_requested");
                        }
                    }
                    Err(e) => {
                        tracing::error!(output = %c.name, error = %e, kind = e.kind(), class = ?e.class(), "output_failed");
                        *c.error.lock().unwrap_or_else(|p| p.into_inner()) = Some((&e).into());
                        c.failed.store(true, Ordering::SeqCst);
                        if let Some(stop) = stop.filter(|_| !out.started()) {
                            // Same as failing to open: the run never really started.
                            stop.store(true, Ordering::SeqCst);
                        }
                        failure = Some(e);
                        break;
                    }
                }
                if changed {
                    if let Some(link) = out.link() {
                        *c.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
                    }
                }
            }
            Pop::Empty => continue,
            Pop::Closed => break,
        }
    }
    let clean = failure.is_none();
    let finished = out.finish(clean);
    c.finished.store(true, Ordering::SeqCst);
    match (failure, finished) {
        (Some(e), _) => Err(e),
        (None, r) => {
            if r.is_err() {
                c.failed.store(true, Ordering::SeqCst);
            }
            r
        }
    }
}
