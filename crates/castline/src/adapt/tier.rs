//! Which encode tier a sink takes, and what an output asks of the tiers.
//!
//! Tier 0 ("main") is the configured encode; recordings and every sink whose target allows it
//! take it. A sink whose target falls under `LOW_BELOW` of the configured bitrate moves to
//! tier 1 ("low"); it comes back once its target reaches `MAIN_ABOVE` (hysteresis). A sink
//! changes tier only at a keyframe of the tier it moves to.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::Reason;

/// Below this share of the configured bitrate a sink takes the low tier…
const LOW_BELOW: f64 = 0.85;
/// …and it takes the main tier again from this share on.
const MAIN_ABOVE: f64 = 0.95;

pub const MAIN: u8 = 0;
pub const LOW: u8 = 1;

/// The tier a sink with `target_bps` should take, given the tier it is on.
pub fn choose(target_bps: u64, main_bps: u64, current: u8) -> u8 {
    let share = target_bps as f64 / main_bps.max(1) as f64;
    match current {
        MAIN if share < LOW_BELOW => LOW,
        LOW if share >= MAIN_ABOVE => MAIN,
        t => t,
    }
}

/// Follows one sink's tier: the tier it receives now, and the one it moves to at the next
/// keyframe of that tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierSwitch {
    pub current: u8,
    pub pending: Option<u8>,
}

impl Default for TierSwitch {
    fn default() -> Self {
        Self {
            current: MAIN,
            pending: None,
        }
    }
}

impl TierSwitch {
    /// Ask for tier `want`; true when that starts a switch (the caller asks for a keyframe).
    pub fn want(&mut self, want: u8) -> bool {
        if want == self.current {
            self.pending = None;
            false
        } else if self.pending != Some(want) {
            self.pending = Some(want);
            true
        } else {
            false
        }
    }

    /// Whether a video packet of `layer` goes to this sink; switches at the new tier's keyframe.
    pub fn accept(&mut self, layer: u8, keyframe: bool) -> bool {
        if keyframe && self.pending == Some(layer) {
            self.current = layer;
            self.pending = None;
        }
        layer == self.current
    }

    /// The tiers this sink needs encoded (both while it switches).
    pub fn needs(&self, tier: u8) -> bool {
        self.current == tier || self.pending == Some(tier)
    }
}

/// What one output asks of the encode tiers: written by the output (or its WebRTC hub), read by
/// the encode thread.
#[derive(Debug, Default)]
pub struct TierDemand {
    /// Sinks that need the main tier (a recording counts as one, always).
    main_sinks: AtomicU32,
    /// Lowest target among the sinks that need the low tier, bit/s; 0 = none.
    low_target_bps: AtomicU64,
    low_reason: AtomicU8,
    /// For the stats: the output's target and path estimate (lowest over its sinks), bit/s;
    /// 0 = none.
    target_bps: AtomicU64,
    estimate_bps: AtomicU64,
}

impl TierDemand {
    /// A sink that always takes the main tier (a recording, or adaptation off).
    pub fn fixed() -> Self {
        let d = Self::default();
        d.main_sinks.store(1, Ordering::Relaxed);
        d
    }

    pub fn set(&self, main_sinks: u32, low: Option<(u64, Reason)>) {
        self.main_sinks.store(main_sinks, Ordering::Relaxed);
        let (bps, reason) = low.unwrap_or((0, Reason::Bandwidth));
        self.low_reason.store(reason as u8, Ordering::Relaxed);
        self.low_target_bps.store(bps, Ordering::Relaxed);
    }

    pub fn set_rates(&self, target_bps: Option<u64>, estimate_bps: Option<u64>) {
        self.target_bps
            .store(target_bps.unwrap_or(0), Ordering::Relaxed);
        self.estimate_bps
            .store(estimate_bps.unwrap_or(0), Ordering::Relaxed);
    }

    /// The output's target and estimate, bit/s, when it adapts.
    pub fn rates(&self) -> (Option<u64>, Option<u64>) {
        let get = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&v| v > 0);
        (get(&self.target_bps), get(&self.estimate_bps))
    }

    pub fn main_sinks(&self) -> u32 {
        self.main_sinks.load(Ordering::Relaxed)
    }

    pub fn low(&self) -> Option<(u64, Reason)> {
        let bps = self.low_target_bps.load(Ordering::Relaxed);
        let reason = match self.low_reason.load(Ordering::Relaxed) {
            x if x == Reason::Loss as u8 => Reason::Loss,
            x if x == Reason::Buffer as u8 => Reason::Buffer,
            x if x == Reason::Cpu as u8 => Reason::Cpu,
            _ => Reason::Bandwidth,
        };
        (bps > 0).then_some((bps, reason))
    }
}

/// The demand of a set of sinks: how many need the main tier, and the lowest target of those
/// that need the low one.
pub fn summarize<'a>(
    sinks: impl IntoIterator<Item = (&'a TierSwitch, u64, Option<Reason>)>,
) -> (u32, Option<(u64, Reason)>) {
    let mut main = 0;
    let mut low: Option<(u64, Reason)> = None;
    for (sw, target, reason) in sinks {
        if sw.needs(MAIN) {
            main += 1;
        }
        if sw.needs(LOW) && low.is_none_or(|(b, _)| target < b) {
            low = Some((target, reason.unwrap_or(Reason::Bandwidth)));
        }
    }
    (main, low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_between_tiers() {
        let main = 5_000_000;
        assert_eq!(choose(4_500_000, main, MAIN), MAIN);
        assert_eq!(choose(4_000_000, main, MAIN), LOW);
        assert_eq!(choose(4_500_000, main, LOW), LOW, "not back before 95 %");
        assert_eq!(choose(4_750_000, main, LOW), MAIN);
    }

    #[test]
    fn switches_only_at_a_keyframe_of_the_new_tier() {
        let mut s = TierSwitch::default();
        assert!(s.want(LOW));
        assert!(!s.want(LOW), "one keyframe request per switch");
        assert!(s.needs(MAIN) && s.needs(LOW));
        assert!(s.accept(MAIN, false), "keeps the old tier until then");
        assert!(!s.accept(LOW, false));
        assert!(!s.accept(MAIN, true) || s.current == MAIN);
        assert!(s.accept(LOW, true));
        assert_eq!(s.current, LOW);
        assert!(!s.accept(MAIN, false));
        assert!(!s.needs(MAIN));
    }

    #[test]
    fn demand_is_the_lowest_low_target() {
        let a = TierSwitch::default();
        let b = TierSwitch {
            current: LOW,
            pending: None,
        };
        let c = TierSwitch {
            current: LOW,
            pending: None,
        };
        let (main, low) = summarize([
            (&a, 5_000_000, None),
            (&b, 1_200_000, Some(Reason::Bandwidth)),
            (&c, 800_000, Some(Reason::Loss)),
        ]);
        assert_eq!(main, 1);
        assert_eq!(low, Some((800_000, Reason::Loss)));
        let d = TierDemand::default();
        d.set(main, low);
        assert_eq!(d.low(), Some((800_000, Reason::Loss)));
        assert_eq!(d.main_sinks(), 1);
    }
}
