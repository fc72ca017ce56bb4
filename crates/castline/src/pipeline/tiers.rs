//! The encode stage's tiers: the main encode (configured size, rate and bitrate; recordings
//! take it) and, only while some live sink cannot take that, a lower one whose size,
//! frame rate and bitrate follow the lowest such sink's target through the ladder (`adapt`).
//!
//! Without a configured `size`, the main tier follows the source's size (another window, a
//! resized one) while live outputs take it. Recordings and RTMP keep the size they started
//! with: while the two differ, a recording tier encodes that size for them (the one case where
//! a run pays two full encodes; it ends when the sizes agree again or the recordings end).
//!
//! Each tier converts the captured picture into its own encoder's planes (scaled when its size
//! differs) and encodes only the frames its frame rate keeps. Under CPU pressure the main tier's
//! ladder lowers the frame rate of every tier (never the main tier's size: recordings keep it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adapt::ladder::Change;
use crate::adapt::tier::{LOW, MAIN, RECORD};
use crate::adapt::{AdaptConfig, Ladder, LadderConfig, Level, Reason, TierDemand};
use crate::cadence::{Cadence, CadenceConfig, Decision};
use crate::capture::VideoFrame;
use crate::convert::Converter;
use crate::encode::{
    self, EncodedPacket, EncoderKind, EncoderSettings, VideoEncoder, VideoStreamInfo,
};
use crate::error::Result;

/// The low tier's VBV: a keyframe at most ~0.3 s of its bitrate, so it fits the queue of the
/// narrow link it is for (a 1 s one would be dropped there, and asked for again).
const LOW_TIER_VBV_S: f64 = 0.3;

/// How long the low tier keeps running after its last sink left it (no churn on a flapping link).
const LOW_LINGER: Duration = Duration::from_secs(2);

/// The `adaptation` block of the stats.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AdaptationReport {
    /// The main tier's level (0 = as configured; only CPU pressure lowers it).
    pub level: u8,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    /// What holds the main tier down (`cpu`), or null.
    pub reason: Option<Reason>,
    /// Share of the last second the encode thread spent converting and encoding.
    pub encode_load: f64,
    /// The lower tier, while some live sink takes it.
    pub low_tier: Option<LowTierReport>,
    /// Zero-hertz: the main tier sends only keep-alive frames (the picture is still). Shown at
    /// the top level of the stats as `encoder_idle`.
    #[serde(skip)]
    pub encoder_idle: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LowTierReport {
    pub level: u8,
    pub fps: u32,
    pub width: u32,
    pub height: u32,
    pub target_kbps: f64,
    pub reason: Option<Reason>,
}

struct Tier {
    layer: u8,
    encoder: Box<dyn VideoEncoder>,
    converter: Converter,
    converted: Option<u64>,
    /// Frame rate this tier keeps of the captured frames.
    fps: u32,
    /// The bitrate this tier should produce, bit/s.
    target_bps: u64,
    /// pts (µs) from which the next frame is due.
    next_due: i64,
    keyframe_pending: bool,
    /// Skipped frames since it last encoded: it restarts on a keyframe.
    idle: bool,
    /// Zero-hertz: which captured frames to encode (None: every frame it keeps).
    cadence: Option<Cadence>,
    /// Whether the last frame offered was encoded (a still run ends with one that was not).
    last_offered_encoded: bool,
}

impl Tier {
    fn new(
        layer: u8,
        encoder: Box<dyn VideoEncoder>,
        fps: u32,
        cadence: Option<CadenceConfig>,
    ) -> Self {
        let (w, h) = (encoder.info().width, encoder.info().height);
        Self {
            layer,
            encoder,
            converter: Converter::new(w, h),
            converted: None,
            fps,
            target_bps: 0,
            next_due: i64::MIN,
            keyframe_pending: false,
            idle: false,
            cadence: cadence.map(Cadence::new),
            last_offered_encoded: true,
        }
    }

    /// Encode `frame` if this tier keeps it: its cadence (zero-hertz) wants it and its frame
    /// rate keeps it. Returns whether it was encoded.
    fn offer(
        &mut self,
        frame: &VideoFrame,
        capture_us: i64,
        out: &mut Vec<EncodedPacket>,
    ) -> Result<bool> {
        let decision = match &self.cadence {
            Some(c) => c.decide(frame.pts_us, frame.content_id, self.keyframe_pending),
            None => Decision::Changed,
        };
        let encode = decision.encode() && self.due(frame.pts_us, capture_us);
        self.last_offered_encoded = encode;
        if !encode {
            return Ok(false);
        }
        self.encode(frame, out)?;
        if let Some(c) = &mut self.cadence {
            c.encoded(frame.pts_us, frame.content_id, decision);
        }
        Ok(true)
    }

