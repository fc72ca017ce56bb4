//! Node.js / Electron binding of castline (N-API through napi-rs).
//!
//! The engine runs in-process on its own threads; frames never cross into JavaScript. Each
//! `NativeSession` owns one pipeline and a monitor thread that reports stats, errors and the
//! stop through thread-safe functions, so callbacks run on the JS thread. `index.js` wraps this
//! layer in the public API (`startScreenShare`, `Session`, …).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use castline::capture::{
    parse_audio_sources, pulse, x11, AudioSourceSpec, SourceOptions, SourceSpec,
};
use castline::encode::{EncoderKind, EncoderSettings, H264Profile};
use castline::output::OutputSpec;
use castline::pipeline::stats::StatsSnapshot;
use castline::pipeline::{AudioConfig, Control, Pipeline, PipelineConfig};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

/// A JS callback taking one value (no error-first argument).
type Callback<T> = ThreadsafeFunction<T, (), T, Status, false>;

#[napi(object)]
pub struct Display {
    pub index: u32,
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub x: i32,
    pub y: i32,
    pub primary: bool,
}

#[napi(object)]
pub struct Window {
    pub handle: u32,
    pub title: String,
    pub process_name: Option<String>,
    pub pid: Option<u32>,
    pub width: u32,
    pub height: u32,
}

#[napi(object)]
pub struct AudioDevice {
    pub name: String,
    pub description: String,
    pub default: bool,
    /// Sources: the sink this source monitors, if it is a monitor.
    pub monitor_of: Option<String>,
}

#[napi(object)]
pub struct AudioApplication {
    pub name: String,
    pub pid: Option<u32>,
    pub binary: Option<String>,
    pub sink: String,
}

#[napi(object)]
pub struct AudioDevices {
    pub sources: Vec<AudioDevice>,
    pub sinks: Vec<AudioDevice>,
    pub applications: Vec<AudioApplication>,
}

/// Options of `startScreenShare` / `new Session`.
#[napi(object)]
#[derive(Clone)]
pub struct ShareOptions {
    /// `file:///…/out.mp4` (or a plain path), `rtmp://…`, `rtmps://…`, `whip+https://…`,
    /// `serve://127.0.0.1:8080`, `livekit://HOST:PORT`, or plain RTP:
    /// `rtp://IP:PORT?video_pt=N&video_ssrc=N[&audio_pt=N&audio_ssrc=N][&mtu=BYTES]`.
    /// With `serverUrl`, an extra output beside the LiveKit room (e.g. a recording).
    pub target: Option<String>,
    /// A LiveKit server (`ws://…`, `wss://…`, as LiveKit's SDKs take it) to publish the screen
    /// share into; `token` is the access token (the room is in it).
    pub server_url: Option<String>,
    /// `primary` (default), `display`, `window` or `testsrc`.
    pub target_type: Option<String>,
    /// Display index or window handle.
    pub target_id: Option<u32>,
    pub fps: Option<u32>,
    /// Video bitrate in bit/s.
    pub bitrate: Option<f64>,
    /// Seconds between keyframes.
    pub keyframe_interval: Option<f64>,
    pub show_cursor: Option<bool>,
    /// Capture audio (default false).
    pub capture_audio: Option<bool>,
    /// `system` (default), `mic`, `both`, `app:NAME`, `app:PID`, a bare PID (that app only), or
    /// `system-except:PID` / `system-except:NAME` (everything but that app and its children).
    pub audio_mode: Option<String>,
    /// `auto` (default), `x264`, `vaapi`, `nvenc`, `qsv`.
    pub encoder: Option<String>,
    /// Encoded size `WxH`.
    pub size: Option<String>,
    /// x264 preset.
    pub preset: Option<String>,
    /// LiveKit access token with `serverUrl`; else the bearer token of a WHIP target, or the
    /// viewer token of `serve://`.
    pub token: Option<String>,
    /// Adaptive quality of live targets (default true): bitrate follows the path, congested
    /// viewers get a lower tier (fps first, then size), CPU pressure lowers the frame rate.
    pub adapt: Option<bool>,
    /// Lowest frame rate the ladder steps down to (default 15).
    pub min_fps: Option<u32>,
    /// Lowest video bitrate a live target is asked to take, bit/s (default 150 000).
    pub min_bitrate: Option<f64>,
    /// Zero-hertz (default true): a still screen costs almost nothing when no output needs a
    /// constant frame rate.
    pub zero_hertz: Option<bool>,
    /// Keep-alive frames per second of a still picture (default 1).
    pub idle_fps: Option<f64>,
    /// Recordings take a variable frame rate too (default false: constant).
    pub vfr: Option<bool>,
    /// Stop cleanly (recordings finalized) when a `fallback_recommended` event is emitted
    /// (default false: the app decides).
    pub stop_on_unstable: Option<bool>,
    /// Rolling window of the health verdicts, seconds (default 30).
    pub health_window_s: Option<f64>,
    /// Failures (reconnects, restarts, lost sources) in the window that make a stage
    /// `unstable` (default 3).
    pub health_max_failures: Option<u32>,
    /// Audio bitrate, bit/s (default: AAC 128 000, Opus 96 000).
    pub audio_bitrate: Option<f64>,
    /// H.264 profile: `baseline`, `main` or `high`. Default: `baseline` with a live target,
    /// else `high`. WebRTC targets added later with `addOutput` need `baseline` (or `main`).
    pub profile: Option<String>,
}

