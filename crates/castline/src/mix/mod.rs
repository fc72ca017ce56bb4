//! Audio mixing: the audio clock master.
//!
//! Every captured stream writes into a [`Lane`]: 48 kHz stereo float samples placed on the
//! pipeline's sample timeline (sample `n` is at `n / 48000` s of the pipeline clock, the clock
//! video frames are stamped with). Capture backends convert and resample to that format (PulseAudio
//! does it server-side) and give the capture time of each chunk; the lane keeps chunks contiguous
//! and re-anchors only when the device clock has drifted away from the pipeline clock.
//!
//! The mixer never waits for a source: on a fixed schedule it takes one frame from every lane,
//! fills what a lane lacks with silence (underrun, unplugged device, application not playing),
//! applies each input's gain, sums and clamps. So audio output never stalls and never drifts,
//! whatever the sources do.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const SAMPLE_RATE: u32 = 48_000;
pub const CHANNELS: usize = 2;

/// Pipeline time (µs) of sample index `n`.
pub fn sample_to_us(n: i64) -> i64 {
    (n as i128 * 1_000_000 / SAMPLE_RATE as i128) as i64
}

/// Sample index at pipeline time `us` (rounded to nearest).
pub fn us_to_sample(us: i64) -> i64 {
    ((us as i128 * SAMPLE_RATE as i128 + 500_000).div_euclid(1_000_000)) as i64
}

/// A chunk whose capture time disagrees with the lane's running position by more than this is
/// re-anchored at once (a discontinuity: device suspended, stream restarted).
const RESYNC_JUMP: i64 = SAMPLE_RATE as i64 / 10; // 100 ms
/// A smoothed disagreement above this is clock drift: re-anchor (one small glitch).
const RESYNC_DRIFT: f64 = SAMPLE_RATE as f64 / 50.0; // 20 ms
/// A lane holds at most this much audio; older samples are dropped (a source far ahead of the
/// mixer, which should not happen with sane timestamps).
const MAX_BUFFERED: usize = 2 * SAMPLE_RATE as usize;

#[derive(Default)]
struct LaneState {
    /// Interleaved stereo samples; `start` is the sample index of the first frame.
    samples: VecDeque<f32>,
    start: i64,
    /// Sample index the next pushed chunk continues from (None until the first chunk).
    next: Option<i64>,
    /// Smoothed (measured - expected) position, in samples.
    drift: f64,
}

/// Counters of one lane, read by stats.
#[derive(Default)]
pub struct LaneCounters {
    /// Frames (stereo samples) received from the device.
    pub captured: AtomicU64,
    /// Frames the mixer had to fill with silence while the lane was live.
    pub underrun: AtomicU64,
    /// Frames that arrived after the mixer had passed their time.
    pub late: AtomicU64,
    pub resyncs: AtomicU64,
    /// Peak absolute sample value of the last mixed frame ×1e6 (for a level meter).
    pub peak_ppm: AtomicU64,
}

/// One captured stream's buffer between its capture thread and the mixer.
pub struct Lane {
    pub name: String,
    state: Mutex<LaneState>,
    /// False once the stream is gone (device unplugged, application stopped): the mixer fills
    /// silence without counting underruns.
    live: AtomicBool,
    pub counters: LaneCounters,
}