    fn size(&self) -> (u32, u32) {
        (self.encoder.info().width, self.encoder.info().height)
    }

    /// Keep `fps` of the captured frames at `bps`. x264's rate control budgets bits per frame
    /// at the rate it was opened with, so a tier that keeps fewer frames asks it for more.
    fn set_rate(&mut self, fps: u32, bps: u64) {
        if (fps, bps) == (self.fps, self.target_bps) {
            return;
        }
        let open_fps = self.encoder.info().fps.max(1) as u64;
        let want = bps * open_fps / fps.max(1) as u64;
        let cur = self.encoder.info().bitrate as f64;
        if (want as f64 - cur).abs() > cur * 0.05 || fps != self.fps {
            self.encoder.set_bitrate(want);
        }
        self.fps = fps;
        self.target_bps = bps;
    }

    /// Whether the frame at `pts` is one this tier keeps (`capture_us`: the capture interval).
    fn due(&mut self, pts: i64, capture_us: i64) -> bool {
        if pts + capture_us / 2 < self.next_due {
            return false;
        }
        let interval = 1_000_000 / self.fps.max(1) as i64;
        self.next_due = if self.next_due == i64::MIN || pts - self.next_due > interval {
            pts + interval
        } else {
            self.next_due + interval
        };
        true
    }

    fn encode(&mut self, frame: &VideoFrame, out: &mut Vec<EncodedPacket>) -> Result<()> {
        if self.converted != Some(frame.content_id) {
            self.converter
                .convert(&frame.picture, self.encoder.input()?)?;
            self.converted = Some(frame.content_id);
        }
        let force = std::mem::take(&mut self.keyframe_pending) || std::mem::take(&mut self.idle);
        let start = out.len();
        self.encoder.encode(frame.pts_us, force, out)?;
        for p in &mut out[start..] {
            p.layer = self.layer;
        }
        Ok(())
    }
}

/// Frames a new source size must last before the main tier follows it (a window being dragged
/// to a new size reports many sizes; each reopen costs a keyframe).
const FOLLOW_AFTER_FRAMES: u32 = 3;

type PendingEncoder =
    std::thread::JoinHandle<std::result::Result<Box<dyn VideoEncoder>, crate::error::EncodeError>>;

/// Which outputs the run has now (they come and go while it runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputMix {
    /// Outputs that keep one size (recordings, RTMP).
    pub fixed: bool,
    /// Outputs that can follow the source's size (WebRTC, plain RTP).
    pub live: bool,
}

/// Every tier of the encode stage, and the policy that starts, sizes and stops them.
pub struct Tiers {
    adapt: AdaptConfig,
    settings: EncoderSettings,
    capture_fps: u32,
    /// The frame rate the API allows at most (`Control::set_fps`).
    max_fps: u32,
    /// Zero-hertz as configured, and as in effect (only while every output takes a variable
    /// frame rate).
    zero_hertz: Option<CadenceConfig>,
    cadence: Option<CadenceConfig>,
    cadence_decided: bool,
    /// The main tier follows the source's size while live outputs take it (no `--size`).
    follow_source: bool,
    pending_size: Option<((u32, u32), u32)>,
    main: Tier,
    main_ladder: Ladder,
    low: Option<Tier>,
    low_ladder: Ladder,
    low_target: Option<(u64, Reason)>,
    low_unused_since: Option<Instant>,
    /// The size recordings keep; a tier of its own encodes it while the main tier follows a
    /// source of another size.
    record_size: (u32, u32),
    record: Option<Tier>,
    record_wanted: bool,
    /// The encoder being opened for a new main-tier size.
    opening: Option<((u32, u32), PendingEncoder)>,
    moved_recordings: Option<u8>,
    busy_us: u64,
    /// Main-tier bytes in this window, and its rate over the last two windows.
    main_bytes: u64,
    main_rates: [u64; 2],
    window_start: Instant,
    evictions_seen: u64,
    report: Arc<Mutex<AdaptationReport>>,
}