/// The source of `setSource`.
#[napi(object)]
pub struct SourceChoice {
    /// `primary`, `display`, `window` or `testsrc`.
    pub target_type: Option<String>,
    /// Display index or window handle.
    pub target_id: Option<u32>,
}

/// A classified error, as passed to the error callback.
#[napi(object)]
pub struct EngineError {
    pub code: String,
    pub message: String,
    pub fatal: bool,
}

#[napi(object)]
pub struct OutputStats {
    /// What `removeOutput` takes (the configured targets are 0, 1, …).
    pub id: u32,
    pub name: String,
    pub state: String,
    pub bitrate_mbps: f64,
    pub bytes: f64,
    pub dropped: f64,
    pub reconnects: u32,
    /// WebRTC outputs: connected peers.
    pub peers: Option<u32>,
    /// Live outputs that adapt: the video bitrate asked for and the path estimate, kbit/s.
    pub target_kbps: Option<f64>,
    pub estimate_kbps: Option<f64>,
    /// Media waiting in the output's queue, ms (a growing queue: the network is not draining).
    pub buffered_ms: f64,
}

/// The encode's adaptation level (same as `adaptation` in `castline --stats json`).
#[napi(object)]
pub struct Adaptation {
    /// 0 = as configured; higher = lower frame rate (CPU pressure).
    pub level: u32,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    /// `cpu` while CPU pressure holds the main encode down, else undefined.
    pub reason: Option<String>,
    /// The lower tier congested viewers get, while one runs.
    pub low_tier: Option<LowTier>,
}

#[napi(object)]
pub struct LowTier {
    pub level: u32,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    pub target_kbps: f64,
    /// `bandwidth`, `loss`, `buffer` or `cpu`.
    pub reason: Option<String>,
}

/// Once-a-second statistics.
#[napi(object)]
pub struct Stats {
    pub time_s: f64,
    pub fps: f64,
    /// Zero-hertz: the picture is still and only keep-alive frames are encoded.
    pub encoder_idle: bool,
    pub encode_ms: f64,
    pub encode_ms_p95: f64,
    pub bitrate_mbps: f64,
    pub frames_encoded: f64,
    pub keyframes: f64,
    pub dropped_capture: f64,
    pub dropped_encode_queue: f64,
    pub dropped_output: f64,
    /// Frames captured so far (new pictures and repeats).
    pub frames_captured: f64,
    /// Audio packets encoded so far (0 without audio; audio is never dropped).
    pub audio_packets: f64,
    pub outputs: Vec<OutputStats>,
    pub adaptation: Adaptation,
    /// Every stage's health verdict (`capture`, `encode`, `audio`, each output).
    pub health: Vec<StageHealth>,
    /// The full snapshot as JSON (same object as `castline --stats json`).
    pub json: String,
}

/// One stage's health verdict.
#[napi(object)]
pub struct StageHealth {
    pub stage: String,
    /// `ok`, `degraded` or `failing`.
    pub state: String,
    /// Failures in the current window.
    pub failures: u32,
    pub last_reason: Option<String>,
}

/// Lifecycle events (`started` with the viewer URL of `serve://` targets, `stopping`).
#[napi(object)]
pub struct EngineEvent {
    pub name: String,
    pub detail: Option<String>,
}

