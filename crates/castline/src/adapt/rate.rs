//! The rate controller of one live sink: its feedback in, a target video bitrate out.
//!
//! Every kind of feedback becomes a *cap* on the target, and the target is the lowest cap,
//! clamped to `[min, max]`:
//! - **Estimate** (str0m's delay- and loss-based TWCC estimator, GCC-style): the path carries
//!   this much in all; video gets `ESTIMATE_SHARE` of it minus the measured overhead (what the
//!   sink was sent beyond the media itself: retransmissions, padding, audio, headers), as
//!   libwebrtc subtracts its protection overhead.
//! - **REMB** (the receiver's own estimate): the same share of what it says.
//! - **Loss** (RTCP receiver reports), GCC's loss controller: above 10 % lost the cap falls by
//!   half the loss fraction, below 2 % it climbs 8 % a report, in between it holds.
//! - **Buffer** (a TCP stream such as RTMP, OBS's "dynamic bitrate"): a buffer that grows past
//!   `BUFFER_HIGH_MS` means the socket drains slower than we produce, so the cap falls to just
//!   under what actually drained; once the buffer stays small for 2 s it climbs back 15 % (plus
//!   50 kbit/s) a second.
//!
//! Decreases apply at once (a path over capacity freezes the picture); increases of the
//! estimate cap are passed through only when they are worth an encoder change (`DEADBAND`).

use std::time::{Duration, Instant};

use super::Reason;

/// Share of the estimated path capacity given to video.
pub const ESTIMATE_SHARE: f64 = 0.9;
/// Overhead never takes more than this share of the estimate away from video.
const MAX_OVERHEAD_SHARE: f64 = 0.5;
/// Changes of the target smaller than this fraction are ignored (no encoder churn).
const DEADBAND: f64 = 0.05;
/// Loss above this fraction lowers the cap; below `LOSS_LOW` it may climb.
const LOSS_HIGH: f64 = 0.10;
const LOSS_LOW: f64 = 0.02;
/// A stream buffer above this is congestion; below `BUFFER_LOW_MS` it is draining.
const BUFFER_HIGH_MS: f64 = 400.0;
const BUFFER_LOW_MS: f64 = 150.0;
/// How long a cap waits after lowering before it lowers again (feedback lags).
const DECREASE_INTERVAL: Duration = Duration::from_millis(1000);
/// How much the buffer cap climbs a second once calm: 15 %, plus 50 kbit/s so it leaves a
/// very low rate quickly too.
const BUFFER_CLIMB: f64 = 1.15;
const BUFFER_CLIMB_BPS: f64 = 50_000.0;
/// How long a draining buffer must stay low before the buffer cap climbs.
const BUFFER_CALM: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Lowest target, bit/s.
    pub min_bps: u64,
    /// Highest target (the configured bitrate), bit/s.
    pub max_bps: u64,
}

/// One piece of feedback from a sink.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feedback {
    /// Delay/loss-based estimate of the whole path (TWCC), bit/s.
    Estimate { bps: u64 },
    /// Receiver Estimated Maximum Bitrate, bit/s.
    Remb { bps: u64 },
    /// Fraction of our packets the receiver lost since its last report (0..1), and what we sent
    /// it over about the same time, bit/s (None: not known).
    Loss {
        fraction: f64,
        sent_bps: Option<u64>,
    },
    /// What the sink was sent beyond its video over the last second (RTX, padding, audio,
    /// packet headers), bit/s.
    Overhead { bps: u64 },
    /// A TCP stream's buffer: media waiting to be sent, and what was actually sent over the
    /// last second.
    Buffer { buffered_ms: f64, sent_bps: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Cap {
    bps: f64,
    last_decrease: Option<Instant>,
}

impl Cap {
    fn open() -> Self {
        Self {
            bps: f64::INFINITY,
            last_decrease: None,
        }
    }

    /// Lower the cap to `to` unless it was lowered within `DECREASE_INTERVAL`.
    fn decrease(&mut self, now: Instant, to: f64) {
        let recent = self
            .last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_INTERVAL);
        if to < self.bps && !recent {
            self.bps = to;
            self.last_decrease = Some(now);
        }
    }
}

/// Target bitrate of one sink.
#[derive(Debug, Clone)]
pub struct RateController {
    cfg: RateConfig,
    estimate: Option<u64>,
    overhead: u64,
    estimate_cap: Cap,
    remb_cap: Cap,
    loss_cap: Cap,
    buffer_cap: Cap,
    /// When the buffer was last seen above `BUFFER_LOW_MS`.
    buffer_busy_at: Option<Instant>,
    last_buffer_climb: Option<Instant>,
    /// When the receiver last reported loss above `LOSS_LOW`.
    last_loss_at: Option<Instant>,
    target: u64,
}