impl Tiers {
    pub fn new(
        encoder: Box<dyn VideoEncoder>,
        cfg: &crate::pipeline::PipelineConfig,
        report: Arc<Mutex<AdaptationReport>>,
    ) -> Self {
        let (w, h) = (encoder.info().width, encoder.info().height);
        let adapt = cfg.adapt.clone();
        let capture_fps = cfg.fps;
        let ladder = |allow_resize| {
            Ladder::new(LadderConfig {
                width: w,
                height: h,
                fps: capture_fps,
                min_fps: adapt.min_fps,
                min_height: adapt.min_height.min(h),
                allow_resize,
            })
        };
        let main_ladder = ladder(false);
        let low_ladder = ladder(true);
        let tiers = Self {
            main: Tier::new(MAIN, encoder, capture_fps, None),
            zero_hertz: cfg.zero_hertz,
            cadence: None,
            cadence_decided: false,
            follow_source: cfg.size.is_none(),
            pending_size: None,
            main_ladder,
            low: None,
            low_ladder,
            low_target: None,
            low_unused_since: None,
            record_size: (w, h),
            record: None,
            record_wanted: false,
            opening: None,
            moved_recordings: None,
            settings: cfg.encoder.clone(),
            adapt,
            capture_fps,
            max_fps: capture_fps,
            busy_us: 0,
            main_bytes: 0,
            main_rates: [0; 2],
            window_start: Instant::now(),
            evictions_seen: 0,
            report,
        };
        tiers.publish(0.0);
        tiers
    }

    /// The bitrate and highest frame rate the API set (checked against its bounds there).
    pub fn set_limits(&mut self, bitrate: u64, max_fps: u32) {
        self.settings.bitrate = bitrate;
        self.max_fps = max_fps.clamp(1, self.capture_fps);
    }

    /// Zero-hertz is on only while every output takes a variable frame rate: one encode feeds
    /// every output, and a constant-rate output (RTMP, a recording without `vfr_recordings`)
    /// needs every frame — what a second, zero-hertz encode would save is less than it costs.
    pub fn set_zero_hertz(&mut self, all_outputs_vfr: bool) {
        let want = self.zero_hertz.filter(|_| all_outputs_vfr);
        if self.cadence_decided && want.is_some() == self.cadence.is_some() {
            return;
        }
        self.cadence_decided = true;
        self.cadence = want;
        for t in [
            Some(&mut self.main),
            self.low.as_mut(),
            self.record.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            t.cadence = want.map(Cadence::new);
        }
        match (&self.zero_hertz, &want) {
            (_, Some(c)) => tracing::info!(
                refresh_frames = c.refresh_frames,
                idle_fps = c.idle_fps,
                "zero_hertz_on"
            ),
            (Some(_), None) => tracing::info!(
                reason =
                    "an output needs a constant frame rate (RTMP, or a recording without --vfr)",
                "zero_hertz_off"
            ),
            (None, None) => {}
        }
    }

    /// The parameters of the main tier's stream and, while it exists, the recording tier's.
    pub fn streams(&self) -> (VideoStreamInfo, Option<VideoStreamInfo>) {
        (
            self.main.encoder.info().clone(),
            self.record.as_ref().map(|t| t.encoder.info().clone()),
        )
    }

    /// Whether recordings take their own tier now (the main one follows another size).
    pub fn record_wanted(&self) -> bool {
        self.record_wanted
    }

    /// Ask every tier for a keyframe at its next frame.
    pub fn request_keyframe(&mut self, layer: Option<u8>) {
        if layer.is_none_or(|l| l == MAIN) {
            self.main.keyframe_pending = true;
        }
        if let Some(low) = &mut self.low {
            if layer.is_none_or(|l| l == LOW) {
                low.keyframe_pending = true;
            }
        }
        if let Some(rec) = &mut self.record {
            if layer.is_none_or(|l| l == RECORD) {
                rec.keyframe_pending = true;
            }
        }
    }

