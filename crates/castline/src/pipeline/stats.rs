//! Counters shared by the pipeline threads, and the once-a-second snapshot built from them.
//!
//! Threads only bump atomics (and push one encode duration per frame); the snapshot takes deltas,
//! so reading stats never blocks the media path for more than a short lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::queue::PacketQueue;
use super::tiers::AdaptationReport;
use crate::adapt::TierDemand;
use crate::encode::AudioCodec;
use crate::error::ErrorReport;
use crate::mix::{AudioInput, SAMPLE_RATE};
use crate::output::LinkReport;

#[derive(Default)]
pub struct PipelineCounters {
    /// Frames handed to the encoder queue (new pictures and repeats).
    pub frames_captured: AtomicU64,
    /// Of those, frames whose content changed since the previous one.
    pub frames_changed: AtomicU64,
    /// Frame-rate ticks the capture thread missed because a grab overran.
    pub capture_late: AtomicU64,
    pub frames_encoded: AtomicU64,
    pub encoded_bytes: AtomicU64,
    pub keyframes: AtomicU64,
    /// Encode (convert + scale + encode) durations in µs since the last snapshot.
    pub encode_us: Mutex<Vec<u32>>,
    /// Times the source was restarted (an ffmpeg child that exited) so far.
    pub source_restarts: AtomicU64,
    /// Stages (`capture`, `encode`, `audio`) that ended on an error, with it.
    pub stage_errors: Mutex<Vec<(&'static str, String)>>,
}

impl PipelineCounters {
    /// `stage` ended for good on `error` (the health verdict reads it).
    pub fn stage_failed(&self, stage: &'static str, error: &impl std::fmt::Display) {
        self.stage_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((stage, error.to_string()));
    }
}

/// State of one output, as reported in stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputState {
    Running,
    Reconnecting,
    Finished,
    Failed,
}

/// Counters of the audio thread (mixer + audio encoders).
#[derive(Default)]
pub struct AudioCounters {
    /// Mixer frames produced (each the mixer's frame size).
    pub frames_mixed: AtomicU64,
    pub samples_mixed: AtomicU64,
    /// Frames mixed later than their schedule by more than one frame (thread starved).
    pub late_frames: AtomicU64,
    /// Mixer frames where the sum had to be clamped (inputs too loud together).
    pub clipped_frames: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

/// What the stats read about audio: the thread's counters and every input's lanes.
pub struct AudioStats {
    pub counters: Arc<AudioCounters>,
    pub inputs: Vec<Arc<AudioInput>>,
}

pub struct OutputCounters {
    /// The output's id in its pipeline (see `Control`).
    pub id: u64,
    pub name: String,
    /// Recordings: the file (one session writes a file once at a time).
    pub path: Option<std::path::PathBuf>,
    /// Keeps the size it started with (recordings, RTMP); others follow the source's size.
    pub fixed_size: bool,
    /// Takes a variable frame rate (zero-hertz may apply).
    pub vfr: bool,
    /// Added while running and no video sent yet: audio waits too, so it starts on a keyframe.
    pub awaiting_video: AtomicBool,
    /// Which audio encoder feeds this output (None when the run has no audio).
    pub audio: Option<AudioCodec>,
    pub bytes: AtomicU64,
    pub packets: AtomicU64,
    pub queue: PacketQueue,
    /// Packets the output itself did not send (disconnected, waiting for a keyframe).
    pub skipped: AtomicU64,
    pub failed: AtomicBool,
    pub finished: AtomicBool,
    pub link: Mutex<Option<LinkReport>>,
    pub error: Mutex<Option<ErrorReport>>,
    /// WebRTC outputs: the hub whose peers are reported.
    pub hub: Option<crate::webrtc::Hub>,
    /// Plain RTP outputs: the receiver's RTCP feedback.
    pub rtcp: Option<Arc<Mutex<crate::output::rtp::RtcpReport>>>,
    /// What the output asks of the encode tiers (recordings: always the main one).
    pub demand: Arc<TierDemand>,
}

impl OutputCounters {
    pub fn new(name: String, queue: PacketQueue) -> Self {
        Self {
            id: 0,
            name,
            path: None,
            fixed_size: false,
            vfr: true,
            awaiting_video: AtomicBool::new(false),
            audio: None,
            bytes: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            queue,
            skipped: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            link: Mutex::new(None),
            error: Mutex::new(None),
            hub: None,
            rtcp: None,
            demand: Arc::new(TierDemand::fixed()),
        }
    }