fn err(code: &str, message: impl std::fmt::Display) -> Error {
    // index.js turns "castline:CODE:MESSAGE" into an Error with .code and .fatal.
    Error::new(Status::GenericFailure, format!("castline:{code}:{message}"))
}

/// The message of an `err(...)` without its "castline:CODE:" prefix.
fn strip_code(e: &Error) -> String {
    let r = e.reason.as_str();
    r.strip_prefix("castline:")
        .and_then(|r| r.split_once(':'))
        .map(|(_, m)| m.to_string())
        .unwrap_or_else(|| r.to_string())
}

fn classify(e: &castline::Error) -> (String, bool) {
    use castline::Error as E;
    match e {
        E::Output(o) => (
            o.kind().to_string(),
            o.class() == castline::ErrorClass::Fatal,
        ),
        E::Capture(_) => ("capture_failed".into(), true),
        E::Encode(castline::error::EncodeError::InvalidSetting(_)) => {
            ("invalid_option".into(), true)
        }
        E::Encode(_) => ("encoder_failed".into(), true),
        E::Convert(_) => ("convert_failed".into(), true),
        E::Config(_) => ("invalid_option".into(), true),
        E::Internal(_) => ("internal".into(), true),
    }
}

#[napi]
pub fn list_displays() -> Result<Vec<Display>> {
    let d = x11::list_displays().map_err(|e| err("capture_failed", e))?;
    Ok(d.into_iter()
        .map(|m| Display {
            index: m.index as u32,
            name: m.name,
            width: m.width,
            height: m.height,
            x: m.x,
            y: m.y,
            primary: m.primary,
        })
        .collect())
}

#[napi]
pub fn list_windows() -> Result<Vec<Window>> {
    let w = x11::list_windows().map_err(|e| err("capture_failed", e))?;
    Ok(w.into_iter()
        .map(|w| Window {
            handle: w.id,
            title: w.title,
            process_name: w.process_name,
            pid: w.pid,
            width: w.width,
            height: w.height,
        })
        .collect())
}

#[napi]
pub fn list_audio() -> Result<AudioDevices> {
    let d = pulse::list_audio().map_err(|e| err("audio_unavailable", e))?;
    Ok(AudioDevices {
        sources: d
            .sources
            .into_iter()
            .map(|s| AudioDevice {
                name: s.name,
                description: s.description,
                default: s.default,
                monitor_of: s.monitor_of,
            })
            .collect(),
        sinks: d
            .sinks
            .into_iter()
            .map(|s| AudioDevice {
                name: s.name,
                description: s.description,
                default: s.default,
                monitor_of: None,
            })
            .collect(),
        applications: d
            .applications
            .into_iter()
            .map(|a| AudioApplication {
                name: a.name,
                pid: a.pid,
                binary: a.binary,
                sink: a.sink,
            })
            .collect(),
    })
}

/// Turn JS options into a pipeline configuration; every mistake is an `invalid_option`.
/// One target as the options (and `addOutput`) take it; `token` goes to the targets that take
/// one (the WHIP bearer, the `serve://` viewer token, a LiveKit access token).
fn output_of(target: &str, token: Option<String>) -> Result<OutputSpec> {
    let bad = |m: String| err("invalid_option", m);
    let t = target.trim();
    let lower = t.to_ascii_lowercase();
    let mut output = if lower.starts_with("whip+") {
        OutputSpec::Whip {
            url: t.to_string(),
            bearer: token.clone(),
        }
    } else {
        t.parse::<OutputSpec>().map_err(|e| bad(e.to_string()))?
    };
    match (&mut output, token) {
        (OutputSpec::Serve(s), Some(tok)) => s.token = Some(tok),
        (OutputSpec::LiveKit(l), Some(tok)) => {
            l.auth = Some(castline::output::livekit::LiveKitAuth::Token(tok))
        }
        (OutputSpec::LiveKit(_), None) => {
            return Err(bad(
                "a LiveKit target needs token (or use serverUrl + token)".into(),
            ))
        }
        _ => {}
    }
    Ok(output)
}

