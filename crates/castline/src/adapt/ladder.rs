//! The degradation ladder of one encode tier: frame rate first, then resolution, then bitrate.
//!
//! Level 0 is the configured size and rate. Each lower level halves the frame rate down to
//! `min_fps` (screen content stays legible at 15 fps; a smaller picture does not), then scales
//! the picture down in steps of ¼ of the original height down to `min_height`. Below the last
//! level only the bitrate falls.
//!
//! A level *needs* `BITS_PER_PIXEL` per pixel per frame. Bandwidth: when the target stays under
//! what the current level needs for `DOWN_AFTER`, the ladder drops to the best level that fits;
//! it climbs one level only when the target has exceeded `UP_MARGIN` × what that level needs for
//! `UP_AFTER` (so a steady link settles and never oscillates). CPU: when encoding takes more than
//! `CPU_HOT` of the frame interval (or the raw queue evicts frames) for `CPU_HOT_FOR`, one level
//! down; it climbs back when the projected load of the level above stays under `CPU_COOL` for
//! `CPU_COOL_FOR`. The effective level is the lower of the two.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::Reason;

pub const BITS_PER_PIXEL: f64 = 0.04;
const DOWN_AFTER: Duration = Duration::from_millis(500);
const UP_AFTER: Duration = Duration::from_secs(3);
const UP_MARGIN: f64 = 1.25;
const CPU_HOT: f64 = 0.85;
const CPU_HOT_FOR: Duration = Duration::from_secs(3);
const CPU_COOL: f64 = 0.7;
const CPU_COOL_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LadderConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub min_fps: u32,
    pub min_height: u32,
    /// False for a tier whose size must not change (the one recordings take): fps steps only.
    pub allow_resize: bool,
}

/// One rung: what the encoder runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Level {
    /// 0 = as configured; higher = more degraded.
    pub level: u8,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
}

impl Level {
    fn pixel_rate(&self) -> f64 {
        self.width as f64 * self.height as f64 * self.fps as f64
    }

    /// The bitrate this level needs to look right, bit/s.
    pub fn needs_bps(&self) -> u64 {
        (self.pixel_rate() * BITS_PER_PIXEL) as u64
    }
}

/// A level change, for the `degraded` / `recovered` events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub from: Level,
    pub to: Level,
    pub reason: Reason,
}

impl Change {
    pub fn degraded(&self) -> bool {
        self.to.level > self.from.level
    }
}

pub struct Ladder {
    levels: Vec<Level>,
    bandwidth: usize,
    cpu: usize,
    bandwidth_reason: Reason,
    /// Since when the target has been under what the current level needs.
    below_since: Option<Instant>,
    /// Since when the target has been enough for the level above.
    above_since: Option<Instant>,
    cpu_hot_since: Option<Instant>,
    cpu_cool_since: Option<Instant>,
}

fn even(v: f64) -> u32 {
    ((v / 2.0).round() as u32 * 2).max(16)
}

impl Ladder {
    pub fn new(cfg: LadderConfig) -> Self {
        let mut levels = vec![Level {
            level: 0,
            fps: cfg.fps,
            width: cfg.width,
            height: cfg.height,
        }];
        let min_fps = cfg.min_fps.clamp(1, cfg.fps.max(1));
        let mut fps = cfg.fps;
        while fps > min_fps {
            fps = (fps / 2).max(min_fps);
            levels.push(Level {
                level: levels.len() as u8,
                fps,
                width: cfg.width,
                height: cfg.height,
            });
        }
        if cfg.allow_resize {
            for quarter in [3.0, 2.0, 1.5] {
                let s = quarter / 4.0;
                let h = even(cfg.height as f64 * s);
                if h < cfg.min_height {
                    break;
                }
                levels.push(Level {
                    level: levels.len() as u8,
                    fps,
                    width: even(cfg.width as f64 * s),
                    height: h,
                });
            }
        }
        Self {
            levels,
            bandwidth: 0,
            cpu: 0,
            bandwidth_reason: Reason::Bandwidth,
            below_since: None,
            above_since: None,
            cpu_hot_since: None,
            cpu_cool_since: None,
        }
    }

    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    fn effective(&self) -> usize {
        self.bandwidth.max(self.cpu)
    }

    pub fn level(&self) -> Level {
        self.levels[self.effective()]
    }

    /// What holds the level down, if anything.
    pub fn reason(&self) -> Option<Reason> {
        if self.effective() == 0 {
            None
        } else if self.cpu >= self.bandwidth {
            Some(Reason::Cpu)
        } else {
            Some(self.bandwidth_reason)
        }
    }

