//! Which encode tier a sink takes, and what an output asks of the tiers.
//!
//! Tier 0 ("main") is the configured encode; recordings and every sink whose target allows it
//! take it. A sink whose target falls under `LOW_BELOW` of the configured bitrate moves to
//! tier 1 ("low"); it comes back once its target reaches `MAIN_ABOVE` (hysteresis). A sink
//! changes tier only at a keyframe of the tier it moves to.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::Reason;

/// Below this share of the configured bitrate a sink takes the low tier…
const LOW_BELOW: f64 = 0.85;
/// …and it takes the main tier again from this share on.
const MAIN_ABOVE: f64 = 0.95;

/// How long a target must stay on the other side of a threshold before the sink moves: an
/// estimate dips when a viewer joins or a keyframe bursts, and a move costs a keyframe.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// A lower estimate without loss (delay only) must last longer: a CPU stall or a viewer joining
/// delays packets too, and GCC's estimate climbs back only slowly once lowered.
const DOWN_WITHOUT_LOSS_AFTER: Duration = Duration::from_secs(3);
/// Under this share of the main tier's rate, with loss, the path is plainly congested: move at
/// once.
const SEVERE_BELOW: f64 = 0.6;
const UP_AFTER: Duration = Duration::from_secs(2);

pub const MAIN: u8 = 0;
pub const LOW: u8 = 1;
/// The size recordings keep while the main tier follows a source of another size.
pub const RECORD: u8 = 2;
/// A sink added while running: it takes nothing until its tier's next keyframe.
pub const NONE: u8 = u8::MAX;

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
    /// A sink that joins a running stream: it starts at the next keyframe of the tier it asks.
    pub fn joining() -> Self {
        Self {
            current: NONE,
            pending: None,
        }
    }

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
    /// Moving down, the old tier stops at once: the path cannot carry it, and what is sent now
    /// only queues in front of the keyframe that is on its way.
    pub fn accept(&mut self, layer: u8, keyframe: bool) -> bool {
        if keyframe && self.pending == Some(layer) {
            self.current = layer;
            self.pending = None;
        }
        let moving_down = self.pending.is_some_and(|p| p > self.current);
        layer == self.current && !moving_down
    }

    /// The tiers this sink needs encoded (both while it switches).
    pub fn needs(&self, tier: u8) -> bool {
        self.current == tier || self.pending == Some(tier)
    }
}

/// One sink's tier over time: [`choose`] with a time hysteresis on top.
#[derive(Debug, Clone, Default)]
pub struct TierChooser {
    pub switch: TierSwitch,
    since: Option<Instant>,
}

impl TierChooser {
    /// Re-evaluate with the sink's current target, the main tier's rate and whether the receiver
    /// reported loss lately; returns the tier a switch starts to (the caller asks that tier for
    /// a keyframe).
    pub fn update(
        &mut self,
        now: Instant,
        target_bps: u64,
        main_bps: u64,
        lossy: bool,
    ) -> Option<u8> {
        let heading = self.switch.pending.unwrap_or(self.switch.current);
        let want = choose(target_bps, main_bps, heading);
        if want == heading {
            self.since = None;
            return None;
        }
        let severe = (target_bps as f64) < main_bps as f64 * SEVERE_BELOW;
        let hold = match want {
            LOW if severe && lossy => Duration::ZERO,
            LOW if lossy => DOWN_AFTER,
            LOW => DOWN_WITHOUT_LOSS_AFTER,
            _ => UP_AFTER,
        };
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < hold {
            return None;
        }
        self.since = None;
        self.switch.want(want);
        Some(want)
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
    /// What the main tier actually sends, bit/s (0 = not known yet): a sink moves to the low tier
    /// only when its target is under *this*, not under the configured bitrate — a still or simple
    /// picture needs far less than configured, and a path that carries it needs no lower tier.
    main_rate_bps: AtomicU64,
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

    pub fn set_main_rate(&self, bps: u64) {
        self.main_rate_bps.store(bps, Ordering::Relaxed);
    }

    /// The main tier's measured rate, or `configured` while it is not known.
    pub fn main_rate(&self, configured: u64) -> u64 {
        match self.main_rate_bps.load(Ordering::Relaxed) {
            0 => configured,
            b => b.min(configured),
        }
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
    fn moves_only_after_sustained_pressure() {
        let t = Instant::now();
        let ms = |m| t + Duration::from_millis(m);
        let mut c = TierChooser::default();
        let main = 5_000_000;
        // A dip of 800 ms (a viewer joining, a keyframe burst) moves nothing.
        assert_eq!(c.update(t, 3_500_000, main, true), None);
        assert_eq!(c.update(ms(800), 3_500_000, main, true), None);
        assert_eq!(c.update(ms(900), 5_000_000, main, true), None);
        assert_eq!(c.update(ms(1500), 3_500_000, main, true), None);
        // Sustained for a second, with loss: to the low tier.
        assert_eq!(c.update(ms(2400), 3_500_000, main, true), None);
        assert_eq!(c.update(ms(2500), 3_500_000, main, true), Some(LOW));
        assert_eq!(c.switch.pending, Some(LOW));
        // Back only after 2 s at 95 % or more.
        assert_eq!(c.update(ms(4000), 4_800_000, main, false), None);
        assert_eq!(c.update(ms(5000), 4_800_000, main, false), None);
        assert_eq!(c.update(ms(6000), 4_800_000, main, false), Some(MAIN));
        // A plainly congested path (far under, with loss) moves at once…
        assert_eq!(c.update(ms(6100), 1_000_000, main, true), Some(LOW));
        // …a delay-only drop (no loss) only after 3 s.
        let mut c = TierChooser::default();
        assert_eq!(c.update(t, 1_000_000, main, false), None);
        assert_eq!(c.update(ms(2900), 1_000_000, main, false), None);
        assert_eq!(c.update(ms(3000), 1_000_000, main, false), Some(LOW));
        // A simple picture needs less than configured: the measured main rate decides.
        let mut c = TierChooser::default();
        assert_eq!(c.update(t, 2_000_000, 800_000, true), None);
        assert_eq!(c.update(ms(5000), 2_000_000, 800_000, true), None);
    }

    #[test]
    fn switches_only_at_a_keyframe_of_the_new_tier() {
        let mut s = TierSwitch::default();
        assert!(s.want(LOW));
        assert!(!s.want(LOW), "one keyframe request per switch");
        assert!(s.needs(MAIN) && s.needs(LOW));
        assert!(
            !s.accept(MAIN, false),
            "moving down, the old tier stops at once"
        );
        assert!(!s.accept(LOW, false), "the new tier starts at its keyframe");
        assert!(s.accept(LOW, true));
        assert_eq!(s.current, LOW);
        assert!(!s.accept(MAIN, false));
        assert!(!s.needs(MAIN));
        // Moving up, the old tier plays until the new one's keyframe.
        assert!(s.want(MAIN));
        assert!(s.accept(LOW, false));
        assert!(!s.accept(MAIN, false));
        assert!(s.accept(MAIN, true));
        assert!(!s.accept(LOW, false));
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