/// `targetType` / `targetId` as a source.
fn source_of(target_type: Option<&str>, target_id: Option<u32>) -> Result<SourceSpec> {
    let bad = |m: String| err("invalid_option", m);
    Ok(match target_type.unwrap_or("primary") {
        "primary" | "screen" => SourceSpec::Screen,
        "display" => {
            SourceSpec::Display(target_id.ok_or_else(|| {
                bad("targetType 'display' needs targetId (a display index)".into())
            })? as usize)
        }
        "window" => {
            SourceSpec::Window(target_id.ok_or_else(|| {
                bad("targetType 'window' needs targetId (a window handle)".into())
            })?)
        }
        "testsrc" => SourceSpec::TestSrc,
        other => {
            return Err(bad(format!(
                "unknown targetType '{other}' (primary, display, window or testsrc)"
            )))
        }
    })
}

fn config(o: &ShareOptions) -> Result<PipelineConfig> {
    let bad = |m: String| err("invalid_option", m);
    let mut outputs = Vec::new();
    if let Some(url) = o.server_url.as_deref() {
        let mut t = castline::output::livekit::LiveKitTarget::parse(url.trim())
            .map_err(|e| bad(e.to_string()))?;
        let token = o
            .token
            .clone()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| bad("serverUrl needs token (a LiveKit access token)".into()))?;
        t.auth = Some(castline::output::livekit::LiveKitAuth::Token(
            token.trim().to_string(),
        ));
        outputs.push(OutputSpec::LiveKit(t));
    }
    if let Some(target) = o.target.as_deref() {
        let token = o.token.clone().filter(|_| o.server_url.is_none());
        outputs.push(output_of(target, token)?);
    }
    if outputs.is_empty() {
        return Err(bad(
            "nothing to publish to: give target, or serverUrl + token (LiveKit)".into(),
        ));
    }
    let webrtc = outputs.iter().any(|o| o.is_webrtc());
    let source = source_of(o.target_type.as_deref(), o.target_id)?;
    let fps = o.fps.unwrap_or(30);
    if !(1..=240).contains(&fps) {
        return Err(bad(format!("fps {fps} out of range 1–240")));
    }
    let bitrate = o.bitrate.unwrap_or(5e6);
    if !(10e3..=500e6).contains(&bitrate) || !bitrate.is_finite() {
        return Err(bad(format!(
            "bitrate {bitrate} out of range (10k–500M bit/s)"
        )));
    }
    let keyint = o.keyframe_interval.unwrap_or(2.0);
    if !(keyint > 0.0 && keyint <= 60.0) {
        return Err(bad(format!(
            "keyframeInterval {keyint} out of range (0–60 s)"
        )));
    }
    let kind = match o.encoder.as_deref() {
        None => EncoderKind::Auto,
        Some(e) => e.parse().map_err(bad)?,
    };
    let size = match o.size.as_deref() {
        None => None,
        Some(s) => {
            let (w, h) = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                .ok_or_else(|| bad(format!("invalid size '{s}' (WxH)")))?;
            if w % 2 != 0 || h % 2 != 0 || !(16..=8192).contains(&w) || !(16..=8192).contains(&h) {
                return Err(bad(format!("size '{s}': even numbers 16–8192")));
            }
            Some((w, h))
        }
    };
    let audio = if o.capture_audio.unwrap_or(false) {
        let mode = o.audio_mode.as_deref().unwrap_or("system").trim();
        // A bare process id (the Electron screen-share API's form) is one application's audio.
        let mode = if !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_digit()) {
            format!("app:{mode}")
        } else {
            mode.to_string()
        };
        let sources: Vec<AudioSourceSpec> = parse_audio_sources(&mode).map_err(bad)?;
        let bitrate = match o.audio_bitrate {
            None => None,
            Some(b) if b.is_finite() && (16e3..=512e3).contains(&b) => Some(b as u64),
            Some(b) => {
                return Err(bad(format!(
                    "audioBitrate {b} out of range (16k–512k bit/s)"
                )))
            }
        };
        AudioConfig {
            sources,
            bitrate,
            ..AudioConfig::default()
        }
    } else {
        AudioConfig::default()
    };
    Ok(PipelineConfig {
        source,
        source_options: SourceOptions {
            show_cursor: o.show_cursor.unwrap_or(true),
            ..SourceOptions::default()
        },
        fps,
        size,
        encoder: EncoderSettings {
            kind,
            bitrate: bitrate as u64,
            preset: o.preset.clone().unwrap_or_else(|| "veryfast".into()),
            profile: match o.profile.as_deref() {
                Some(p) => p.parse().map_err(bad)?,
                None if webrtc => H264Profile::Baseline,
                None => H264Profile::High,
            },
            keyint_s: keyint,
            ..EncoderSettings::default()
        },
        outputs,
        audio,
        adapt: castline::adapt::AdaptConfig {
            enabled: o.adapt.unwrap_or(true),
            min_fps: o.min_fps.unwrap_or(15).clamp(1, 240),
            min_bitrate: o
                .min_bitrate
                .map(|b| b.max(10_000.0) as u64)
                .unwrap_or(150_000),
            ..castline::adapt::AdaptConfig::default()
        },
        zero_hertz: o
            .zero_hertz
            .unwrap_or(true)
            .then(|| castline::cadence::CadenceConfig {
                idle_fps: o.idle_fps.unwrap_or(1.0).clamp(0.1, 30.0),
                ..castline::cadence::CadenceConfig::default()
            }),
        vfr_recordings: o.vfr.unwrap_or(false),
        health: castline::health::HealthConfig {
            window: Duration::from_secs_f64(o.health_window_s.unwrap_or(30.0).clamp(1.0, 3600.0)),
            max_failures: o.health_max_failures.unwrap_or(3).max(1),
            stop_on_unstable: o.stop_on_unstable.unwrap_or(false),
            ..castline::health::HealthConfig::default()
        },
        ..PipelineConfig::default()
    })
}