    pub fn state(&self) -> OutputState {
        if self.failed.load(Ordering::Relaxed) {
            OutputState::Failed
        } else if self.finished.load(Ordering::Relaxed) {
            OutputState::Finished
        } else if self
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|l| l.reconnecting)
        {
            OutputState::Reconnecting
        } else {
            OutputState::Running
        }
    }
}

/// One second of pipeline activity. Printed as one JSON object per line by `--stats json`.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// Seconds since the pipeline started.
    pub time_s: f64,
    pub capture_fps: f64,
    pub encoded_fps: f64,
    /// Zero-hertz: the picture is still and only keep-alive frames are encoded (or no output
    /// takes the encode at all).
    pub encoder_idle: bool,
    pub encode_ms_avg: f64,
    pub encode_ms_p95: f64,
    /// Encoder output rate over the last interval.
    pub bitrate_kbps: f64,
    pub frames_encoded: u64,
    /// Frames captured so far (new pictures and repeats).
    pub frames_captured: u64,
    /// Keyframes encoded so far (interval, forced by the API, or requested by an output).
    pub keyframes: u64,
    /// Share of captured frames that had new content over the last interval (0..1).
    pub changed_ratio: f64,
    pub queues: QueueDepths,
    pub drops: Drops,
    pub outputs: Vec<OutputSnapshot>,
    /// Adaptive quality: the main tier's level (CPU) and the low tier while one runs.
    pub adaptation: AdaptationReport,
    /// Absent when the run has no audio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSnapshot>,
    /// Every stage's health verdict (see [`crate::health`]).
    pub health: Vec<crate::health::StageHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioSnapshot {
    /// Audio produced so far, seconds (follows the video's media time).
    pub media_s: f64,
    pub bitrate_kbps: f64,
    pub frames_mixed: u64,
    /// Audio packets encoded so far (every audio encoder; never dropped).
    pub packets: u64,
    pub late_frames: u64,
    pub clipped_frames: u64,
    pub sources: Vec<AudioSourceSnapshot>,
}

/// One input (`system`, `mic`, `app:NAME`), summed over its streams; cumulative counts.
#[derive(Debug, Clone, Serialize)]
pub struct AudioSourceSnapshot {
    pub name: String,
    /// A stream is capturing (false: device unplugged, application not playing, server gone).
    pub live: bool,
    pub streams: usize,
    pub captured_s: f64,
    /// Time filled with silence because a live stream had no data in time.
    pub underrun_ms: f64,
    /// Time of samples that arrived after their mix time (dropped).
    pub late_ms: f64,
    pub resyncs: u64,
    /// Peak level of the last mixed frame, dBFS (-100 = silence).
    pub peak_dbfs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueDepths {
    /// Raw frames waiting for the encoder.
    pub raw: usize,
}

/// Cumulative drops, split by the stage that dropped.
#[derive(Debug, Clone, Serialize)]
pub struct Drops {
    /// Frame ticks the capture missed (grab slower than the frame interval).
    pub capture: u64,
    /// Raw frames evicted from the encoder queue (encoder slower than capture).
    pub encode_queue: u64,
    /// Encoded packets dropped before reaching an output, summed over outputs.
    pub output: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputSnapshot {
    /// The id `Control::remove_output` takes (the configured outputs are 0, 1, …).
    pub id: u64,
    pub name: String,
    pub state: OutputState,
    pub kbps: f64,
    pub bytes: u64,
    pub queue_depth: usize,
    pub buffered_ms: f64,
    /// Packets dropped before sending: by the queue policy plus those skipped while
    /// disconnected or waiting for a keyframe.
    pub dropped: u64,
    pub reconnects: u32,
    /// Live outputs that adapt: the video bitrate asked for (lowest over the output's peers)
    /// and the path estimate, kbit/s; null for recordings and with `--adapt off`.
    pub target_kbps: Option<f64>,
    pub estimate_kbps: Option<f64>,
    /// The last error of this output (fatal, or transient while it reconnects).
    pub error: Option<ErrorReport>,
    /// WebRTC outputs: one entry per peer (viewer, or the WHIP session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<crate::webrtc::PeerReport>>,
    /// WebRTC outputs: keyframe requests from peers passed to the encoder (rate-limited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyframe_requests: Option<u64>,
    /// Plain RTP outputs: RTCP feedback (loss, jitter, RTT, PLI/FIR/NACK counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtcp: Option<crate::output::rtp::RtcpReport>,
}

/// Turns counters into per-interval snapshots.
pub struct StatsSampler {
    last_t: f64,
    last_captured: u64,
    last_changed: u64,
    last_encoded: u64,
    last_bytes: u64,
    /// (output id, bytes at the last sample).
    last_out_bytes: Vec<(u64, u64)>,
    last_audio_bytes: u64,
}

impl StatsSampler {
    pub fn new() -> Self {
        Self {
            last_t: 0.0,
            last_captured: 0,
            last_changed: 0,
            last_encoded: 0,
            last_bytes: 0,
            last_out_bytes: Vec::new(),
            last_audio_bytes: 0,
        }
    }

