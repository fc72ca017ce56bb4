//! Health: a verdict on a run that is going badly, as policy only (sans-IO).
//!
//! Single errors are classified where they happen (an output reconnects, an ffmpeg child is
//! restarted, a sound server comes back); an app also needs to know when the native path as a
//! whole is unstable, so it can switch to another one (the browser's `getDisplayMedia`, say).
//! Every stage — `capture`, `encode`, `audio`, and each output — is read as cumulative counters
//! (failures it recovered from, units dropped of units offered, and whether it ended for good);
//! [`Health::observe`] turns a reading and the time into events:
//!
//! - `stage_degraded`: a first failure, or drops, in the window;
//! - `unstable {stage, reason, window_s, count}`: failures in the rolling window reached the
//!   threshold, or drops stayed above the ratio for the sustain time;
//! - `fallback_recommended {stage, reason}` (once per run): capture, encode or audio ended for
//!   good or became unstable, or every output is failing — the native path cannot go on;
//! - `stage_recovered`: a degraded or unstable stage went a whole window without trouble.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The span drop ratios are measured over.
const DROP_SPAN: Duration = Duration::from_secs(1);

/// Thresholds of the health verdicts. The defaults tolerate one reconnect or restart in a
/// while, not a loop of them.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// The rolling window failures are counted in (and a stage must stay clean to recover).
    pub window: Duration,
    /// Failures in the window that make a stage unstable.
    pub max_failures: u32,
    /// Share of units dropped (frames, packets) above which a stage is dropping.
    pub max_drop_ratio: f64,
    /// How long dropping must last to make the stage unstable.
    pub drop_sustain: Duration,
    /// Stop the run cleanly (recordings finalized) when a fallback is recommended.
    pub stop_on_unstable: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            max_failures: 3,
            max_drop_ratio: 0.25,
            drop_sustain: Duration::from_secs(5),
            stop_on_unstable: false,
        }
    }
}

/// What a stage is: the core of the native path, or one output among several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Capture, encode, audio: the run cannot go on without it.
    Core,
    /// An output: the others keep going without it.
    Output,
}

/// One stage's cumulative counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReading {
    /// `capture`, `encode`, `audio`, or the output's name.
    pub stage: String,
    pub kind: StageKind,
    /// Failures recovered from so far (reconnects, restarts, lost sources).
    pub failures: u64,
    /// What the last failure was (used as the event's reason).
    pub failure_reason: String,
    /// Units dropped so far, of units offered so far.
    pub dropped: u64,
    pub offered: u64,
    /// Set when the stage ended for good, with why.
    pub ended: Option<String>,
}

/// A stage's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Ok,
    Degraded,
    Failing,
}

/// What the app is told.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HealthEvent {
    StageDegraded {
        stage: String,
        reason: String,
    },
    Unstable {
        stage: String,
        reason: String,
        window_s: f64,
        count: u64,
    },
    FallbackRecommended {
        stage: String,
        reason: String,
    },
    StageRecovered {
        stage: String,
    },
}

impl HealthEvent {
    /// The event's stable name (`unstable`, `fallback_recommended`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::StageDegraded { .. } => "stage_degraded",
            Self::Unstable { .. } => "unstable",
            Self::FallbackRecommended { .. } => "fallback_recommended",
            Self::StageRecovered { .. } => "stage_recovered",
        }
    }

    /// The event as one JSON object (its fields and `event`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One stage in the stats' `health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageHealth {
    pub stage: String,
    pub state: HealthState,
    /// Failures in the current window.
    pub failures: u64,
    pub last_reason: Option<String>,
}

struct Stage {
    name: String,
    kind: StageKind,
    state: HealthState,
    /// When each failure in the window was seen.
    failures: VecDeque<Instant>,
    last: Option<(u64, u64, u64)>,
    /// Cumulative (dropped, offered) over the last second: the drop ratio is taken over it.
    recent: VecDeque<(Instant, u64, u64)>,
    /// Since when drops are above the ratio (None: not dropping).
    dropping_since: Option<Instant>,
    /// Cumulative drops when dropping began.
    dropped_while: u64,
    /// Last failure, drop or end.
    trouble_at: Option<Instant>,
    last_reason: Option<String>,
    ended: bool,
}

