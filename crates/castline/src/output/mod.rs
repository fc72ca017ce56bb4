//! Outputs: where encoded packets go. Each output runs on its own thread behind its own
//! [`PacketQueue`](crate::pipeline::queue::PacketQueue), so a slow or failed output never stalls
//! the encoder or the other outputs.

pub mod mp4;

use std::path::PathBuf;

use crate::encode::{EncodedPacket, VideoStreamInfo};
use crate::error::OutputError;

/// What an output reports when it ends.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputSummary {
    pub name: String,
    pub bytes: u64,
    pub packets: u64,
    /// Something the user should know that did not fail the output.
    pub warning: Option<String>,
}

pub trait Output: Send {
    /// A name safe to log (secrets such as stream keys redacted).
    fn name(&self) -> String;
    fn write(&mut self, pkt: &EncodedPacket) -> Result<(), OutputError>;
    /// End of stream. `clean` is false when the pipeline is ending on an error.
    fn finish(self: Box<Self>, clean: bool) -> Result<OutputSummary, OutputError>;
}

/// Where to send the stream: parsed from a CLI argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    Mp4(PathBuf),
}

impl std::str::FromStr for OutputSpec {
    type Err = OutputError;
    fn from_str(s: &str) -> Result<Self, OutputError> {
        let path = s.strip_prefix("file://").unwrap_or(s);
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".mp4") || lower.ends_with(".mov") {
            Ok(Self::Mp4(PathBuf::from(path)))
        } else {
            Err(OutputError::Unsupported(s.to_string()))
        }
    }
}

pub fn open_output(
    spec: &OutputSpec,
    info: &VideoStreamInfo,
) -> Result<Box<dyn Output>, OutputError> {
    match spec {
        OutputSpec::Mp4(path) => Ok(Box::new(mp4::Mp4Output::create(path, info)?)),
    }
}