    /// Sizes before anything else: the main tier follows the captured picture's size while live
    /// outputs take it (a new keyframe with new parameter sets); recordings keep the size they
    /// started with. When the main tier moves away from that size, its encoder carries on as
    /// the recording tier (recordings see no break, not even a keyframe) and a new one, opened
    /// on a helper thread so the encode never stalls, becomes the main tier; when the source
    /// comes back to that size, the recording tier becomes the main one again. Returns whether
    /// a stream's parameters changed (outputs opened from now on must be told).
    pub fn fit_sizes(&mut self, picture: (u32, u32), mix: OutputMix) -> Result<bool> {
        if !mix.fixed {
            self.record_size = self.main.size();
        }
        let want = if self.follow_source && mix.live {
            crate::convert::even_crop(picture.0, picture.1)
        } else {
            self.record_size
        };
        let mut changed = false;
        if want == self.main.size() {
            self.pending_size = None;
            self.opening = None;
        } else {
            let seen = match self.pending_size {
                Some((s, n)) if s == want => n + 1,
                _ => 1,
            };
            self.pending_size = Some((want, seen));
            let back_to_record = self.record.is_some() && want == self.record_size;
            if !back_to_record && self.opening.as_ref().is_none_or(|(s, _)| *s != want) {
                self.opening = Some((want, self.open_in_background(want)?));
            }
            if seen >= FOLLOW_AFTER_FRAMES {
                if back_to_record {
                    self.record_becomes_main();
                    changed = true;
                } else if self.opening.as_ref().is_some_and(|(_, h)| h.is_finished()) {
                    if let Some((_, h)) = self.opening.take() {
                        let enc = h.join().unwrap_or_else(|_| {
                            Err(crate::error::EncodeError::Failed(
                                "encoder open panicked".into(),
                            ))
                        })?;
                        self.install_main(enc, mix.fixed);
                        changed = true;
                    }
                }
            }
        }
        self.record_wanted = mix.fixed && self.main.size() != self.record_size;
        if self.record_wanted && self.record.is_none() {
            let (w, h) = self.record_size;
            let enc = encode::open_video_encoder(
                &self.tier_settings(self.settings.bitrate, self.settings.vbv_s),
                w,
                h,
                self.capture_fps,
            )?;
            tracing::info!(tier = "record", width = w, height = h, "tier_started");
            self.record = Some(Tier::new(RECORD, enc, self.capture_fps, self.cadence));
            changed = true;
        }
        Ok(changed)
    }

    /// When the last `fit_sizes` moved recordings' encoder to another tier without a keyframe:
    /// the tier their routes now point at (the caller moves them at once).
    pub fn take_moved_recordings(&mut self) -> Option<u8> {
        self.moved_recordings.take()
    }

    fn open_in_background(&self, (w, h): (u32, u32)) -> Result<PendingEncoder> {
        let settings = self.tier_settings(self.settings.bitrate, self.settings.vbv_s);
        let fps = self.capture_fps;
        std::thread::Builder::new()
            .name("castline-encoder-open".into())
            .spawn(move || encode::open_video_encoder(&settings, w, h, fps))
            .map_err(|e| crate::error::Error::Internal(format!("cannot start a thread: {e}")))
    }

    fn install_main(&mut self, enc: Box<dyn VideoEncoder>, fixed: bool) {
        let (w, h) = (enc.info().width, enc.info().height);
        let from = self.main.size();
        tracing::info!(
            tier = "main",
            from_width = from.0,
            from_height = from.1,
            width = w,
            height = h,
            "tier_resized"
        );
        let mut old = std::mem::replace(
            &mut self.main,
            Tier::new(MAIN, enc, self.capture_fps, self.cadence),
        );
        if fixed && self.record.is_none() && old.size() == self.record_size {
            tracing::info!(
                tier = "record",
                width = from.0,
                height = from.1,
                "tier_started"
            );
            old.layer = RECORD;
            self.record = Some(old);
            self.moved_recordings = Some(RECORD);
        }
        self.reset_ladders();
    }

    fn record_becomes_main(&mut self) {
        let Some(mut rec) = self.record.take() else {
            return;
        };
        let (w, h) = rec.size();
        tracing::info!(tier = "main", width = w, height = h, "tier_resized");
        rec.layer = MAIN;
        // Live outputs were on another stream: they start this one at a keyframe.
        rec.keyframe_pending = true;
        // Replacing the main tier drops its old encoder: trim after that, not before.
        self.main = rec;
        tier_stopped("record");
        self.moved_recordings = Some(MAIN);
        self.opening = None;
        self.reset_ladders();
    }

    fn reset_ladders(&mut self) {
        self.main_ladder = Ladder::new(LadderConfig {
            allow_resize: false,
            ..self.low_ladder_config()
        });
        // The low tier is sized from the main one: it starts again from the new size.
        if self.low.take().is_some() {
            tier_stopped("low");
        }
        self.low_ladder = Ladder::new(self.low_ladder_config());
    }

