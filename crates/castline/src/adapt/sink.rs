//! The adaptation of one single-sink output (RTMP, plain RTP): its feedback in, its tier demand
//! out. A WebRTC hub does the same per peer; here the output *is* the sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tier::{TierChooser, TierSwitch, LOW, MAIN};
use super::{Feedback, RateConfig, RateController, Reason, TierDemand};

/// A move of the sink to another tier, for the `degraded` / `recovered` events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierMove {
    pub to: u8,
    pub reason: Reason,
    pub target_bps: u64,
}

pub struct SinkAdapter {
    rate: RateController,
    tier: TierChooser,
    demand: Arc<TierDemand>,
}

impl SinkAdapter {
    pub fn new(rate: RateConfig) -> Self {
        let demand = Arc::new(TierDemand::fixed());
        demand.set_rates(Some(rate.max_bps), None);
        Self {
            rate: RateController::new(rate),
            tier: TierChooser::default(),
            demand,
        }
    }

    /// What the encode stage reads: the tier this sink heads for (the encode thread switches
    /// it at that tier's keyframe).
    pub fn demand(&self) -> Arc<TierDemand> {
        self.demand.clone()
    }

    pub fn target_bps(&self) -> u64 {
        self.rate.target_bps()
    }

    pub fn on_feedback(&mut self, now: Instant, fb: Feedback) -> Option<TierMove> {
        self.rate.on_feedback(now, fb);
        let target = self.rate.target_bps();
        let reason = self.rate.limited_by().unwrap_or(Reason::Bandwidth);
        // A growing TCP buffer is congestion as plain as loss.
        let confirmed =
            self.rate.loss_within(now, Duration::from_secs(2)) || reason == Reason::Buffer;
        let main_rate = self.demand.main_rate(self.rate.config().max_bps);
        let moved = self.tier.update(now, target, main_rate, confirmed);
        if let Some(to) = moved {
            self.tier.switch = TierSwitch {
                current: to,
                pending: None,
            };
        }
        if self.tier.switch.current == LOW {
            self.demand.set(0, Some((target, reason)));
        } else {
            self.demand.set(1, None);
        }
        self.demand
            .set_rates(Some(target), self.rate.estimate_bps());
        moved.map(|to| TierMove {
            to,
            reason,
            target_bps: target,
        })
    }

    pub fn tier(&self) -> u8 {
        if self.tier.switch.current == LOW {
            LOW
        } else {
            MAIN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_growing_buffer_moves_the_sink_to_the_low_tier_and_back() {
        let t = Instant::now();
        let s = |x: f64| t + Duration::from_secs_f64(x);
        let mut a = SinkAdapter::new(RateConfig {
            min_bps: 150_000,
            max_bps: 5_000_000,
        });
        let d = a.demand();
        assert_eq!((d.main_sinks(), d.low()), (1, None));
        let fb = |ms, sent| Feedback::Buffer {
            buffered_ms: ms,
            sent_bps: sent,
        };
        assert_eq!(a.on_feedback(s(0.0), fb(50.0, 5_000_000)), None);
        // The socket drains 1.5 Mbit/s while 5 are produced: the buffer grows, and the sink
        // moves at once (far under the main tier's rate, congestion confirmed).
        let m = a.on_feedback(s(0.5), fb(600.0, 1_500_000)).unwrap();
        assert_eq!((m.to, m.reason), (LOW, Reason::Buffer));
        assert_eq!(d.main_sinks(), 0);
        assert_eq!(d.low(), Some((1_200_000, Reason::Buffer)));
        assert_eq!(a.tier(), LOW);
        // Drained and calm: the target climbs 10 % a second back to the top, then main.
        let mut x = 2.0;
        let mut back = None;
        while back.is_none() && x < 60.0 {
            back = a.on_feedback(s(x), fb(20.0, a.target_bps()));
            x += 0.5;
        }
        assert_eq!(back.map(|m| m.to), Some(MAIN));
        assert_eq!((d.main_sinks(), d.low()), (1, None));
    }
}
