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
//! - [`health`]: a verdict on a run going badly, as policy only — rolling-window failure
//!   counts and sustained drops per stage in, `unstable` / `fallback_recommended` out.
//! - [`pipeline`]: the threads and queues that join the stages, the encode tiers, live
//!   control, and stats.
//!
//! # Running a pipeline
//!
//! A [`pipeline::PipelineConfig`] names the source, the encode and the outputs;
//! [`pipeline::Pipeline::start`] opens all of them on the caller's thread — a wrong window id,
//! an unwritable path, a server that refuses the stream fail here, before a thread starts —
//! and then runs it. [`pipeline::Pipeline::sample_stats`] reads the once-a-second snapshot
//! (`castline --stats json` prints the same object), [`pipeline::Pipeline::stop`] asks for a
//! graceful end and [`pipeline::Pipeline::wait`] returns once every output is finalized.
//!
//! Record two seconds of the synthetic test picture, and serve it to browsers beside it:
//!
//! ```
//! use std::time::Duration;
//! use castline::capture::SourceSpec;
//! use castline::pipeline::{Pipeline, PipelineConfig};
//!
//! # fn main() -> castline::Result<()> {
//! let cfg = PipelineConfig {
//!     source: SourceSpec::TestSrc,
//!     size: Some((640, 360)),
//!     outputs: vec![
//!         std::env::temp_dir().join("castline-doc-clip.mp4").to_str().unwrap().parse()?,
//!         // The viewer page and WHEP on loopback (port 0: any free one); viewers need the
//!         // token that is in the URL.
//!         "serve://127.0.0.1:0".parse()?,
//!     ],
//!     duration: Some(Duration::from_secs(2)),
//!     ..PipelineConfig::default()
//! };
//! let pipeline = Pipeline::start(cfg)?;
//! println!("viewers: {}", pipeline.endpoints()[0]); // holds the token: show, never log
//! let summary = pipeline.wait()?; // ends by itself after `duration`
//! assert!(summary.frames_encoded > 0);
//! # Ok(()) }
//! ```
//!
//! While it runs, [`pipeline::Pipeline::control`] hands out a [`pipeline::Control`]: another
//! source, outputs added and removed, bitrate, frame rate and audio mute change without
//! stopping anything (a recording is not cut, viewers keep their track).
//!
//! # Threads
//!
//! One capture thread ticks at the frame rate and grabs (or repeats an unchanged picture); one
//! encode thread converts and encodes on every tier that needs the frame; one audio thread is
//! the audio clock (it mixes the inputs, each captured on its own thread, and encodes); each
//! output has its own thread and a bounded queue, so a slow network output never holds up a
//! recording. The WebRTC hub runs every peer connection on one more thread. The caller's thread
//! only samples stats and decides when to stop.
//!
//! # The clock
//!
//! Everything is stamped on one monotonic [`pipeline::clock::MediaClock`] started with the
//! pipeline: video frame `n` is at `t0 + n / fps` exactly (constant frame rate, unless
//! zero-hertz leaves out unchanged frames), audio sample `k` at `t0 + k / 48 kHz`; both start at
//! `t0`, so recordings need no A/V offset correction, and the audio thread ends where the video
//! ended.
//!
//! # Errors
//!
//! Library calls return [`Error`] (typed with `thiserror`; nothing panics on input). Output
//! errors carry an [`ErrorClass`]: `Transient` (the output reconnects on its own — a server
//! restart, a dropped link) or `Fatal` (a wrong key, a refused token: retrying cannot help).
//! One output failing never stops the others; the run fails only when every output has.
//! Logs go through `tracing` with stable event names (`capture_started`, `output_connected`,
//! `keyframe_requested`, `degraded`, `recovered`, `reconnecting`, `source_changed`,
//! `output_added`, `fatal`, …); stream keys and tokens never appear in them.

pub mod adapt;
pub mod cadence;
pub mod capture;
pub mod convert;
pub mod encode;
pub mod error;
pub mod health;
pub mod mix;
pub mod output;
pub mod pipeline;
pub mod server;
pub mod webrtc;

pub use error::{Error, ErrorClass, Result};