    /// Settings of a tier opened while running: the encoder the main tier resolved to, with
    /// parameter sets in-band (its stream's differ from the ones the outputs were opened with).
    fn tier_settings(&self, bitrate: u64, vbv_s: f64) -> EncoderSettings {
        EncoderSettings {
            kind: match self.main.encoder.info().encoder_name.as_str() {
                "libx264" => EncoderKind::X264,
                _ => self.settings.kind,
            },
            bitrate,
            inband_headers: true,
            vbv_s,
            ..self.settings.clone()
        }
    }

    /// Read what the outputs ask for and start, resize, re-rate or stop the low tier.
    pub fn plan<'a>(
        &mut self,
        now: Instant,
        demands: impl IntoIterator<Item = &'a TierDemand>,
    ) -> Result<()> {
        if !self.adapt.enabled {
            return Ok(());
        }
        let low = demands
            .into_iter()
            .filter_map(|d| d.low())
            .min_by_key(|(bps, _)| *bps);
        self.low_target = low;
        match low {
            Some((bps, reason)) => {
                self.low_unused_since = None;
                if let Some(c) = self.low_ladder.on_target(now, bps, reason) {
                    log_change("low", &c);
                }
                self.fit_low_tier(bps)?;
            }
            None if self.low.is_some() => {
                let since = *self.low_unused_since.get_or_insert(now);
                if now.duration_since(since) >= LOW_LINGER {
                    self.low = None;
                    self.low_ladder = Ladder::new(self.low_ladder_config());
                    self.low_unused_since = None;
                    tier_stopped("low");
                }
            }
            None => {}
        }
        Ok(())
    }

    fn low_ladder_config(&self) -> LadderConfig {
        let info = self.main.encoder.info();
        LadderConfig {
            width: info.width,
            height: info.height,
            fps: self.capture_fps,
            min_fps: self.adapt.min_fps,
            min_height: self.adapt.min_height.min(info.height),
            allow_resize: true,
        }
    }

    /// The low tier at the ladder's level and `bps`: opened, reopened at a new size (a keyframe
    /// with new parameter sets), or re-rated in place.
    fn fit_low_tier(&mut self, bps: u64) -> Result<()> {
        let level = self.low_ladder.level();
        let fps = level.fps.min(self.main_fps());
        let size = (level.width, level.height);
        match &mut self.low {
            Some(t) if t.size() == size => t.set_rate(fps, bps),
            _ => {
                let settings = self.tier_settings(bps, LOW_TIER_VBV_S);
                let enc = encode::open_video_encoder(&settings, size.0, size.1, fps)?;
                tracing::info!(
                    tier = "low",
                    width = size.0,
                    height = size.1,
                    fps,
                    kbps = bps / 1000,
                    "tier_started"
                );
                let mut tier = Tier::new(LOW, enc, fps, self.cadence);
                tier.target_bps = bps;
                self.low = Some(tier);
            }
        }
        Ok(())
    }

    /// The main tier's frame rate: the ladder's (CPU pressure), at most what the API allows.
    fn main_fps(&self) -> u32 {
        self.main_ladder.level().fps.min(self.max_fps)
    }

    /// Encode `frame` on every tier that needs it and keeps it; packets are tagged with their
    /// tier. `record_needed`: some recording still takes the recording tier.
    pub fn encode(
        &mut self,
        frame: &VideoFrame,
        main_needed: bool,
        record_needed: bool,
        out: &mut Vec<EncodedPacket>,
    ) -> Result<()> {
        let t0 = Instant::now();
        let capture_us = 1_000_000 / self.capture_fps.max(1) as i64;
        // The main tier runs unless every sink is on the low tier.
        let main_needed = main_needed || self.low.is_none();
        let main_fps = self.main_fps();
        self.main.set_rate(main_fps, self.settings.bitrate);
        if main_needed {
            let start = out.len();
            if self.main.offer(frame, capture_us, out)? {
                self.main_bytes += out[start..]
                    .iter()
                    .map(|p| p.data.len() as u64)
                    .sum::<u64>();
            }
        } else {
            self.main.idle = true;
        }
        if let Some(low) = &mut self.low {
            low.offer(frame, capture_us, out)?;
        }
        if !record_needed && !self.record_wanted && self.record.take().is_some() {
            tier_stopped("record");
        }
        if let Some(rec) = &mut self.record {
            rec.set_rate(main_fps, self.settings.bitrate);
            rec.offer(frame, capture_us, out)?;
        }
        self.busy_us += t0.elapsed().as_micros() as u64;
        Ok(())
    }

    /// Once a second: CPU pressure on the ladder, and the stats report; returns the main tier's
    /// send rate (the higher of the last two seconds, so a keyframe-free second does not look
    /// like spare capacity; the configured bitrate while the main tier was idle). `evictions`:
    /// raw frames evicted so far.
    pub fn tick(&mut self, now: Instant, evictions: u64) -> Option<u64> {
        let elapsed = now.duration_since(self.window_start);
        if elapsed < Duration::from_secs(1) {
            return None;
        }
        let rate = if self.main.idle {
            self.settings.bitrate
        } else {
            (self.main_bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64
        };
        self.main_rates = [self.main_rates[1], rate];
        self.main_bytes = 0;
        let load = self.busy_us as f64 / elapsed.as_micros().max(1) as f64;
        let evicting = evictions > self.evictions_seen + 1;
        self.evictions_seen = evictions;
        self.busy_us = 0;
        self.window_start = now;
        if self.adapt.enabled {
            if let Some(c) = self.main_ladder.on_cpu(now, load, evicting) {
                log_change("main", &c);
            }
        }
        self.publish(load);
        Some(self.main_rates[0].max(self.main_rates[1]).max(1))
    }

    fn publish(&self, load: f64) {
        let m = self.main_ladder.level();
        let info = self.main.encoder.info();
        let report = AdaptationReport {
            level: m.level,
            fps: m.fps.min(self.max_fps),
            width: info.width,
            height: info.height,
            reason: self.main_ladder.reason(),
            encode_load: (load * 100.0).round() / 100.0,
            low_tier: self.low.as_ref().map(|t| {
                let l: Level = self.low_ladder.level();
                LowTierReport {
                    level: l.level,
                    fps: t.fps,
                    width: t.size().0,
                    height: t.size().1,
                    target_kbps: (t.target_bps as f64 / 1000.0).round(),
                    reason: self.low_target.map(|(_, r)| r).or(self.low_ladder.reason()),
                }
            }),
            // Idle: no sink takes the main tier, or zero-hertz keeps it at keep-alive frames
            // (and no low tier is busy).
            encoder_idle: (self.main.idle || self.main.cadence.as_ref().is_some_and(|c| c.idle()))
                && self
                    .low
                    .as_ref()
                    .is_none_or(|t| t.cadence.as_ref().is_some_and(|c| c.idle())),
        };
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }

    /// End of stream. A zero-hertz run that ends on a still picture encodes its last frame, so
    /// a variable-frame-rate recording lasts exactly as long as the run.
    pub fn flush(&mut self, last: Option<&VideoFrame>, out: &mut Vec<EncodedPacket>) -> Result<()> {
        for t in [Some(&mut self.main), self.record.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(f) = last {
                if t.cadence.is_some() && !t.last_offered_encoded && !t.idle {
                    t.encode(f, out)?;
                }
            }
            let start = out.len();
            t.encoder.flush(out)?;
            for p in &mut out[start..] {
                p.layer = t.layer;
            }
        }
        if let Some(low) = &mut self.low {
            let start = out.len();
            low.encoder.flush(out)?;
            for p in &mut out[start..] {
                p.layer = LOW;
            }
        }
        Ok(())
    }
}

/// A tier's encoder has just been dropped. An x264 instance frees tens of MiB of frame buffers;
/// glibc keeps freed memory in its arenas, so a long run that starts and stops tiers would
/// hold on to it (RSS rising in steps in the soak benchmark). Hand it back to the system.
fn tier_stopped(tier: &'static str) {
    tracing::info!(tier, "tier_stopped");
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn log_change(tier: &'static str, c: &Change) {
    let (from, to, reason) = (c.from, c.to, c.reason.as_str());
    if c.degraded() {
        tracing::warn!(
            tier,
            reason,
            level = to.level,
            fps = to.fps,
            width = to.width,
            height = to.height,
            from_level = from.level,
            "degraded"
        );
    } else {
        tracing::info!(
            tier,
            reason,
            level = to.level,
            fps = to.fps,
            width = to.width,
            height = to.height,
            from_level = from.level,
            "recovered"
        );
    }
}