    fn change(&self, before: usize, reason: Reason) -> Option<Change> {
        let after = self.effective();
        (after != before).then(|| Change {
            from: self.levels[before],
            to: self.levels[after],
            reason,
        })
    }

    /// The tier's target bitrate (and what limits it), from its sinks' rate controllers.
    pub fn on_target(&mut self, now: Instant, target_bps: u64, reason: Reason) -> Option<Change> {
        let before = self.effective();
        let cur = self.levels[self.bandwidth];
        if target_bps < cur.needs_bps() && self.bandwidth + 1 < self.levels.len() {
            self.above_since = None;
            let since = *self.below_since.get_or_insert(now);
            if now.duration_since(since) >= DOWN_AFTER {
                // The best level that fits, or the last one.
                let fit = self
                    .levels
                    .iter()
                    .position(|l| l.needs_bps() <= target_bps)
                    .unwrap_or(self.levels.len() - 1);
                self.bandwidth = fit.max(self.bandwidth);
                self.bandwidth_reason = reason;
                self.below_since = None;
            }
        } else if self.bandwidth > 0
            && target_bps as f64 >= self.levels[self.bandwidth - 1].needs_bps() as f64 * UP_MARGIN
        {
            self.below_since = None;
            let since = *self.above_since.get_or_insert(now);
            if now.duration_since(since) >= UP_AFTER {
                self.bandwidth -= 1;
                self.above_since = None;
            }
        } else {
            self.below_since = None;
            self.above_since = None;
        }
        self.change(
            before,
            if self.effective() > before {
                reason
            } else {
                self.bandwidth_reason
            },
        )
    }

