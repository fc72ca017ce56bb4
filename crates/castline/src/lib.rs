//! castline: capture a screen or window, encode once, fan out to recordings and live outputs.
//!
//! The crate is laid out by pipeline stage (see ARCHITECTURE.md at the repository root):
//!
//! - [`capture`]: video sources (X11 screen, window, `testsrc`, an ffmpeg child) and audio
//!   inputs (PulseAudio), one file per backend behind `VideoSource`.
//! - [`mix`]: the audio clock — per-stream lanes mixed on the pipeline's sample timeline.
//! - [`convert`]: BGRA → I420/NV12 and scaling into the encoder's planes.
//! - [`encode`]: H.264 (libx264 and hardware encoders through libavcodec), AAC and Opus.
//! - [`output`]: one file per output kind (MP4, RTMP, `serve`, WHIP, plain RTP, LiveKit) behind
//!   `Output`.
//! - [`webrtc`]: the peer hub that owns every str0m `Rtc`; [`server`]: `castline serve`'s HTTP
//!   side (viewer page, WebSocket signaling, WHEP).
//! - [`adapt`]: adaptive quality as policy only (rate control, tiers, the degradation ladder):
//!   feedback and time in, decisions out.
//! - [`cadence`]: zero-hertz screen sharing as policy only — which captured frames an encode
//!   tier encodes when no output needs a constant frame rate.
//! - [`pipeline`]: the threads and queues that join the stages, the encode tiers, and stats.
//!
//! [`pipeline::Pipeline::start`] opens everything (so configuration errors return before a
//! thread starts) and runs it; [`pipeline::Pipeline::sample_stats`] reads the once-a-second
//! snapshot; [`pipeline::Pipeline::stop`] finalizes every output.

pub mod adapt;
pub mod cadence;
pub mod capture;
pub mod convert;
pub mod encode;
pub mod error;
pub mod mix;
pub mod output;
pub mod pipeline;
pub mod server;
pub mod webrtc;

pub use error::{Error, ErrorClass, Result};
