//! Feedback for the single-sink live outputs (RTMP, plain RTP), read in their output thread
//! twice a second and handed to their `SinkAdapter`: the stream buffer and what drained (RTMP),
//! the receiver reports' loss (RTP).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::stats::OutputCounters;
use crate::adapt::tier::LOW;
use crate::adapt::{Feedback, SinkAdapter};

const INTERVAL: Duration = Duration::from_millis(500);

pub struct SinkFeedback {
    adapter: SinkAdapter,
    /// RTMP: the queue is the stream buffer, and a TCP socket that does not drain is the signal.
    buffer: bool,
    last: Instant,
    last_bytes: u64,
    last_reports: u64,
}

impl SinkFeedback {
    pub fn new(adapter: SinkAdapter, buffer: bool) -> Self {
        Self {
            adapter,
            buffer,
            last: Instant::now(),
            last_bytes: 0,
            last_reports: 0,
        }
    }

    pub fn demand(&self) -> std::sync::Arc<crate::adapt::TierDemand> {
        self.adapter.demand()
    }

    pub fn poll(&mut self, c: &OutputCounters) {
        let now = Instant::now();
        let dt = now.duration_since(self.last);
        if dt < INTERVAL {
            return;
        }
        self.last = now;
        let bytes = c.bytes.load(Ordering::Relaxed);
        let sent_bps = ((bytes - self.last_bytes) as f64 * 8.0 / dt.as_secs_f64()) as u64;
        self.last_bytes = bytes;
        let mut feedback = Vec::with_capacity(2);
        if self.buffer {
            feedback.push(Feedback::Buffer {
                buffered_ms: c.queue.buffered_us() as f64 / 1000.0,
                sent_bps,
            });
        }
        if let Some(r) = &c.rtcp {
            let r = r.lock().unwrap_or_else(|p| p.into_inner());
            if r.receiver_reports > self.last_reports {
                self.last_reports = r.receiver_reports;
                if let Some(fraction) = r.loss {
                    feedback.push(Feedback::Loss {
                        fraction,
                        sent_bps: Some(sent_bps),
                    });
                }
            }
        }
        for fb in feedback {
            if let Some(m) = self.adapter.on_feedback(now, fb) {
                let (reason, target_kbps) = (m.reason.as_str(), m.target_bps / 1000);
                if m.to == LOW {
                    tracing::warn!(output = %c.name, reason, tier = "low", target_kbps, "degraded");
                } else {
                    tracing::info!(output = %c.name, reason, tier = "main", target_kbps, "recovered");
                }
            }
        }
    }
}
