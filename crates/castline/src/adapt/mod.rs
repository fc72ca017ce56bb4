//! Adaptive quality, as policy only (sans-IO, like str0m's core): feedback and time go in,
//! decisions come out; nothing here touches a socket, a thread or an encoder.
//!
//! - [`rate`]: one [`RateController`] per live sink (a WebRTC peer, an RTP receiver, an RTMP
//!   server) turns that sink's feedback (TWCC/REMB estimate, RTCP loss, stream buffer) into a
//!   target bitrate.
//! - [`tier`]: which encode a sink takes. The main encode keeps the configured quality for every
//!   sink that can take it (recordings always); sinks whose target is below it share a second,
//!   lower tier that is encoded only while one needs it — so one slow path degrades nothing else.
//! - [`ladder`]: what a tier's bitrate (and the CPU) allows: frame rate first, then resolution,
//!   then bitrate alone, with hysteresis so a steady link never oscillates.

pub mod ladder;
pub mod rate;
pub mod sink;
pub mod tier;

pub use ladder::{Ladder, LadderConfig, Level};
pub use rate::{Feedback, RateConfig, RateController};
pub use sink::SinkAdapter;
pub use tier::TierDemand;

use serde::Serialize;

/// Why quality went down (or, in `recovered`, what no longer limits it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The path's estimated capacity (TWCC delay-based estimate or the receiver's REMB).
    Bandwidth,
    /// Packet loss reported by the receiver.
    Loss,
    /// A TCP output's stream buffer grows: the socket is not draining.
    Buffer,
    /// Encoding cannot keep up with the frame rate.
    Cpu,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bandwidth => "bandwidth",
            Self::Loss => "loss",
            Self::Buffer => "buffer",
            Self::Cpu => "cpu",
        }
    }
}

/// User-facing knobs (`--adapt`, `--min-fps`, `--min-bitrate`, `--start-bitrate`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptConfig {
    /// Off: every output gets the configured encode, whatever its path (the old behaviour).
    pub enabled: bool,
    /// Lowest frame rate the ladder steps down to before it lowers the resolution.
    pub min_fps: u32,
    /// Lowest video bitrate a live output is asked to take, bit/s.
    pub min_bitrate: u64,
    /// Estimate a new WebRTC peer starts from, bit/s (None: the configured bitrate).
    pub start_bitrate: Option<u64>,
    /// Lowest height the ladder scales to (the width follows the aspect ratio).
    pub min_height: u32,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_fps: 15,
            min_bitrate: 150_000,
            start_bitrate: None,
            min_height: 360,
        }
    }
}