fn stats_of(s: &StatsSnapshot) -> Stats {
    Stats {
        time_s: s.time_s,
        fps: s.encoded_fps,
        encoder_idle: s.encoder_idle,
        encode_ms: s.encode_ms_avg,
        encode_ms_p95: s.encode_ms_p95,
        bitrate_mbps: s.bitrate_kbps / 1000.0,
        frames_encoded: s.frames_encoded as f64,
        keyframes: s.keyframes as f64,
        dropped_capture: s.drops.capture as f64,
        dropped_encode_queue: s.drops.encode_queue as f64,
        dropped_output: s.drops.output as f64,
        frames_captured: s.frames_captured as f64,
        audio_packets: s.audio.as_ref().map(|a| a.packets).unwrap_or(0) as f64,
        outputs: s
            .outputs
            .iter()
            .map(|o| OutputStats {
                id: o.id as u32,
                name: o.name.clone(),
                state: serde_state(o.state),
                bitrate_mbps: o.kbps / 1000.0,
                bytes: o.bytes as f64,
                dropped: o.dropped as f64,
                reconnects: o.reconnects,
                peers: o
                    .peers
                    .as_ref()
                    .map(|p| p.iter().filter(|p| p.connected).count() as u32),
                target_kbps: o.target_kbps,
                estimate_kbps: o.estimate_kbps,
                buffered_ms: o.buffered_ms,
            })
            .collect(),
        adaptation: adaptation_of(&s.adaptation),
        health: s
            .health
            .iter()
            .map(|h| StageHealth {
                stage: h.stage.clone(),
                state: match h.state {
                    castline::health::HealthState::Ok => "ok",
                    castline::health::HealthState::Degraded => "degraded",
                    castline::health::HealthState::Failing => "failing",
                }
                .into(),
                failures: h.failures as u32,
                last_reason: h.last_reason.clone(),
            })
            .collect(),
        json: castline_json(s),
    }
}

fn adaptation_of(a: &castline::pipeline::tiers::AdaptationReport) -> Adaptation {
    Adaptation {
        level: a.level as u32,
        fps: a.fps,
        width: a.width,
        height: a.height,
        reason: a.reason.map(|r| r.as_str().to_string()),
        low_tier: a.low_tier.as_ref().map(|l| LowTier {
            level: l.level as u32,
            fps: l.fps,
            width: l.width,
            height: l.height,
            target_kbps: l.target_kbps,
            reason: l.reason.map(|r| r.as_str().to_string()),
        }),
    }
}

