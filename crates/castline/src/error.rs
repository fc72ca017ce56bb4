//! Typed errors for every stage. Each variant names what was wrong so the CLI can print one line.

use std::path::PathBuf;

/// Whether retrying could help: fatal errors end the output (or pipeline), transient ones may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Fatal,
    Transient,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("no X display: $DISPLAY is not set")]
    NoDisplayEnv,
    #[error("cannot connect to X display '{display}': {reason}")]
    DisplayUnreachable { display: String, reason: String },
    #[error("unknown display {index}: this X screen has {count} monitor(s) (see `castline list displays`)")]
    UnknownMonitor { index: usize, count: usize },
    #[error("unknown window {0:#x}: no such window on this display (see `castline list windows`)")]
    UnknownWindow(u32),
    #[error("window {0:#x} is not mapped (minimised or hidden); cannot capture it")]
    WindowNotViewable(u32),
    #[error("window {0:#x} was closed")]
    WindowClosed(u32),
    #[error("X server lacks the {0} extension")]
    MissingExtension(&'static str),
    #[error("unsupported pixel format: {0}")]
    UnsupportedFormat(String),
    #[error("capture area {width}x{height} is too small (minimum 16x16)")]
    TooSmall { width: u32, height: u32 },
    #[error("X11 request failed: {0}")]
    X11(String),
    #[error("shared memory setup failed: {0}")]
    Shm(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoder '{name}' is not available: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("invalid encoder setting: {0}")]
    InvalidSetting(String),
    #[error("encoding failed: {0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("unsupported output '{0}': expected a path ending in .mp4 or .mov")]
    Unsupported(String),
    #[error("cannot write '{path}': {reason}")]
    Unwritable { path: PathBuf, reason: String },
    #[error(
        "disk full while writing '{path}'; the file keeps what was written up to its last fragment"
    )]
    DiskFull { path: PathBuf },
    #[error("writing '{path}' failed: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl OutputError {
    pub fn class(&self) -> ErrorClass {
        // Files cannot recover by retrying; network outputs (later) add transient variants.
        ErrorClass::Fatal
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("conversion failed: {0}")]
    Failed(String),
}

/// Top-level error of a pipeline run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<x11rb::errors::ConnectionError> for CaptureError {
    fn from(e: x11rb::errors::ConnectionError) -> Self {
        CaptureError::X11(e.to_string())
    }
}
impl From<x11rb::errors::ReplyError> for CaptureError {
    fn from(e: x11rb::errors::ReplyError) -> Self {
        CaptureError::X11(e.to_string())
    }
}
impl From<x11rb::errors::ReplyOrIdError> for CaptureError {
    fn from(e: x11rb::errors::ReplyOrIdError) -> Self {
        CaptureError::X11(e.to_string())
    }
}