/// The health of every stage of one run.
pub struct Health {
    cfg: HealthConfig,
    stages: Vec<Stage>,
    fallback_sent: bool,
}

impl Health {
    pub fn new(cfg: HealthConfig) -> Self {
        Self {
            cfg,
            stages: Vec::new(),
            fallback_sent: false,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// Whether a fallback was recommended in this run.
    pub fn fallback_recommended(&self) -> bool {
        self.fallback_sent
    }

    /// Take the readings of `now`; events in the order they happened. Stages not read again
    /// (an output removed) are forgotten.
    pub fn observe(&mut self, now: Instant, readings: &[StageReading]) -> Vec<HealthEvent> {
        let mut events = Vec::new();
        self.stages
            .retain(|s| readings.iter().any(|r| r.stage == s.name));
        for r in readings {
            let idx = match self.stages.iter().position(|s| s.name == r.stage) {
                Some(i) => i,
                None => {
                    self.stages.push(Stage {
                        name: r.stage.clone(),
                        kind: r.kind,
                        state: HealthState::Ok,
                        failures: VecDeque::new(),
                        last: None,
                        recent: VecDeque::new(),
                        dropping_since: None,
                        dropped_while: 0,
                        trouble_at: None,
                        last_reason: None,
                        ended: false,
                    });
                    self.stages.len() - 1
                }
            };
            let cfg = &self.cfg;
            let s = &mut self.stages[idx];
            step_stage(cfg, s, r, now, &mut events);
        }
        if !self.fallback_sent {
            let core = self
                .stages
                .iter()
                .find(|s| s.kind == StageKind::Core && s.state == HealthState::Failing);
            let outputs: Vec<&Stage> = self
                .stages
                .iter()
                .filter(|s| s.kind == StageKind::Output)
                .collect();
            let fallback = if let Some(s) = core {
                Some((s.name.clone(), s.last_reason.clone().unwrap_or_default()))
            } else if !outputs.is_empty() && outputs.iter().all(|s| s.state == HealthState::Failing)
            {
                Some(("outputs".to_string(), "every output is failing".to_string()))
            } else {
                None
            };
            if let Some((stage, reason)) = fallback {
                self.fallback_sent = true;
                events.push(HealthEvent::FallbackRecommended { stage, reason });
            }
        }
        events
    }

    /// Every stage's verdict, for the stats.
    pub fn snapshot(&self) -> Vec<StageHealth> {
        self.stages
            .iter()
            .map(|s| StageHealth {
                stage: s.name.clone(),
                state: s.state,
                failures: s.failures.len() as u64,
                last_reason: s.last_reason.clone(),
            })
            .collect()
    }
}

fn step_stage(
    cfg: &HealthConfig,
    s: &mut Stage,
    r: &StageReading,
    now: Instant,
    events: &mut Vec<HealthEvent>,
) {
    if s.ended {
        return;
    }
    let prev_failures = s.last.map(|l| l.0).unwrap_or(r.failures);
    s.last = Some((r.failures, r.dropped, r.offered));
    while s
        .failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > cfg.window)
    {
        s.failures.pop_front();
    }
    if let Some(why) = &r.ended {
        s.ended = true;
        s.last_reason = Some(why.clone());
        s.trouble_at = Some(now);
        if s.state != HealthState::Failing {
            s.state = HealthState::Failing;
            events.push(HealthEvent::Unstable {
                stage: s.name.clone(),
                reason: why.clone(),
                window_s: cfg.window.as_secs_f64(),
                count: s.failures.len() as u64 + 1,
            });
        }
        return;
    }
    let new_failures = r.failures.saturating_sub(prev_failures);
    for _ in 0..new_failures.min(1000) {
        s.failures.push_back(now);
    }
    if new_failures > 0 {
        s.trouble_at = Some(now);
        s.last_reason = Some(r.failure_reason.clone());
    }
    // Drops over the last second (one reading's interval is too short to judge a ratio).
    s.recent.push_back((now, r.dropped, r.offered));
    while s.recent.len() > 2
        && s.recent
            .get(1)
            .is_some_and(|x| now.duration_since(x.0) >= DROP_SPAN)
    {
        s.recent.pop_front();
    }
    let (dropped, offered) = match s.recent.front() {
        Some(&(t, d, o)) if now.duration_since(t) >= DROP_SPAN / 2 => {
            (r.dropped.saturating_sub(d), r.offered.saturating_sub(o))
        }
        _ => (0, 0),
    };
    let dropping = offered > 0 && dropped as f64 / offered as f64 > cfg.max_drop_ratio;
    if dropping {
        if s.dropping_since.is_none() {
            s.dropping_since = Some(now);
            // Cumulative drops when the span that first crossed the ratio began.
            s.dropped_while = r.dropped.saturating_sub(dropped);
        }
        s.trouble_at = Some(now);
        s.last_reason = Some("drops".into());
    } else if offered > 0 {
        s.dropping_since = None;
    }
    let count = s.failures.len() as u64;
    let unstable = if count >= cfg.max_failures as u64 {
        Some((r.failure_reason.clone(), count))
    } else if s
        .dropping_since
        .is_some_and(|t| now.duration_since(t) >= cfg.drop_sustain)
    {
        Some((
            "drops".to_string(),
            r.dropped.saturating_sub(s.dropped_while),
        ))
    } else {
        None
    };
    match (s.state, unstable) {
        (HealthState::Failing, _) => {}
        (_, Some((reason, count))) => {
            s.state = HealthState::Failing;
            s.last_reason = Some(reason.clone());
            events.push(HealthEvent::Unstable {
                stage: s.name.clone(),
                reason,
                window_s: cfg.window.as_secs_f64(),
                count,
            });
        }
        (HealthState::Ok, None) if new_failures > 0 || dropping => {
            s.state = HealthState::Degraded;
            events.push(HealthEvent::StageDegraded {
                stage: s.name.clone(),
                reason: s.last_reason.clone().unwrap_or_default(),
            });
        }
        _ => {}
    }
    // A whole window without trouble: back to ok (a failing core stage has already had its
    // fallback recommended; it may still recover if the app keeps the run).
    if s.state != HealthState::Ok
        && s.failures.is_empty()
        && s.trouble_at
            .is_some_and(|t| now.duration_since(t) >= cfg.window)
    {
        s.state = HealthState::Ok;
        s.dropping_since = None;
        events.push(HealthEvent::StageRecovered {
            stage: s.name.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(
        stage: &str,
        kind: StageKind,
        failures: u64,
        dropped: u64,
        offered: u64,
    ) -> StageReading {
        StageReading {
            stage: stage.into(),
            kind,
            failures,
            failure_reason: "reconnect".into(),
            dropped,
            offered,
            ended: None,
        }
    }

    fn names(e: &[HealthEvent]) -> Vec<&'static str> {
        e.iter().map(|e| e.name()).collect()
    }

    #[test]
    fn failures_degrade_then_make_unstable_then_recover_after_a_clean_window() {
        let mut h = Health::new(HealthConfig::default());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let rtmp = |f| {
            vec![
                reading("rtmp", StageKind::Output, f, 0, 0),
                reading("mp4", StageKind::Output, 0, 0, 0),
            ]
        };
        assert!(h.observe(at(0), &rtmp(0)).is_empty());
        assert_eq!(names(&h.observe(at(1), &rtmp(1))), ["stage_degraded"]);
        assert!(h.observe(at(5), &rtmp(2)).is_empty());
        let e = h.observe(at(9), &rtmp(3));
        assert_eq!(names(&e), ["unstable"]);
        assert!(matches!(&e[0], HealthEvent::Unstable { stage, count: 3, .. } if stage == "rtmp"));
        // One output of two failing recommends nothing.
        assert!(!h.fallback_recommended());
        assert_eq!(h.snapshot()[0].state, HealthState::Failing);
        // Failures age out; a whole window clean: recovered.
        assert!(h.observe(at(30), &rtmp(3)).is_empty());
        assert_eq!(names(&h.observe(at(40), &rtmp(3))), ["stage_recovered"]);
        assert_eq!(h.snapshot()[0].state, HealthState::Ok);
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_make_unstable() {
        let mut h = Health::new(HealthConfig::default());
        let t0 = Instant::now();
        let mut all = Vec::new();
        for i in 0..20u64 {
            let r = [reading("capture", StageKind::Core, i, 0, 0)];
            all.extend(h.observe(t0 + Duration::from_secs(i * 16), &r));
        }
        assert!(!names(&all).contains(&"unstable"), "{all:?}");
        assert!(!h.fallback_recommended());
    }

    #[test]
    fn sustained_drops_make_unstable_a_short_burst_does_not() {
        let cfg = HealthConfig::default();
        let mut h = Health::new(cfg.clone());
        let t0 = Instant::now();
        let (mut dropped, mut offered) = (0, 0);
        let mut events = Vec::new();
        // A 3 s burst of 50 % drops, then clean, then 50 % for 6 s.
        for tenth in 0..200u64 {
            offered += 3;
            if tenth < 30 || (100..160).contains(&tenth) {
                dropped += 2;
            }
            let r = [reading("encode", StageKind::Core, 0, dropped, offered)];
            for e in h.observe(t0 + Duration::from_millis(tenth * 100), &r) {
                events.push((tenth, e));
            }
        }
        let unstable: Vec<_> = events
            .iter()
            .filter(|(_, e)| e.name() == "unstable")
            .collect();
        assert_eq!(unstable.len(), 1, "{events:?}");
        let at = unstable[0].0;
        assert!(
            (150..=160).contains(&at),
            "unstable at {at}: 5 s after the drops began at 100"
        );
        // A core stage unstable: fallback right after, once.
        let fallback: Vec<_> = events
            .iter()
            .filter(|(_, e)| e.name() == "fallback_recommended")
            .collect();
        assert_eq!(fallback.len(), 1);
        assert_eq!(fallback[0].0, at);
    }

    #[test]
    fn a_core_stage_ending_recommends_fallback_and_every_output_failing_does_too() {
        let mut h = Health::new(HealthConfig::default());
        let now = Instant::now();
        let mut cap = reading("capture", StageKind::Core, 0, 0, 0);
        assert!(h.observe(now, std::slice::from_ref(&cap)).is_empty());
        cap.ended = Some("window closed".into());
        let e = h.observe(now, std::slice::from_ref(&cap));
        assert_eq!(names(&e), ["unstable", "fallback_recommended"]);
        assert_eq!(
            e[1],
            HealthEvent::FallbackRecommended {
                stage: "capture".into(),
                reason: "window closed".into()
            }
        );
        assert!(h.observe(now, &[cap]).is_empty(), "once");

        let mut h = Health::new(HealthConfig::default());
        let mut a = reading("rtmp", StageKind::Output, 0, 0, 0);
        let mut b = reading("whip", StageKind::Output, 0, 0, 0);
        a.ended = Some("refused".into());
        assert_eq!(
            names(&h.observe(now, &[a.clone(), b.clone()])),
            ["unstable"]
        );
        b.ended = Some("refused".into());
        assert_eq!(
            names(&h.observe(now, &[a, b])),
            ["unstable", "fallback_recommended"]
        );
    }

    #[test]
    fn a_steady_clean_run_says_nothing() {
        let mut h = Health::new(HealthConfig::default());
        let t0 = Instant::now();
        for i in 0..600u64 {
            let r = [
                reading("capture", StageKind::Core, 0, 0, i * 3),
                reading("encode", StageKind::Core, 0, i / 100, i * 3),
            ];
            assert!(h
                .observe(t0 + Duration::from_millis(i * 100), &r)
                .is_empty());
        }
        assert!(h.snapshot().iter().all(|s| s.state == HealthState::Ok));
    }
}
