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
    #[error("cannot reach the PulseAudio server{server}: {reason}")]
    AudioServerUnreachable { server: String, reason: String },
    #[error("unknown audio source '{name}' (available: {available}; see `castline list audio`)")]
    UnknownAudioSource { name: String, available: String },
    #[error("no application '{app}' is connected to the sound server (playing: {available}; see `castline list audio`)")]
    UnknownAudioApp { app: String, available: String },
    #[error("audio capture failed: {0}")]
    Audio(String),
    #[error("ffmpeg source failed: {0}")]
    FfmpegProcess(String),
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

/// Output failures. URLs inside are always redacted (no stream keys or tokens).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutputError {
    #[error("unsupported output '{0}': expected a path ending in .mp4 or .mov, an rtmp:// or rtmps:// URL, serve://IP:PORT, whip+http(s)://…, rtp://… or livekit://…")]
    Unsupported(String),
    #[error("invalid stream URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot write '{path}': {reason}")]
    Unwritable { path: PathBuf, reason: String },
    #[error(
        "disk full while writing '{path}'; the file keeps what was written up to its last fragment"
    )]
    DiskFull { path: PathBuf },
    #[error("writing '{path}' failed: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot resolve host '{host}' of {url}")]
    Dns { url: String, host: String },
    #[error("connection refused by {url} (is the server running?)")]
    Refused { url: String },
    #[error("{url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} rejected the connection or publish: {reason}")]
    Rejected { url: String, reason: String },
    #[error("network stalled: {url} accepted no data for {secs} s")]
    Stalled { url: String, secs: u64 },
    #[error("connection to {url} lost: {reason}")]
    Lost { url: String, reason: String },
    #[error("gave up on {url} after {attempts} reconnection attempts; last error: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    /// The server ended the session for good (participant removed, room deleted).
    #[error("{url} ended the session: {reason}")]
    Ended { url: String, reason: String },
}

impl OutputError {
    /// Transient errors are retried (reconnect); fatal ones end the output.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Dns { .. }
            | Self::Refused { .. }
            | Self::Unreachable { .. }
            | Self::Stalled { .. }
            | Self::Lost { .. } => ErrorClass::Transient,
            _ => ErrorClass::Fatal,
        }
    }

    /// A stable machine-readable code (JSON stats, bindings).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unsupported(_) => "unsupported_output",
            Self::InvalidUrl { .. } => "invalid_url",
            Self::Unwritable { .. } => "unwritable",
            Self::DiskFull { .. } => "disk_full",
            Self::Write { .. } => "write_failed",
            Self::Dns { .. } => "dns_failure",
            Self::Refused { .. } => "connection_refused",
            Self::Unreachable { .. } => "unreachable",
            Self::Rejected { .. } => "publish_rejected",
            Self::Stalled { .. } => "network_stall",
            Self::Lost { .. } => "connection_lost",
            Self::GaveUp { .. } => "gave_up",
            Self::Bind { .. } => "bind_failed",
            Self::Ended { .. } => "session_ended",
        }
    }

    /// Whether this is a usage problem (bad argument) rather than a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Unsupported(_) | Self::InvalidUrl { .. })
    }
}

/// An error as reported in stats and events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorReport {
    pub kind: &'static str,
    pub class: ErrorClass,
    pub message: String,
}

impl From<&OutputError> for ErrorReport {
    fn from(e: &OutputError) -> Self {
        Self {
            kind: e.kind(),
            class: e.class(),
            message: e.to_string(),
        }
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
