//! Zero-hertz screen sharing, as policy only: which captured frames to encode.
//!
//! Capture runs at a constant rate and repeats the last picture when the screen did not change.
//! Outputs that carry their own timestamps (WebRTC, plain RTP, a `--vfr` recording) need no
//! constant rate, so for them an encode tier asks a [`Cadence`] per frame (time and content id
//! in, a decision out), as libwebrtc's frame cadence adapter does in its zero-hertz mode:
//!
//! 1. a frame whose content changed is encoded at once (no added latency);
//! 2. once the picture has been still for [`CadenceConfig::refresh_after_us`],
//!    [`CadenceConfig::refresh_frames`] repeats are encoded at the capture rate: the encoder spends
//!    the bits it saved on refining the still picture, so text sharpens within a fraction of a
//!    second. While changes keep coming (someone types), only the changes are encoded: each
//!    P-frame refines the rest of the picture anyway;
//! 3. then only a keep-alive repeat every `1 / idle_fps` s, so receivers and SFUs never take the
//!    track for dead;
//! 4. a keyframe request (a viewer joined) is served on the next frame, whatever the phase.

/// Zero-hertz settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CadenceConfig {
    /// Repeats encoded at the capture rate after the last change (quality refinement).
    pub refresh_frames: u32,
    /// How long the picture must stay still before refinement starts, µs.
    pub refresh_after_us: i64,
    /// Keep-alive frames per second while the picture stays still (> 0).
    pub idle_fps: f64,
}

impl Default for CadenceConfig {
    fn default() -> Self {
        Self {
            refresh_frames: 15,
            refresh_after_us: 150_000,
            idle_fps: 1.0,
        }
    }
}

/// Why a frame is encoded, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// New content.
    Changed,
    /// A repeat that refines the still picture.
    Refresh,
    /// A repeat that keeps receivers alive.
    KeepAlive,
    /// A repeat encoded because a keyframe was asked for.
    Keyframe,
    Skip,
}

impl Decision {
    pub fn encode(self) -> bool {
        self != Decision::Skip
    }
}

/// The zero-hertz state of one encode tier.
#[derive(Debug, Clone)]
pub struct Cadence {
    cfg: CadenceConfig,
    /// Content id of the last frame encoded.
    last_content: Option<u64>,
    last_encoded_us: i64,
    /// When the content last changed (an encoded change).
    last_change_us: i64,
    refresh_left: u32,
}

impl Cadence {
    pub fn new(cfg: CadenceConfig) -> Self {
        Self {
            cfg,
            last_content: None,
            last_encoded_us: i64::MIN,
            last_change_us: i64::MIN,
            refresh_left: 0,
        }
    }

    /// What to do with the frame at `pts_us` showing `content_id`. Nothing changes until
    /// [`Cadence::encoded`] says the frame was encoded (a tier may still decline it).
    pub fn decide(&self, pts_us: i64, content_id: u64, keyframe_wanted: bool) -> Decision {
        if self.last_content != Some(content_id) {
            return Decision::Changed;
        }
        if keyframe_wanted {
            return Decision::Keyframe;
        }
        if self.refresh_left > 0
            && pts_us.saturating_sub(self.last_change_us) >= self.cfg.refresh_after_us
        {
            return Decision::Refresh;
        }
        let period = (1_000_000.0 / self.cfg.idle_fps.max(0.01)) as i64;
        // Half a capture interval of slack would need the capture rate; 10 ms covers jitter.
        if pts_us.saturating_sub(self.last_encoded_us) + 10_000 >= period {
            return Decision::KeepAlive;
        }
        Decision::Skip
    }

    /// The frame decided on was encoded.
    pub fn encoded(&mut self, pts_us: i64, content_id: u64, decision: Decision) {
        match decision {
            Decision::Changed => {
                self.refresh_left = self.cfg.refresh_frames;
                self.last_change_us = pts_us;
            }
            Decision::Refresh => self.refresh_left = self.refresh_left.saturating_sub(1),
            _ => {}
        }
        self.last_content = Some(content_id);
        self.last_encoded_us = pts_us;
    }

