//! Runs the [`crate::health`] policy on a live pipeline: reads every stage's cumulative
//! counters a few times a second, logs the verdicts (`stage_degraded`, `unstable`,
//! `fallback_recommended`, `stage_recovered`), queues them for the app, and stops the run when
//! the app asked for it (`stop_on_unstable`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::control::Shared;
use super::queue::FrameQueue;
use super::stats::PipelineCounters;
use crate::capture::VideoFrame;
use crate::health::{Health, HealthEvent, StageHealth, StageKind, StageReading};
use crate::mix::AudioInput;

/// How often the counters are read.
const PERIOD: Duration = Duration::from_millis(200);

struct State {
    health: Health,
    events: Vec<HealthEvent>,
}

#[derive(Clone)]
pub(crate) struct HealthWatch {
    shared: Arc<Shared>,
    counters: Arc<PipelineCounters>,
    raw: FrameQueue<VideoFrame>,
    audio: Vec<Arc<AudioInput>>,
    state: Arc<Mutex<State>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HealthWatch {
    pub fn new(
        shared: Arc<Shared>,
        counters: Arc<PipelineCounters>,
        raw: FrameQueue<VideoFrame>,
        audio: Vec<Arc<AudioInput>>,
    ) -> Self {
        let health = Health::new(shared.cfg.health.clone());
        Self {
            shared,
            counters,
            raw,
            audio,
            state: Arc::new(Mutex::new(State {
                health,
                events: Vec::new(),
            })),
        }
    }

    /// Poll on a thread of its own until `done`, or until the pipeline is dropped without
    /// `wait` (then this thread holds the last handle).
    pub fn spawn(&self, done: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        let watch = self.clone();
        std::thread::Builder::new()
            .name("castline-health".into())
            .spawn(move || {
                while !done.load(Ordering::SeqCst) && Arc::strong_count(&watch.state) > 1 {
                    watch.poll();
                    std::thread::sleep(PERIOD);
                }
            })
    }

    fn readings(&self) -> Vec<StageReading> {
        let c = &self.counters;
        let ended = |stage: &str| {
            lock(&c.stage_errors)
                .iter()
                .find(|(s, _)| *s == stage)
                .map(|(_, e)| e.clone())
        };
        let captured = c.frames_captured.load(Ordering::Relaxed);
        let late = c.capture_late.load(Ordering::Relaxed);
        let mut r = vec![
            StageReading {
                stage: "capture".into(),
                kind: StageKind::Core,
                failures: c.source_restarts.load(Ordering::Relaxed),
                failure_reason: "source_restarted".into(),
                // Ticks missed because a grab overran, of all ticks.
                dropped: late,
                offered: captured + late,
                ended: ended("capture"),
            },
            StageReading {
                stage: "encode".into(),
                kind: StageKind::Core,
                failures: 0,
                failure_reason: String::new(),
                // Frames evicted from the raw queue because the encoder fell behind.
                dropped: self.raw.dropped(),
                offered: captured,
                ended: ended("encode"),
            },
        ];
        if self.shared.has_audio {
            r.push(StageReading {
                stage: "audio".into(),
                kind: StageKind::Core,
                failures: self
                    .audio
                    .iter()
                    .map(|a| a.lost.load(Ordering::Relaxed))
                    .sum(),
                failure_reason: "audio_source_lost".into(),
                dropped: 0,
                offered: 0,
                ended: ended("audio"),
            });
        }
        for o in self.shared.outputs.all() {
            let link = lock(&o.link).clone();
            let error = lock(&o.error).clone();
            // Packets evicted from its queue, and those it skipped while its link was down.
            let dropped = o.queue.dropped() + o.skipped.load(Ordering::Relaxed);
            r.push(StageReading {
                stage: o.name.clone(),
                kind: StageKind::Output,
                // Links lost: reconnects done, plus one while reconnecting (the sum only grows).
                failures: link
                    .as_ref()
                    .map(|l| l.reconnects as u64 + l.reconnecting as u64)
                    .unwrap_or(0),
                failure_reason: link
                    .as_ref()
                    .and_then(|l| l.last_error.as_ref())
                    .map(|e| e.kind.to_string())
                    .unwrap_or_else(|| "link_lost".into()),
                dropped,
                offered: o.packets.load(Ordering::Relaxed) + dropped,
                ended: if o.failed.load(Ordering::Relaxed) {
                    Some(
                        error
                            .map(|e| e.kind.to_string())
                            .unwrap_or_else(|| "failed".into()),
                    )
                } else {
                    None
                },
            });
        }
        r
    }

    /// Read the counters now; log and queue what changed.
    pub fn poll(&self) {
        let readings = self.readings();
        let mut st = lock(&self.state);
        let events = st.health.observe(Instant::now(), &readings);
        for e in &events {
            log(e);
            if matches!(e, HealthEvent::FallbackRecommended { .. })
                && st.health.config().stop_on_unstable
                && !self.shared.stop.swap(true, Ordering::SeqCst)
            {
                tracing::warn!(reason = "stop_on_unstable", "stopping");
            }
        }
        st.events.extend(events);
    }

    pub fn take_events(&self) -> Vec<HealthEvent> {
        std::mem::take(&mut lock(&self.state).events)
    }

    pub fn snapshot(&self) -> Vec<StageHealth> {
        lock(&self.state).health.snapshot()
    }
}

fn log(e: &HealthEvent) {
    match e {
        HealthEvent::StageDegraded { stage, reason } => {
            tracing::warn!(stage, reason, "stage_degraded")
        }
        HealthEvent::Unstable {
            stage,
            reason,
            window_s,
            count,
        } => tracing::warn!(stage, reason, window_s, count, "unstable"),
        HealthEvent::FallbackRecommended { stage, reason } => {
            tracing::error!(stage, reason, "fallback_recommended")
        }
        HealthEvent::StageRecovered { stage } => tracing::info!(stage, "stage_recovered"),
    }
}
