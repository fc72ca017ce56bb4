//! castline: capture a screen or window, encode once, fan out to recordings and live outputs.
//!
//! The crate is laid out by pipeline stage; see ARCHITECTURE.md at the repository root.

pub mod adapt;
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