    /// Whether the tier only sends keep-alive frames now (stats: `encoder_idle`).
    pub fn idle(&self) -> bool {
        self.last_content.is_some() && self.refresh_left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: i64 = 33_333;

    /// Feed `frames` captured frames at 30 fps; `content(i)` is frame i's content id. Returns
    /// the decisions.
    fn run(c: &mut Cadence, frames: i64, content: impl Fn(i64) -> u64) -> Vec<Decision> {
        (0..frames)
            .map(|i| {
                let (pts, id) = (i * TICK, content(i));
                let d = c.decide(pts, id, false);
                if d.encode() {
                    c.encoded(pts, id, d);
                }
                d
            })
            .collect()
    }

    #[test]
    fn a_still_screen_refines_then_idles_at_the_keep_alive_rate() {
        let mut c = Cadence::new(CadenceConfig::default());
        let d = run(&mut c, 300, |_| 1);
        assert_eq!(d[0], Decision::Changed);
        // Still for 150 ms (frames 1–4), then 15 refinements at the capture rate.
        assert!(
            d[1..5].iter().all(|d| *d == Decision::Skip),
            "{:?}",
            &d[..6]
        );
        assert!(d[5..20].iter().all(|d| *d == Decision::Refresh));
        let encoded_after = d[20..].iter().filter(|d| d.encode()).count();
        // 280 frames ≈ 9.3 s at 1 fps keep-alive.
        assert!((8..=10).contains(&encoded_after), "{encoded_after}");
        assert!(d[20..]
            .iter()
            .all(|d| matches!(d, Decision::Skip | Decision::KeepAlive)));
        assert!(c.idle());
    }

    #[test]
    fn a_change_is_encoded_on_the_frame_that_shows_it() {
        let mut c = Cadence::new(CadenceConfig::default());
        let d = run(&mut c, 200, |i| if i < 100 { 1 } else { 2 });
        assert_eq!(d[100], Decision::Changed);
        assert!(d[105..120].iter().all(|d| *d == Decision::Refresh));
        let keep_alives = d[120..].iter().filter(|d| d.encode()).count();
        assert!((2..=3).contains(&keep_alives), "{keep_alives}");
        assert!(c.idle());
    }

    #[test]
    fn while_someone_types_only_the_changes_are_encoded() {
        let mut c = Cadence::new(CadenceConfig::default());
        // A keystroke every third frame (10 a second) for 3 s.
        let d = run(&mut c, 90, |i| (i / 3) as u64);
        let encoded = d.iter().filter(|d| d.encode()).count();
        assert_eq!(encoded, 30, "{d:?}");
        assert!(d
            .iter()
            .all(|d| matches!(d, Decision::Changed | Decision::Skip)));
    }

    #[test]
    fn moving_content_is_encoded_every_frame() {
        let mut c = Cadence::new(CadenceConfig::default());
        let d = run(&mut c, 90, |i| i as u64);
        assert!(d.iter().all(|d| *d == Decision::Changed));
        assert!(!c.idle());
    }

    #[test]
    fn a_keyframe_request_is_served_on_the_next_frame_while_idle() {
        let mut c = Cadence::new(CadenceConfig::default());
        run(&mut c, 60, |_| 7);
        assert!(c.idle());
        let pts = 60 * TICK;
        assert_eq!(c.decide(pts, 7, false), Decision::Skip);
        assert_eq!(c.decide(pts, 7, true), Decision::Keyframe);
    }

    #[test]
    fn the_keep_alive_rate_is_configurable() {
        let mut c = Cadence::new(CadenceConfig {
            refresh_frames: 0,
            idle_fps: 5.0,
            ..CadenceConfig::default()
        });
        let d = run(&mut c, 301, |_| 1);
        let n = d.iter().filter(|d| d.encode()).count();
        assert!((49..=52).contains(&n), "{n}");
    }
}
