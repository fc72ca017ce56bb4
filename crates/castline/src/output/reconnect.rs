//! When a session-based live output (WHIP, LiveKit) tries again after losing its session, and
//! when it gives up: the `--reconnect-*` backoff as state, time passed in.

use std::time::Instant;

use super::{LinkReport, RtmpOptions};
use crate::error::OutputError;

pub struct Reconnect {
    opts: RtmpOptions,
    /// Next attempt while the session is down.
    retry_at: Option<Instant>,
    attempts: u32,
    /// What stats show.
    pub link: LinkReport,
}

impl Reconnect {
    pub fn new(opts: RtmpOptions) -> Self {
        Self {
            opts,
            retry_at: None,
            attempts: 0,
            link: LinkReport::default(),
        }
    }

    /// The session was lost: try again after the first delay.
    pub fn lost(&mut self, now: Instant) {
        self.link.reconnecting = true;
        self.retry_at = Some(now + self.opts.reconnect_delay);
    }

    /// Whether to attempt a new session now (counted as an attempt when it is).
    pub fn due(&mut self, now: Instant) -> bool {
        let Some(at) = self.retry_at else {
            self.retry_at = Some(now);
            return false;
        };
        if now < at {
            return false;
        }
        self.attempts += 1;
        true
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn succeeded(&mut self) {
        self.link.reconnecting = false;
        self.link.reconnects += 1;
        self.attempts = 0;
        self.retry_at = None;
    }

    /// An attempt failed: schedule the next one, or give up (a fatal error, or out of tries).
    pub fn failed(&mut self, now: Instant, url: String, e: OutputError) -> Result<(), OutputError> {
        self.link.last_error = Some((&e).into());
        if e.class() == crate::ErrorClass::Fatal || self.attempts >= self.opts.reconnect_tries {
            return Err(OutputError::GaveUp {
                url,
                attempts: self.attempts,
                last: e.to_string(),
            });
        }
        self.retry_at = Some(now + self.opts.backoff(self.attempts));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backs_off_then_gives_up() {
        let opts = RtmpOptions {
            reconnect_delay: Duration::from_secs(1),
            reconnect_tries: 2,
            ..RtmpOptions::default()
        };
        let mut r = Reconnect::new(opts);
        let t0 = Instant::now();
        r.lost(t0);
        assert!(r.link.reconnecting);
        assert!(!r.due(t0));
        assert!(r.due(t0 + Duration::from_secs(1)));
        let refused = || OutputError::Refused { url: "u".into() };
        assert!(r.failed(t0, "u".into(), refused()).is_ok());
        assert!(!r.due(t0 + Duration::from_millis(1100)));
        assert!(r.due(t0 + Duration::from_secs(5)));
        assert!(matches!(
            r.failed(t0, "u".into(), refused()),
            Err(OutputError::GaveUp { attempts: 2, .. })
        ));
        r.succeeded();
        assert_eq!((r.link.reconnects, r.attempts()), (1, 0));
        let fatal = OutputError::Rejected {
            url: "u".into(),
            reason: "401".into(),
        };
        assert!(!r.due(t0));
        assert!(r.due(t0));
        assert!(r.failed(t0, "u".into(), fatal).is_err());
    }
}
