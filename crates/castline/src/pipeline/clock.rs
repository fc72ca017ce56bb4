//! The one clock every timestamp in a pipeline comes from.
//!
//! Timestamps are microseconds since the pipeline started, read from the monotonic clock, so they
//! never jump. The wall-clock instant of the start is kept too, so a media timestamp can be turned
//! into UNIX time (embedded by `testsrc`, and later used for RTCP sender reports).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct MediaClock {
    start: Instant,
    wall_start_us: u64,
}

impl MediaClock {
    pub fn new() -> Self {
        let wall_start_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Self {
            start: Instant::now(),
            wall_start_us,
        }
    }

    /// Microseconds since the pipeline started.
    pub fn now_us(&self) -> i64 {
        self.start.elapsed().as_micros() as i64
    }

    /// The monotonic instant that corresponds to media time `t_us`.
    pub fn instant_at(&self, t_us: i64) -> Instant {
        self.start + Duration::from_micros(t_us.max(0) as u64)
    }

    /// UNIX time (µs) of media time `t_us`.
    pub fn wall_us(&self, t_us: i64) -> u64 {
        self.wall_start_us.saturating_add_signed(t_us)
    }
}

impl Default for MediaClock {
    fn default() -> Self {
        Self::new()
    }
}