    pub fn sample(
        &mut self,
        time_s: f64,
        c: &PipelineCounters,
        // The raw frame queue: depth now, evictions so far.
        (raw_depth, raw_dropped): (usize, u64),
        outputs: &[Arc<OutputCounters>],
        audio: Option<&AudioStats>,
        adaptation: &AdaptationReport,
    ) -> StatsSnapshot {
        let dt = (time_s - self.last_t).max(1e-3);
        let captured = c.frames_captured.load(Ordering::Relaxed);
        let changed = c.frames_changed.load(Ordering::Relaxed);
        let encoded = c.frames_encoded.load(Ordering::Relaxed);
        let bytes = c.encoded_bytes.load(Ordering::Relaxed);
        let mut times = std::mem::take(&mut *c.encode_us.lock().unwrap_or_else(|p| p.into_inner()));
        times.sort_unstable();
        let avg = if times.is_empty() {
            0.0
        } else {
            times.iter().map(|&t| t as f64).sum::<f64>() / times.len() as f64 / 1000.0
        };
        let p95 = times
            .get((times.len() * 95 / 100).min(times.len().saturating_sub(1)))
            .map(|&t| t as f64 / 1000.0)
            .unwrap_or(0.0);
        // Outputs come and go while running: the previous byte counts go by output id.
        self.last_out_bytes
            .retain(|(id, _)| outputs.iter().any(|o| o.id == *id));
        let outs = outputs
            .iter()
            .map(|o| {
                let b = o.bytes.load(Ordering::Relaxed);
                let last = match self.last_out_bytes.iter_mut().find(|(id, _)| *id == o.id) {
                    Some((_, last)) => std::mem::replace(last, b),
                    None => {
                        self.last_out_bytes.push((o.id, b));
                        0
                    }
                };
                let kbps = b.saturating_sub(last) as f64 * 8.0 / 1000.0 / dt;
                let link = o.link.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (target, estimate) = o.demand.rates();
                let kbps_of = |b: u64| round2(b as f64 / 1000.0);
                OutputSnapshot {
                    id: o.id,
                    name: o.name.clone(),
                    state: o.state(),
                    kbps: round2(kbps),
                    bytes: b,
                    queue_depth: o.queue.len(),
                    buffered_ms: round2(o.queue.buffered_us() as f64 / 1000.0),
                    dropped: o.queue.dropped() + o.skipped.load(Ordering::Relaxed),
                    reconnects: link.as_ref().map(|l| l.reconnects).unwrap_or(0),
                    target_kbps: target.map(kbps_of),
                    estimate_kbps: estimate.map(kbps_of),
                    error: o
                        .error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .or_else(|| link.and_then(|l| l.last_error)),
                    peers: o.hub.as_ref().map(|h| h.peers()),
                    keyframe_requests: o.hub.as_ref().map(|h| h.keyframes_requested()),
                    rtcp: o
                        .rtcp
                        .as_ref()
                        .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()),
                }
            })
            .collect::<Vec<_>>();
        let audio = audio.map(|a| self.audio_snapshot(a, dt));
        let d_captured = captured - self.last_captured;
        let snap = StatsSnapshot {
            time_s: round2(time_s),
            capture_fps: round2(d_captured as f64 / dt),
            encoded_fps: round2((encoded - self.last_encoded) as f64 / dt),
            encoder_idle: adaptation.encoder_idle,
            encode_ms_avg: round2(avg),
            encode_ms_p95: round2(p95),
            bitrate_kbps: round2((bytes - self.last_bytes) as f64 * 8.0 / 1000.0 / dt),
            frames_encoded: encoded,
            frames_captured: captured,
            keyframes: c.keyframes.load(Ordering::Relaxed),
            changed_ratio: if d_captured == 0 {
                0.0
            } else {
                round2((changed - self.last_changed) as f64 / d_captured as f64)
            },
            queues: QueueDepths { raw: raw_depth },
            drops: Drops {
                capture: c.capture_late.load(Ordering::Relaxed),
                encode_queue: raw_dropped,
                output: outs.iter().map(|o| o.dropped).sum(),
            },
            outputs: outs,
            adaptation: adaptation.clone(),
            audio,
            health: Vec::new(),
        };
        self.last_t = time_s;
        self.last_captured = captured;
        self.last_changed = changed;
        self.last_encoded = encoded;
        self.last_bytes = bytes;
        snap
    }
}

impl StatsSampler {
    fn audio_snapshot(&mut self, a: &AudioStats, dt: f64) -> AudioSnapshot {
        let c = &a.counters;
        let bytes = c.bytes.load(Ordering::Relaxed);
        let kbps = (bytes - self.last_audio_bytes) as f64 * 8.0 / 1000.0 / dt;
        self.last_audio_bytes = bytes;
        let ms = |frames: u64| round2(frames as f64 * 1000.0 / SAMPLE_RATE as f64);
        let sources = a
            .inputs
            .iter()
            .map(|input| {
                let lanes = input.lanes();
                let sum = |f: &dyn Fn(&crate::mix::LaneCounters) -> &AtomicU64| {
                    lanes
                        .iter()
                        .map(|l| f(&l.counters).load(Ordering::Relaxed))
                        .sum::<u64>()
                };
                let peak = lanes
                    .iter()
                    .map(|l| l.counters.peak_ppm.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0) as f64
                    / 1e6;
                AudioSourceSnapshot {
                    name: input.name.clone(),
                    live: lanes.iter().any(|l| l.is_live()),
                    streams: lanes.iter().filter(|l| l.is_live()).count(),
                    captured_s: round2(ms(sum(&|c| &c.captured)) / 1000.0),
                    underrun_ms: ms(sum(&|c| &c.underrun)),
                    late_ms: ms(sum(&|c| &c.late)),
                    resyncs: sum(&|c| &c.resyncs),
                    peak_dbfs: if peak > 1e-5 {
                        round2(20.0 * peak.log10())
                    } else {
                        -100.0
                    },
                }
            })
            .collect();
        AudioSnapshot {
            media_s: round2(c.samples_mixed.load(Ordering::Relaxed) as f64 / SAMPLE_RATE as f64),
            bitrate_kbps: round2(kbps),
            frames_mixed: c.frames_mixed.load(Ordering::Relaxed),
            packets: c.packets.load(Ordering::Relaxed),
            late_frames: c.late_frames.load(Ordering::Relaxed),
            clipped_frames: c.clipped_frames.load(Ordering::Relaxed),
            sources,
        }
    }
}

impl Default for StatsSampler {
    fn default() -> Self {
        Self::new()
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
