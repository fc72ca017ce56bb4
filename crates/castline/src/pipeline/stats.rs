//! Counters shared by the pipeline threads, and the once-a-second snapshot built from them.
//!
//! Threads only bump atomics (and push one encode duration per frame); the snapshot takes deltas,
//! so reading stats never blocks the media path for more than a short lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::queue::PacketQueue;
use crate::error::ErrorReport;
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

pub struct OutputCounters {
    pub name: String,
    pub bytes: AtomicU64,
    pub packets: AtomicU64,
    pub queue: PacketQueue,
    /// Packets the output itself did not send (disconnected, waiting for a keyframe).
    pub skipped: AtomicU64,
    pub failed: AtomicBool,
    pub finished: AtomicBool,
    pub link: Mutex<Option<LinkReport>>,
    pub error: Mutex<Option<ErrorReport>>,
}

impl OutputCounters {
    pub fn new(name: String, queue: PacketQueue) -> Self {
        Self {
            name,
            bytes: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            queue,
            skipped: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            link: Mutex::new(None),
            error: Mutex::new(None),
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
    pub encode_ms_avg: f64,
    pub encode_ms_p95: f64,
    /// Encoder output rate over the last interval.
    pub bitrate_kbps: f64,
    pub frames_encoded: u64,
    /// Keyframes encoded so far (interval, forced by the API, or requested by an output).
    pub keyframes: u64,
    /// Share of captured frames that had new content over the last interval (0..1).
    pub changed_ratio: f64,
    pub queues: QueueDepths,
    pub drops: Drops,
    pub outputs: Vec<OutputSnapshot>,
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
    /// The last error of this output (fatal, or transient while it reconnects).
    pub error: Option<ErrorReport>,
}

/// Turns counters into per-interval snapshots.
pub struct StatsSampler {
    last_t: f64,
    last_captured: u64,
    last_changed: u64,
    last_encoded: u64,
    last_bytes: u64,
    last_out_bytes: Vec<u64>,
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
        }
    }

    pub fn sample(
        &mut self,
        time_s: f64,
        c: &PipelineCounters,
        raw_depth: usize,
        raw_dropped: u64,
        outputs: &[Arc<OutputCounters>],
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
        self.last_out_bytes.resize(outputs.len(), 0);
        let outs = outputs
            .iter()
            .zip(self.last_out_bytes.iter_mut())
            .map(|(o, last)| {
                let b = o.bytes.load(Ordering::Relaxed);
                let kbps = (b - *last) as f64 * 8.0 / 1000.0 / dt;
                *last = b;
                let link = o.link.lock().unwrap_or_else(|p| p.into_inner()).clone();
                OutputSnapshot {
                    name: o.name.clone(),
                    state: o.state(),
                    kbps: round2(kbps),
                    bytes: b,
                    queue_depth: o.queue.len(),
                    buffered_ms: round2(o.queue.buffered_us() as f64 / 1000.0),
                    dropped: o.queue.dropped() + o.skipped.load(Ordering::Relaxed),
                    reconnects: link.as_ref().map(|l| l.reconnects).unwrap_or(0),
                    error: o
                        .error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .or_else(|| link.and_then(|l| l.last_error)),
                }
            })
            .collect::<Vec<_>>();
        let d_captured = captured - self.last_captured;
        let snap = StatsSnapshot {
            time_s: round2(time_s),
            capture_fps: round2(d_captured as f64 / dt),
            encoded_fps: round2((encoded - self.last_encoded) as f64 / dt),
            encode_ms_avg: round2(avg),
            encode_ms_p95: round2(p95),
            bitrate_kbps: round2((bytes - self.last_bytes) as f64 * 8.0 / 1000.0 / dt),
            frames_encoded: encoded,
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
        };
        self.last_t = time_s;
        self.last_captured = captured;
        self.last_changed = changed;
        self.last_encoded = encoded;
        self.last_bytes = bytes;
        snap
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