    /// Once a second: the encode time's share of the frame interval at the current level
    /// (p95), and whether the raw queue evicted frames in that second.
    pub fn on_cpu(&mut self, now: Instant, load: f64, evicting: bool) -> Option<Change> {
        let before = self.effective();
        let cur = self.levels[before];
        if load > CPU_HOT || evicting {
            self.cpu_cool_since = None;
            let since = *self.cpu_hot_since.get_or_insert(now);
            if now.duration_since(since) >= CPU_HOT_FOR && before + 1 < self.levels.len() {
                self.cpu = before + 1;
                self.cpu_hot_since = None;
            }
        } else if self.cpu > 0 && self.cpu >= self.bandwidth {
            self.cpu_hot_since = None;
            let up = self.levels[self.cpu - 1];
            let projected = load * up.pixel_rate() / cur.pixel_rate();
            if projected < CPU_COOL {
                let since = *self.cpu_cool_since.get_or_insert(now);
                if now.duration_since(since) >= CPU_COOL_FOR {
                    self.cpu -= 1;
                    self.cpu_cool_since = None;
                }
            } else {
                self.cpu_cool_since = None;
            }
        } else {
            self.cpu_hot_since = None;
            self.cpu_cool_since = None;
        }
        self.change(before, Reason::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder_1080p30() -> Ladder {
        Ladder::new(LadderConfig {
            width: 1920,
            height: 1080,
            fps: 30,
            min_fps: 15,
            min_height: 360,
            allow_resize: true,
        })
    }

    fn secs(t: Instant, s: f64) -> Instant {
        t + Duration::from_secs_f64(s)
    }

    #[test]
    fn fps_first_then_resolution() {
        let l = ladder_1080p30();
        let shape: Vec<(u32, u32)> = l.levels().iter().map(|l| (l.fps, l.height)).collect();
        assert_eq!(
            shape,
            vec![(30, 1080), (15, 1080), (15, 810), (15, 540), (15, 406)]
        );
        let sixty = Ladder::new(LadderConfig {
            width: 2560,
            height: 1440,
            fps: 60,
            min_fps: 15,
            min_height: 360,
            allow_resize: false,
        });
        let fps: Vec<u32> = sixty.levels().iter().map(|l| l.fps).collect();
        assert_eq!(fps, vec![60, 30, 15], "no resize: frame rate steps only");
    }

    #[test]
    fn steps_down_after_sustained_pressure_to_the_level_that_fits() {
        let t = Instant::now();
        let mut l = ladder_1080p30();
        // 1.5 Mbit/s path → 1.275 Mbit/s video: 1080p15 fits (1.24 Mbit/s).
        assert_eq!(l.on_target(t, 1_275_000, Reason::Bandwidth), None);
        assert_eq!(
            l.on_target(secs(t, 0.3), 1_275_000, Reason::Bandwidth),
            None
        );
        let c = l
            .on_target(secs(t, 0.6), 1_275_000, Reason::Bandwidth)
            .unwrap();
        assert!(c.degraded());
        assert_eq!((c.to.fps, c.to.height), (15, 1080));
        assert_eq!(l.reason(), Some(Reason::Bandwidth));
        // Much less: straight to a smaller picture, no stop on every rung.
        l.on_target(secs(t, 1.0), 400_000, Reason::Loss);
        let c = l.on_target(secs(t, 1.6), 400_000, Reason::Loss).unwrap();
        assert_eq!(c.to.height, 540);
        assert_eq!(l.reason(), Some(Reason::Loss));
        // A target below the last level keeps the last level (bitrate alone falls).
        l.on_target(secs(t, 2.0), 50_000, Reason::Loss);
        l.on_target(secs(t, 2.6), 50_000, Reason::Loss);
        assert_eq!(l.level().height, 406);
        l.on_target(secs(t, 5.0), 50_000, Reason::Loss);
        assert_eq!(l.level().height, 406, "the floor holds");
    }

    #[test]
    fn a_short_dip_does_not_step_down() {
        let t = Instant::now();
        let mut l = ladder_1080p30();
        l.on_target(t, 1_000_000, Reason::Bandwidth);
        l.on_target(secs(t, 0.2), 5_000_000, Reason::Bandwidth);
        assert_eq!(
            l.on_target(secs(t, 0.8), 1_000_000, Reason::Bandwidth),
            None
        );
        assert_eq!(l.level().level, 0);
    }

    #[test]
    fn climbs_back_one_level_at_a_time_with_hysteresis() {
        let t = Instant::now();
        let mut l = ladder_1080p30();
        l.on_target(t, 300_000, Reason::Bandwidth);
        l.on_target(secs(t, 0.5), 300_000, Reason::Bandwidth);
        let low = l.level().level;
        assert!(low >= 3);
        // Enough for the level above, but not by the margin: stays.
        let above = l.levels()[low as usize - 1].needs_bps();
        for i in 0..20 {
            assert_eq!(
                l.on_target(secs(t, 1.0 + i as f64), above + 1, Reason::Bandwidth),
                None
            );
        }
        // Plenty: one level per UP_AFTER, back to the top.
        let mut s = 30.0;
        let mut ups = 0;
        while l.level().level > 0 {
            if let Some(c) = l.on_target(secs(t, s), 5_000_000, Reason::Bandwidth) {
                assert!(!c.degraded());
                assert_eq!(c.from.level - c.to.level, 1);
                ups += 1;
            }
            s += 0.5;
            assert!(s < 60.0);
        }
        assert_eq!(ups, low);
        assert_eq!(l.reason(), None);
    }

    #[test]
    fn no_oscillation_on_a_steady_link() {
        let t = Instant::now();
        let mut l = ladder_1080p30();
        let mut changes = 0;
        for i in 0..600 {
            // 1.3 Mbit/s ± 3 %, every 100 ms for a minute.
            let target = 1_300_000 + (i % 7) * 13_000 - 39_000;
            if l.on_target(secs(t, i as f64 * 0.1), target, Reason::Bandwidth)
                .is_some()
            {
                changes += 1;
            }
        }
        assert_eq!(changes, 1, "one step down, then it holds");
    }

    #[test]
    fn cpu_pressure_steps_down_and_recovers_with_headroom() {
        let t = Instant::now();
        let mut l = Ladder::new(LadderConfig {
            width: 2560,
            height: 1440,
            fps: 60,
            min_fps: 15,
            min_height: 360,
            allow_resize: false,
        });
        // 60 fps needs 16.7 ms a frame; encoding takes 22 ms.
        assert_eq!(l.on_cpu(t, 1.3, true), None);
        assert_eq!(l.on_cpu(secs(t, 2.0), 1.3, true), None);
        let c = l.on_cpu(secs(t, 3.0), 1.3, true).unwrap();
        assert_eq!((c.to.fps, c.reason), (30, Reason::Cpu));
        assert_eq!(l.reason(), Some(Reason::Cpu));
        // At 30 fps the same 22 ms is 0.66 of the interval: it holds, projected 60 fps is 1.3.
        for s in 4..40 {
            assert_eq!(l.on_cpu(secs(t, s as f64), 0.66, false), None);
        }
        // The machine frees up: 6 ms a frame (0.18 at 30 fps, 0.36 projected at 60).
        assert_eq!(l.on_cpu(secs(t, 40.0), 0.18, false), None);
        let c = l.on_cpu(secs(t, 50.0), 0.18, false).unwrap();
        assert!(!c.degraded());
        assert_eq!(l.level().fps, 60);
    }
}