impl Lane {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            state: Mutex::new(LaneState::default()),
            live: AtomicBool::new(true),
            counters: LaneCounters::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
        if !live {
            // The next chunk (a restarted stream) anchors afresh.
            self.lock().next = None;
        }
    }

    /// Append interleaved stereo samples whose first frame was captured at pipeline sample index
    /// `at`.
    pub fn push(&self, at: i64, data: &[f32]) {
        let frames = (data.len() / CHANNELS) as i64;
        if frames == 0 {
            return;
        }
        self.counters
            .captured
            .fetch_add(frames as u64, Ordering::Relaxed);
        let mut st = self.lock();
        let expected = st.next.unwrap_or(at);
        let err = (at - expected) as f64;
        st.drift = st.drift * 0.95 + err * 0.05;
        let pos = if st.next.is_none() || (at - expected).abs() > RESYNC_JUMP {
            st.drift = 0.0;
            if st.next.is_some() {
                self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            at
        } else if st.drift.abs() > RESYNC_DRIFT {
            let to = expected + st.drift.round() as i64;
            st.drift = 0.0;
            self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            to
        } else {
            expected
        };
        let end = st.start + (st.samples.len() / CHANNELS) as i64;
        if st.samples.is_empty() {
            st.start = pos;
        } else if pos > end {
            // A gap: keep the timeline, fill it with silence.
            let gap = ((pos - end) as usize).min(MAX_BUFFERED);
            st.samples.extend(std::iter::repeat_n(0.0, gap * CHANNELS));
        } else if pos < end {
            // Overlap after re-anchoring backwards: the newer samples win.
            let keep = (pos - st.start).max(0) as usize * CHANNELS;
            st.samples.truncate(keep);
            if st.samples.is_empty() {
                st.start = pos;
            }
        }
        st.samples.extend(data.iter().copied());
        st.next = Some(pos + frames);
        let excess = st.samples.len().saturating_sub(MAX_BUFFERED * CHANNELS);
        if excess > 0 {
            st.samples.drain(..excess);
            st.start += (excess / CHANNELS) as i64;
        }
    }

    /// Add `gain ×` this lane's samples for frames `[start, start + out.len()/2)` into `out`;
    /// what the lane does not have stays as it is (silence).
    pub fn mix_into(&self, start: i64, out: &mut [f32], gain: f32) {
        let want = (out.len() / CHANNELS) as i64;
        let live = self.is_live();
        let mut st = self.lock();
        // Samples before this frame can no longer be played.
        if st.start < start {
            let stale = ((start - st.start) as usize * CHANNELS).min(st.samples.len());
            if stale > 0 && st.next.is_some() {
                self.counters
                    .late
                    .fetch_add((stale / CHANNELS) as u64, Ordering::Relaxed);
            }
            st.samples.drain(..stale);
            // Either the stale part is gone and the buffer now starts at `start`, or it emptied.
            st.start = start;
        }
        let offset = (st.start - start).clamp(0, want) as usize;
        let avail = (st.samples.len() / CHANNELS).min(want as usize - offset);
        let mut peak = 0f32;
        for (o, s) in out[offset * CHANNELS..(offset + avail) * CHANNELS]
            .iter_mut()
            .zip(st.samples.drain(..avail * CHANNELS))
        {
            let v = s * gain;
            peak = peak.max(v.abs());
            *o += v;
        }
        st.start += avail as i64;
        drop(st);
        let missing = want as usize - avail;
        if live && missing > 0 {
            self.counters
                .underrun
                .fetch_add(missing as u64, Ordering::Relaxed);
        }
        self.counters
            .peak_ppm
            .store((peak.min(1.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

/// One user-level input ("system", "mic", "app:firefox"): a gain and the lanes of its streams
/// (an application may play several streams at once; they come and go).
pub struct AudioInput {
    pub name: String,
    pub gain: f32,
    lanes: Mutex<Vec<Arc<Lane>>>,
    /// Times the input was lost (sound server gone, device removed) so far.
    pub lost: AtomicU64,
}

impl AudioInput {
    pub fn new(name: impl Into<String>, gain: f32) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            gain,
            lanes: Mutex::new(Vec::new()),
            lost: AtomicU64::new(0),
        })
    }

    pub fn add_lane(&self, lane: Arc<Lane>) {
        self.lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lane);
    }

    pub fn remove_lane(&self, lane: &Arc<Lane>) {
        self.lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l| !Arc::ptr_eq(l, lane));
    }

    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Mixes every input's lanes into one interleaved stereo frame.
pub struct Mixer {
    inputs: Vec<Arc<AudioInput>>,
}

impl Mixer {
    pub fn new(inputs: Vec<Arc<AudioInput>>) -> Self {
        Self { inputs }
    }

    pub fn inputs(&self) -> &[Arc<AudioInput>] {
        &self.inputs
    }

    /// Mix frames `[start, start + out.len()/2)` into `out` (overwritten). True when clamping
    /// changed a sample (the inputs together were too loud).
    pub fn mix(&mut self, start: i64, out: &mut [f32]) -> bool {
        out.fill(0.0);
        for input in &self.inputs {
            for lane in input.lanes() {
                lane.mix_into(start, out, input.gain);
            }
        }
        let mut clipped = false;
        for s in out.iter_mut() {
            if !(-1.0..=1.0).contains(s) {
                clipped = true;
                *s = s.clamp(-1.0, 1.0);
            }
        }
        clipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, from: f32) -> Vec<f32> {
        (0..n)
            .flat_map(|i| [from + i as f32, from + i as f32])
            .collect()
    }

    #[test]
    fn contiguous_chunks_ignore_timestamp_jitter() {
        let lane = Lane::new("t");
        lane.push(1000, &ramp(100, 0.0));
        // Measured 3 ms late (jitter): still placed right after the first chunk.
        lane.push(1100 + 144, &ramp(100, 100.0));
        let mut out = vec![0.0; 400];
        lane.mix_into(1000, &mut out, 1.0);
        assert!(out.chunks(2).enumerate().all(|(i, f)| f[0] == i as f32));
        assert_eq!(lane.counters.resyncs.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn missing_samples_are_silence_and_counted() {
        let lane = Lane::new("t");
        lane.push(110, &[0.5; 20]);
        let mut out = vec![0.0; 40];
        lane.mix_into(100, &mut out, 2.0);
        assert_eq!(&out[..20], &[0.0; 20]);
        assert_eq!(&out[20..], &[1.0; 20]);
        let mut out = vec![0.0; 40];
        lane.mix_into(120, &mut out, 1.0);
        assert_eq!(out, vec![0.0; 40]);
        assert_eq!(lane.counters.underrun.load(Ordering::Relaxed), 30);
        lane.set_live(false);
        lane.mix_into(140, &mut out, 1.0);
        assert_eq!(lane.counters.underrun.load(Ordering::Relaxed), 30);
    }

    #[test]
    fn late_samples_are_dropped_and_a_jump_reanchors() {
        let lane = Lane::new("t");
        let mut out = vec![0.0; 20];
        lane.push(0, &[0.25; 20]);
        lane.mix_into(5, &mut out, 1.0);
        assert_eq!(lane.counters.late.load(Ordering::Relaxed), 5);
        assert_eq!(&out[..10], &[0.25; 10]);
        // 1 s later than expected: a discontinuity, placed where measured.
        lane.push(48_010, &[0.5; 4]);
        assert_eq!(lane.counters.resyncs.load(Ordering::Relaxed), 1);
        let mut out = vec![0.0; 8];
        lane.mix_into(48_008, &mut out, 1.0);
        assert_eq!(out, vec![0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn mixer_applies_gain_and_clamps() {
        let a = AudioInput::new("a", 1.0);
        let b = AudioInput::new("b", 3.0);
        let (la, lb) = (Lane::new("a"), Lane::new("b"));
        la.push(0, &[0.25, -0.25, 0.5, 0.5]);
        lb.push(0, &[0.25, 0.0, 0.25, 0.25]);
        a.add_lane(la);
        b.add_lane(lb);
        let mut m = Mixer::new(vec![a, b]);
        let mut out = vec![9.0; 4];
        assert!(m.mix(0, &mut out));
        assert_eq!(out, vec![1.0, -0.25, 1.0, 1.0]);
    }

    #[test]
    fn sample_clock_round_trips() {
        for n in [0i64, 1, 1024, 48_000, 1_234_567_891] {
            assert_eq!(us_to_sample(sample_to_us(n)), n);
        }
    }
}