fn castline_json(s: &StatsSnapshot) -> String {
    // The snapshot is plain data: serialization cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

fn serde_state(s: castline::pipeline::stats::OutputState) -> String {
    use castline::pipeline::stats::OutputState as S;
    match s {
        S::Running => "running",
        S::Reconnecting => "reconnecting",
        S::Finished => "finished",
        S::Failed => "failed",
    }
    .into()
}

/// The JS callbacks of a session.
struct Callbacks {
    on_error: Callback<EngineError>,
    on_stopped: Callback<()>,
    on_stats: Callback<Stats>,
    on_event: Callback<EngineEvent>,
}

/// What a running session shares with its monitor thread.
struct Running {
    stop: Arc<AtomicBool>,
    keyframe: Arc<AtomicBool>,
    monitor: Option<JoinHandle<()>>,
    /// Set once the pipeline has started.
    control: Arc<Mutex<Option<Control>>>,
}

#[derive(Default)]
struct Inner {
    running: Mutex<Option<Running>>,
    /// True from start() until the monitor thread has reported the stop.
    active: AtomicBool,
}

impl Inner {
    /// Ask the engine to stop and wait until recordings are finalized. Idempotent.
    fn stop_and_join(&self) {
        let monitor = {
            let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match r.as_mut() {
                Some(run) => {
                    run.stop.store(true, Ordering::SeqCst);
                    run.monitor.take()
                }
                None => None,
            }
        };
        if let Some(m) = monitor {
            let _ = m.join();
        }
    }
}

/// Every session of this process, so that exit can stop them all cleanly.
static SESSIONS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
static EXIT_HOOK: std::sync::Once = std::sync::Once::new();

fn stop_all_sessions() {
    let sessions: Vec<Arc<Inner>> = SESSIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for s in sessions {
        s.stop_and_join();
    }
}

/// Stop every running engine of this process and wait until its outputs are finalized.
/// index.js calls it from `process.on('exit')`: `process.exit()` ends the process without
/// running environment cleanup hooks, so the hook below alone would leave recordings
/// fragmented.
#[napi]
pub fn stop_all() {
    stop_all_sessions();
}

/// One engine session (index.js's `Session` wraps it in an EventEmitter).
#[napi]
pub struct NativeSession {
    options: ShareOptions,
    inner: Arc<Inner>,
}

#[napi]
impl NativeSession {
    /// Validates the options (throws `invalid_option`).
    #[napi(constructor)]
    pub fn new(options: ShareOptions) -> Result<Self> {
        config(&options)?;
        let inner = Arc::new(Inner::default());
        let mut all = SESSIONS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&inner));
        Ok(Self { options, inner })
    }

    /// Start the engine; resolves once capture, encoder and output are open (rejects with a
    /// classified error otherwise). Callbacks run on the JS thread.
    #[napi(
        ts_args_type = "onError: (error: EngineError) => void, onStopped: () => void, onStats: (stats: Stats) => void, onEvent: (event: EngineEvent) => void",
        ts_return_type = "Promise<void>"
    )]
    pub fn start<'env>(
        &self,
        env: &'env Env,
        on_error: Callback<EngineError>,
        on_stopped: Callback<()>,
        on_stats: Callback<Stats>,
        on_event: Callback<EngineEvent>,
    ) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred::<(), _>()?;
        let callbacks = Callbacks {
            on_error,
            on_stopped,
            on_stats,
            on_event,
        };
        self.launch(
            env,
            callbacks,
            Box::new(move |r| match r {
                Ok(()) => deferred.resolve(|_| Ok(())),
                Err(e) => deferred.reject(e),
            }),
        )?;
        Ok(promise)
    }

    /// `start`, blocking the calling thread until the engine runs (or throwing the classified
    /// error): for the synchronous recorder/streamer API (`VideoAudioRecorder.start()`).
    #[napi(
        ts_args_type = "onError: (error: EngineError) => void, onStopped: () => void, onStats: (stats: Stats) => void, onEvent: (event: EngineEvent) => void"
    )]
    pub fn start_sync(
        &self,
        env: &Env,
        on_error: Callback<EngineError>,
        on_stopped: Callback<()>,
        on_stats: Callback<Stats>,
        on_event: Callback<EngineEvent>,
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let callbacks = Callbacks {
            on_error,
            on_stopped,
            on_stats,
            on_event,
        };
        self.launch(
            env,
            callbacks,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv()
            .unwrap_or_else(|_| Err(err("internal", "the engine thread ended before starting")))
    }

    /// `stop`, blocking until recordings are finalized.
    #[napi]
    pub fn stop_sync(&self) {
        self.inner.stop_and_join();
    }

    /// The video encoder in use (`libx264`, `h264_vaapi`, …), once running.
    #[napi]
    pub fn codec_name(&self) -> Option<String> {
        self.control().ok().map(|c| c.encoder_name())
    }

    /// Start the engine thread; `started` is told whether the pipeline opened.
    fn launch(
        &self,
        env: &Env,
        callbacks: Callbacks,
        started: Box<dyn FnOnce(Result<()>) + Send>,
    ) -> Result<()> {
        let Callbacks {
            on_error,
            on_stopped,
            on_stats,
            on_event,
        } = callbacks;
        EXIT_HOOK.call_once(|| {
            // Process exit (or worker teardown): stop every engine so recordings are finalized.
            let _ = env.add_env_cleanup_hook((), |_| stop_all_sessions());
        });
        let cfg = config(&self.options)?;
        if self.inner.active.swap(true, Ordering::SeqCst) {
            started(Err(err(
                "already_running",
                "this session is already running",
            )));
            return Ok(());
        }
        let inner = self.inner.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let keyframe = Arc::new(AtomicBool::new(false));
        let (stop2, keyframe2) = (stop.clone(), keyframe.clone());
        let control = Arc::new(Mutex::new(None));
        let control2 = control.clone();
        // The monitor handle is stored before the thread can finish: hold the lock over spawn.
        let mut guard = inner.running.lock().unwrap_or_else(|p| p.into_inner());
        let inner2 = inner.clone();
        let monitor = std::thread::Builder::new()
            .name("castline-node".into())
            .spawn(move || {
                let pipeline = match Pipeline::start(cfg) {
                    Ok(p) => p,
                    Err(e) => {
                        let (code, _) = classify(&e);
                        // Not running any more before the promise settles.
                        inner2.active.store(false, Ordering::SeqCst);
                        started(Err(err(&code, &e)));
                        return;
                    }
                };
                *control2.lock().unwrap_or_else(|p| p.into_inner()) = Some(pipeline.control());
                started(Ok(()));
                let detail = pipeline.endpoints().first().cloned();
                on_event.call(
                    EngineEvent {
                        name: "started".into(),
                        detail,
                    },
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
                let engine_stop = pipeline.stop_handle();
                let mut last = Instant::now();
                let mut reported = std::collections::HashSet::new();
                // Health verdicts as events, detail: the verdict as JSON.
                let health_events = |pipeline: &Pipeline| {
                    for e in pipeline.take_health_events() {
                        on_event.call(
                            EngineEvent {
                                name: e.name().into(),
                                detail: Some(e.to_json()),
                            },
                            ThreadsafeFunctionCallMode::NonBlocking,
                        );
                    }
                };
                while !pipeline.is_finished() {
                    std::thread::sleep(Duration::from_millis(20));
                    health_events(&pipeline);
                    if stop2.load(Ordering::SeqCst) {
                        engine_stop.store(true, Ordering::SeqCst);
                    }
                    if keyframe2.swap(false, Ordering::SeqCst) {
                        pipeline.request_keyframe();
                    }
                    if last.elapsed() >= Duration::from_secs(1) {
                        last = Instant::now();
                        let s = pipeline.sample_stats();
                        // Output failures while running (the others keep going).
                        for o in &s.outputs {
                            if let Some(e) = &o.error {
                                let key = format!("{}:{}", o.name, e.message);
                                if reported.insert(key) {
                                    on_error.call(
                                        EngineError {
                                            code: e.kind.to_string(),
                                            message: e.message.clone(),
                                            fatal: e.class == castline::ErrorClass::Fatal,
                                        },
                                        ThreadsafeFunctionCallMode::NonBlocking,
                                    );
                                }
                            }
                        }
                        on_stats.call(stats_of(&s), ThreadsafeFunctionCallMode::NonBlocking);
                    }
                }
                health_events(&pipeline);
                on_event.call(
                    EngineEvent {
                        name: "stopping".into(),
                        detail: None,
                    },
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
                match pipeline.wait() {
                    Ok(summary) => {
                        for o in summary.outputs.iter().filter_map(|o| o.as_ref().err()) {
                            let key = o.to_string();
                            if !reported.iter().any(|k| k.ends_with(&key)) {
                                on_error.call(
                                    EngineError {
                                        code: o.kind().into(),
                                        message: key,
                                        fatal: o.class() == castline::ErrorClass::Fatal,
                                    },
                                    ThreadsafeFunctionCallMode::NonBlocking,
                                );
                            }
                        }
                    }
                    Err(e) => {
                        let (code, fatal) = classify(&e);
                        on_error.call(
                            EngineError {
                                code,
                                message: e.to_string(),
                                fatal,
                            },
                            ThreadsafeFunctionCallMode::NonBlocking,
                        );
                    }
                }
                control2.lock().unwrap_or_else(|p| p.into_inner()).take();
                inner2.active.store(false, Ordering::SeqCst);
                on_stopped.call((), ThreadsafeFunctionCallMode::NonBlocking);
            })
            .map_err(|e| err("internal", e))?;
        *guard = Some(Running {
            stop,
            keyframe,
            monitor: Some(monitor),
            control,
        });
        Ok(())
    }

    /// Stop (recordings finalized); resolves when the engine has ended. Idempotent, and safe
    /// to call from any callback.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred::<(), _>()?;
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("castline-node-stop".into())
            .spawn(move || {
                inner.stop_and_join();
                deferred.resolve(|_| Ok(()));
            })
            .map_err(|e| err("internal", e))?;
        Ok(promise)
    }

    /// Make the next encoded frame a keyframe (IDR).
    #[napi]
    pub fn force_keyframe(&self) {
        if let Some(r) = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            r.keyframe.store(true, Ordering::SeqCst);
        }
    }

    /// The running pipeline's control handle, or `not_running`.
    fn control(&self) -> Result<Control> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|r| r.control.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .ok_or_else(|| err("not_running", "the session is not running"))
    }

    /// Run a control call off the JS thread (opening a source or an output can take a moment);
    /// the promise settles with its result.
    fn control_call<'env, T, F>(&self, env: &'env Env, f: F) -> Result<Object<'env>>
    where
        T: ToNapiValue + Send + 'static,
        F: FnOnce(Control) -> std::result::Result<T, castline::Error> + Send + 'static,
    {
        let (deferred, promise) = env.create_deferred::<T, _>()?;
        let control = match self.control() {
            Ok(c) => c,
            Err(e) => {
                deferred.reject(e);
                return Ok(promise);
            }
        };
        std::thread::Builder::new()
            .name("castline-node-control".into())
            .spawn(move || match f(control) {
                Ok(v) => deferred.resolve(move |_| Ok(v)),
                Err(e) => {
                    let (code, _) = classify(&e);
                    deferred.reject(err(&code, e));
                }
            })
            .map_err(|e| err("internal", e))?;
        Ok(promise)
    }

    /// Capture another display, window or the test picture; outputs keep running.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_source<'env>(&self, env: &'env Env, source: SourceChoice) -> Result<Object<'env>> {
        let spec = source_of(source.target_type.as_deref(), source.target_id);
        self.control_call(env, move |c| {
            let spec = spec.map_err(|e| castline::Error::Config(strip_code(&e)))?;
            c.set_source(spec)
        })
    }

    /// Open another target while running; resolves with its id.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn add_output<'env>(
        &self,
        env: &'env Env,
        target: String,
        token: Option<String>,
    ) -> Result<Object<'env>> {
        let spec = output_of(&target, token);
        self.control_call(env, move |c| {
            let spec = spec.map_err(|e| castline::Error::Config(strip_code(&e)))?;
            c.add_output(spec).map(|id| id as u32)
        })
    }

    /// Stop one target (a recording is finalized before this resolves).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn remove_output<'env>(&self, env: &'env Env, id: u32) -> Result<Object<'env>> {
        self.control_call(env, move |c| c.remove_output(id as u64).map(|_| ()))
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_bitrate<'env>(&self, env: &'env Env, bps: f64) -> Result<Object<'env>> {
        self.control_call(env, move |c| {
            if !bps.is_finite() || bps < 0.0 {
                return Err(castline::Error::Config(format!("invalid bitrate {bps}")));
            }
            c.set_bitrate(bps as u64)
        })
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_fps<'env>(&self, env: &'env Env, fps: f64) -> Result<Object<'env>> {
        self.control_call(env, move |c| {
            if !fps.is_finite() || fps.fract() != 0.0 || !(0.0..=1000.0).contains(&fps) {
                return Err(castline::Error::Config(format!("invalid fps {fps}")));
            }
            c.set_fps(fps as u32)
        })
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_audio_muted<'env>(&self, env: &'env Env, muted: bool) -> Result<Object<'env>> {
        self.control_call(env, move |c| c.set_audio_muted(muted))
    }

    #[napi]
    pub fn is_running(&self) -> bool {
        self.inner.active.load(Ordering::SeqCst)
    }
}

impl Drop for NativeSession {
    /// A session collected while running stops its engine cleanly (recording finalized).
    fn drop(&mut self) {
        self.inner.stop_and_join();
    }
}