impl RateController {
    pub fn new(cfg: RateConfig) -> Self {
        let cfg = RateConfig {
            min_bps: cfg.min_bps.min(cfg.max_bps),
            ..cfg
        };
        Self {
            cfg,
            estimate: None,
            overhead: 0,
            estimate_cap: Cap::open(),
            remb_cap: Cap::open(),
            loss_cap: Cap::open(),
            buffer_cap: Cap::open(),
            buffer_busy_at: None,
            last_buffer_climb: None,
            last_loss_at: None,
            target: cfg.max_bps,
        }
    }

    pub fn config(&self) -> RateConfig {
        self.cfg
    }

    /// The video bitrate this sink should get, bit/s.
    pub fn target_bps(&self) -> u64 {
        self.target
    }

    /// The last path estimate (TWCC, else REMB), bit/s.
    pub fn estimate_bps(&self) -> Option<u64> {
        self.estimate
    }

    /// What holds the target below the configured bitrate, if anything.
    pub fn limited_by(&self) -> Option<Reason> {
        if self.target >= self.cfg.max_bps {
            return None;
        }
        let caps = [
            (self.estimate_cap.bps, Reason::Bandwidth),
            (self.remb_cap.bps, Reason::Bandwidth),
            (self.loss_cap.bps, Reason::Loss),
            (self.buffer_cap.bps, Reason::Buffer),
        ];
        caps.iter()
            .filter(|(b, _)| b.is_finite())
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, r)| *r)
    }

    /// Whether the receiver reported loss within `window`: congestion confirmed, not only a
    /// delay the estimator read as congestion (a CPU stall delays packets too).
    pub fn loss_within(&self, now: Instant, window: Duration) -> bool {
        self.last_loss_at
            .is_some_and(|t| now.duration_since(t) <= window)
    }

    pub fn on_feedback(&mut self, now: Instant, fb: Feedback) {
        match fb {
            Feedback::Estimate { bps } => {
                self.estimate = Some(bps);
                // The estimator already paces its own decreases and increases.
                self.estimate_cap.bps = self.video_share(bps);
            }
            Feedback::Remb { bps } => {
                if self.estimate_cap.bps.is_infinite() {
                    self.estimate = Some(bps);
                }
                self.remb_cap.bps = self.video_share(bps);
            }
            Feedback::Overhead { bps } => {
                self.overhead = bps;
                if let Some(e) = self.estimate.filter(|_| self.estimate_cap.bps.is_finite()) {
                    self.estimate_cap.bps = self.video_share(e);
                }
            }
            Feedback::Loss { fraction, sent_bps } => self.on_loss(now, fraction, sent_bps),
            Feedback::Buffer {
                buffered_ms,
                sent_bps,
            } => self.on_buffer(now, buffered_ms, sent_bps),
        }
        self.update_target();
    }

    /// What video may take of a path estimate.
    fn video_share(&self, estimate: u64) -> f64 {
        let e = estimate as f64;
        let overhead = (self.overhead as f64).min(e * MAX_OVERHEAD_SHARE);
        e * ESTIMATE_SHARE - overhead
    }

    fn on_loss(&mut self, now: Instant, fraction: f64, sent_bps: Option<u64>) {
        let fraction = fraction.clamp(0.0, 1.0);
        if fraction >= LOSS_LOW {
            self.last_loss_at = Some(now);
        }
        let current = self.loss_cap.bps.min(self.target as f64);
        if fraction > LOSS_HIGH {
            // GCC's rule, but never under what demonstrably got through (sent × (1 − loss), with
            // a margin): a burst of loss while a backlog drains says little about the capacity,
            // and a cap that falls to the floor takes a minute to climb back at 8 % a second.
            let delivered = sent_bps.map_or(0.0, |s| s as f64 * (1.0 - fraction) * 0.85);
            let to = (current * (1.0 - 0.5 * fraction)).max(delivered.min(current));
            self.loss_cap.decrease(now, to);
        } else if fraction < LOSS_LOW && self.loss_cap.bps.is_finite() {
            self.loss_cap.bps *= 1.08;
            if self.loss_cap.bps >= self.cfg.max_bps as f64 {
                self.loss_cap = Cap::open();
            }
        }
    }

    fn on_buffer(&mut self, now: Instant, buffered_ms: f64, sent_bps: u64) {
        if buffered_ms > BUFFER_LOW_MS {
            self.buffer_busy_at = Some(now);
        }
        if buffered_ms > BUFFER_HIGH_MS {
            // Under what drained, so the backlog shrinks instead of holding.
            let drained = sent_bps as f64 * 0.8;
            let to = drained
                .min(self.target as f64 * 0.9)
                .max(self.cfg.min_bps as f64);
            self.buffer_cap.decrease(now, to);
            return;
        }
        let calm = self
            .buffer_busy_at
            .is_none_or(|t| now.duration_since(t) >= BUFFER_CALM);
        let climbed_recently = self
            .last_buffer_climb
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if calm && !climbed_recently && self.buffer_cap.bps.is_finite() {
            self.buffer_cap.bps = self.buffer_cap.bps * BUFFER_CLIMB + BUFFER_CLIMB_BPS;
            self.last_buffer_climb = Some(now);
            if self.buffer_cap.bps >= self.cfg.max_bps as f64 {
                self.buffer_cap = Cap::open();
            }
        }
    }

    fn update_target(&mut self) {
        let cap = self
            .estimate_cap
            .bps
            .min(self.remb_cap.bps)
            .min(self.loss_cap.bps)
            .min(self.buffer_cap.bps);
        let want = cap.clamp(self.cfg.min_bps as f64, self.cfg.max_bps as f64) as u64;
        // Any decrease applies (over capacity the picture freezes); an increase only when it is
        // worth an encoder change, or when it reaches the configured bitrate.
        let worth = want as f64 > self.target as f64 * (1.0 + DEADBAND) || want == self.cfg.max_bps;
        if want < self.target || (want > self.target && worth) {
            self.target = want;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl() -> RateController {
        RateController::new(RateConfig {
            min_bps: 150_000,
            max_bps: 5_000_000,
        })
    }

    #[test]
    fn starts_at_max_and_follows_estimate_down() {
        let t = Instant::now();
        let mut c = ctl();
        assert_eq!(c.target_bps(), 5_000_000);
        assert_eq!(c.limited_by(), None);
        c.on_feedback(t, Feedback::Estimate { bps: 1_500_000 });
        assert_eq!(c.target_bps(), (1_500_000.0 * ESTIMATE_SHARE) as u64);
        assert_eq!(c.limited_by(), Some(Reason::Bandwidth));
        assert_eq!(c.estimate_bps(), Some(1_500_000));
    }

    #[test]
    fn measured_overhead_comes_off_the_estimate() {
        let t = Instant::now();
        let mut c = ctl();
        c.on_feedback(t, Feedback::Estimate { bps: 1_500_000 });
        c.on_feedback(t, Feedback::Overhead { bps: 300_000 });
        assert_eq!(c.target_bps(), 1_050_000);
        // Never more than half the estimate.
        c.on_feedback(t, Feedback::Overhead { bps: 5_000_000 });
        assert_eq!(c.target_bps(), 600_000);
    }

    #[test]
    fn clamps_to_min_and_max() {
        let t = Instant::now();
        let mut c = ctl();
        c.on_feedback(t, Feedback::Estimate { bps: 10_000 });
        assert_eq!(c.target_bps(), 150_000);
        c.on_feedback(t, Feedback::Estimate { bps: 50_000_000 });
        assert_eq!(c.target_bps(), 5_000_000);
        assert_eq!(c.limited_by(), None);
    }

    #[test]
    fn small_increases_are_ignored_on_a_steady_link() {
        let t = Instant::now();
        let mut c = ctl();
        c.on_feedback(t, Feedback::Estimate { bps: 2_000_000 });
        let first = c.target_bps();
        let mut changes = 0;
        for i in 0..100u64 {
            // Jitter of ±2 % around a steady capacity.
            let bps = 2_000_000 + (i % 5) * 20_000;
            let before = c.target_bps();
            c.on_feedback(
                t + Duration::from_millis(100 * i),
                Feedback::Estimate { bps },
            );
            if c.target_bps() > before {
                changes += 1;
            }
        }
        assert_eq!(changes, 0, "no upward churn from jitter");
        assert!(c.target_bps() <= first);
    }

    #[test]
    fn remb_caps_even_a_higher_twcc_estimate() {
        let t = Instant::now();
        let mut c = ctl();
        c.on_feedback(t, Feedback::Estimate { bps: 4_000_000 });
        c.on_feedback(t, Feedback::Remb { bps: 1_000_000 });
        assert_eq!(c.target_bps(), 900_000);
        assert_eq!(c.estimate_bps(), Some(4_000_000));
    }

    #[test]
    fn loss_lowers_then_recovers_slowly() {
        let t = Instant::now();
        let mut c = ctl();
        c.on_feedback(
            t,
            Feedback::Loss {
                fraction: 0.2,
                sent_bps: None,
            },
        );
        assert_eq!(c.target_bps(), 4_500_000);
        assert_eq!(c.limited_by(), Some(Reason::Loss));
        // A second report within the interval does not compound the decrease.
        c.on_feedback(
            t + Duration::from_millis(200),
            Feedback::Loss {
                fraction: 0.2,
                sent_bps: None,
            },
        );
        assert_eq!(c.target_bps(), 4_500_000);
        c.on_feedback(
            t + Duration::from_secs(2),
            Feedback::Loss {
                fraction: 0.3,
                sent_bps: None,
            },
        );
        assert_eq!(c.target_bps(), 3_825_000);
        // Moderate loss holds.
        c.on_feedback(
            t + Duration::from_secs(3),
            Feedback::Loss {
                fraction: 0.05,
                sent_bps: None,
            },
        );
        assert_eq!(c.target_bps(), 3_825_000);
        // Clean reports climb 8 % each, back to the max.
        let mut s = 4;
        while c.target_bps() < 5_000_000 {
            c.on_feedback(
                t + Duration::from_secs(s),
                Feedback::Loss {
                    fraction: 0.0,
                    sent_bps: None,
                },
            );
            s += 1;
            assert!(s < 20, "climbs back within a few reports");
        }
        assert_eq!(c.limited_by(), None);
    }

    #[test]
    fn heavy_loss_never_cuts_under_what_got_through() {
        let t = Instant::now();
        let mut c = ctl();
        // 40 % lost of 2.5 Mbit/s sent: 1.5 got through; GCC alone would say 4 Mbit/s × 0.8,
        // then keep cutting 20 % a second.
        let loss = |s| Feedback::Loss {
            fraction: 0.4,
            sent_bps: Some(s),
        };
        c.on_feedback(t, loss(2_500_000));
        assert_eq!(c.target_bps(), 4_000_000);
        for s in 1..10 {
            c.on_feedback(t + Duration::from_secs(s), loss(2_500_000));
        }
        assert_eq!(
            c.target_bps(),
            1_275_000,
            "floored at what got through × 0.85"
        );
    }

    #[test]
    fn growing_buffer_drops_under_what_drained_and_climbs_when_calm() {
        let t = Instant::now();
        let mut c = ctl();
        c.on_feedback(
            t,
            Feedback::Buffer {
                buffered_ms: 100.0,
                sent_bps: 5_000_000,
            },
        );
        assert_eq!(c.target_bps(), 5_000_000);
        c.on_feedback(
            t + Duration::from_secs(1),
            Feedback::Buffer {
                buffered_ms: 900.0,
                sent_bps: 1_500_000,
            },
        );
        assert_eq!(c.target_bps(), 1_200_000);
        assert_eq!(c.limited_by(), Some(Reason::Buffer));
        // While the backlog drains (still above low), no climb.
        c.on_feedback(
            t + Duration::from_secs(2),
            Feedback::Buffer {
                buffered_ms: 300.0,
                sent_bps: 1_500_000,
            },
        );
        assert_eq!(c.target_bps(), 1_200_000);
        // Calm for 2 s after the backlog was last above 150 ms (t = 2 s), then +15 % (+50 k) a
        // second.
        for s in 3..4 {
            c.on_feedback(
                t + Duration::from_secs(s),
                Feedback::Buffer {
                    buffered_ms: 20.0,
                    sent_bps: 1_200_000,
                },
            );
        }
        assert_eq!(c.target_bps(), 1_200_000, "not before 2 s of calm");
        c.on_feedback(
            t + Duration::from_secs(4),
            Feedback::Buffer {
                buffered_ms: 20.0,
                sent_bps: 1_200_000,
            },
        );
        assert_eq!(c.target_bps(), 1_430_000);
        // Not again within the second.
        c.on_feedback(
            t + Duration::from_millis(4500),
            Feedback::Buffer {
                buffered_ms: 20.0,
                sent_bps: 1_430_000,
            },
        );
        assert_eq!(c.target_bps(), 1_430_000);
    }
}
