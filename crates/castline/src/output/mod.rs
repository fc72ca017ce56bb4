//! Outputs: where encoded packets go. Each output runs on its own thread behind its own
//! [`PacketQueue`](crate::pipeline::queue::PacketQueue), so a slow or failed output never stalls
//! the encoder or the other outputs.

pub mod livekit;
pub mod mp4;
mod mux;
pub mod reconnect;
pub mod rtmp;
pub mod rtp;
pub mod serve;
pub mod whip;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::encode::{AudioCodec, EncodedPacket, MediaInfo};
use crate::error::{ErrorReport, OutputError};
use crate::pipeline::clock::MediaClock;

pub use rtmp::{redact_url, RtmpOptions};
pub use serve::ServeOptions;

use crate::webrtc::Hub;

/// What an output reports when it ends.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputSummary {
    pub name: String,
    pub bytes: u64,
    pub packets: u64,
    /// Something the user should know that did not fail the output.
    pub warning: Option<String>,
}

/// What happened to one packet handed to an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Sent,
    /// Not sent (e.g. disconnected, or waiting for a keyframe after reconnecting); the pipeline
    /// asks the encoder for a keyframe when `want_keyframe`.
    Skipped {
        want_keyframe: bool,
    },
}

/// Connection state of a network output, for stats.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkReport {
    pub reconnecting: bool,
    pub reconnects: u32,
    pub last_error: Option<ErrorReport>,
}

pub trait Output: Send {
    /// A name safe to log (secrets such as stream keys redacted).
    fn name(&self) -> String;
    fn write(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError>;
    /// End of stream. `clean` is false when the pipeline is ending on an error.
    fn finish(self: Box<Self>, clean: bool) -> Result<OutputSummary, OutputError>;
    /// Connection state, for outputs that have one.
    fn link(&self) -> Option<LinkReport> {
        None
    }
    /// False while a network output's first session is not yet confirmed by the server; a
    /// failure then means the run never really started, and the pipeline stops.
    fn started(&self) -> bool {
        true
    }
    /// Where users reach this output (the viewer URL of `serve`, with its token).
    fn endpoint(&self) -> Option<String> {
        None
    }
    /// The WebRTC hub behind this output, for per-peer stats.
    fn hub(&self) -> Option<Hub> {
        None
    }
    /// Plain RTP outputs: what the receiver's RTCP reported.
    /// Live outputs that adapt: what they ask of the encode tiers (None: always the main tier).
    fn demand(&self) -> Option<Arc<crate::adapt::TierDemand>> {
        None
    }
    fn rtcp(&self) -> Option<Arc<std::sync::Mutex<rtp::RtcpReport>>> {
        None
    }
}

/// Where to send the stream: parsed from a CLI argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    Mp4(PathBuf),
    /// rtmp:// or rtmps:// URL (validated; may hold a stream key: never log it, use
    /// [`OutputSpec::name`]).
    Rtmp(String),
    /// The built-in viewer server (`serve://HOST:PORT`).
    Serve(ServeOptions),
    /// WHIP publishing to an http(s) endpoint (may hold a token in its query: never log it).
    Whip {
        url: String,
        bearer: Option<String>,
    },
    /// Plain RTP (with rtcp-mux) to a native ingest such as a mediasoup PlainTransport.
    Rtp(rtp::RtpTarget),
    /// A LiveKit room, over LiveKit's signaling (the auth holds a token or API secret: never
    /// log it).
    LiveKit(livekit::LiveKitTarget),
}

impl OutputSpec {
    /// The audio codec this output carries.
    pub fn audio_codec(&self) -> AudioCodec {
        match self {
            // MP4 could hold Opus too, but AAC is what every player of an .mp4 expects.
            Self::Mp4(_) | Self::Rtmp(_) => AudioCodec::Aac,
            Self::Serve(_) | Self::Whip { .. } | Self::Rtp(_) | Self::LiveKit(_) => {
                AudioCodec::Opus
            }
        }
    }

    /// Whether this output goes to WebRTC peers, which only decode constrained baseline or
    /// main profile H.264 (no High).
    pub fn is_webrtc(&self) -> bool {
        matches!(
            self,
            Self::Serve(_) | Self::Whip { .. } | Self::Rtp(_) | Self::LiveKit(_)
        )
    }

    /// A name safe to log.
    pub fn name(&self) -> String {
        match self {
            Self::Mp4(p) => p.display().to_string(),
            Self::Rtmp(u) => redact_url(u),
            Self::Serve(o) => format!("serve://{}", o.listen),
            Self::Whip { url, .. } => format!("whip {}", whip::redact_whip_url(url)),
            Self::Rtp(t) => format!("rtp://{}", t.addr),
            Self::LiveKit(t) => format!("livekit {}", livekit::redact_livekit_url(&t.ws_url)),
        }
    }
}

impl std::str::FromStr for OutputSpec {
    type Err = OutputError;
    fn from_str(s: &str) -> Result<Self, OutputError> {
        let lower_url = s.to_ascii_lowercase();
        if let Some(rest) = lower_url.strip_prefix("serve://") {
            let addr = rest.trim_end_matches('/');
            let listen = addr.parse().map_err(|_| OutputError::InvalidUrl {
                url: s.to_string(),
                reason: "expected serve://IP:PORT, e.g. serve://127.0.0.1:8080".into(),
            })?;
            return Ok(Self::Serve(ServeOptions {
                listen,
                ..ServeOptions::default()
            }));
        }
        if lower_url.starts_with("whip+http://") || lower_url.starts_with("whip+https://") {
            whip::parse_whip_url(s)?;
            return Ok(Self::Whip {
                url: s.to_string(),
                bearer: None,
            });
        }
        if livekit::LiveKitTarget::is_livekit_url(s) {
            return Ok(Self::LiveKit(livekit::LiveKitTarget::parse(s)?));
        }
        if lower_url.starts_with("rtp://") {
            return Ok(Self::Rtp(rtp::RtpTarget::parse_url(s)?));
        }
        if lower_url.starts_with("rtmp://") || lower_url.starts_with("rtmps://") {
            rtmp::RtmpTarget::parse(s)?;
            return Ok(Self::Rtmp(s.to_string()));
        }
        if s.contains("://") && !lower_url.starts_with("file://") {
            return Err(OutputError::Unsupported(redact_url(s)));
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".mp4") || lower.ends_with(".mov") {
            Ok(Self::Mp4(PathBuf::from(path)))
        } else {
            Err(OutputError::Unsupported(s.to_string()))
        }
    }
}

/// Open an output. Network outputs connect here: a first connection that fails is reported at
/// once instead of being retried.
/// What live outputs share: reconnection and stream-buffer settings, and adaptive quality.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions<'a> {
    pub rtmp: &'a RtmpOptions,
    pub adapt: &'a crate::adapt::AdaptConfig,
}

impl LiveOptions<'_> {
    /// The rate bounds of a live sink of this run, None with adaptation off.
    pub fn rate(&self, info: &MediaInfo) -> Option<crate::adapt::RateConfig> {
        self.adapt.enabled.then_some(crate::adapt::RateConfig {
            min_bps: self.adapt.min_bitrate,
            max_bps: info.video.bitrate,
        })
    }

    /// How the WebRTC peers of a hub adapt, None with adaptation off.
    pub fn peer_adapt(&self, info: &MediaInfo) -> Option<crate::webrtc::hub::PeerAdapt> {
        self.rate(info).map(|rate| crate::webrtc::hub::PeerAdapt {
            rate,
            start_bps: self.adapt.start_bitrate.unwrap_or(rate.max_bps),
        })
    }
}

pub fn open_output(
    spec: &OutputSpec,
    info: &MediaInfo,
    clock: MediaClock,
    live: &LiveOptions<'_>,
    keyframe: Arc<AtomicBool>,
) -> Result<Box<dyn Output>, OutputError> {
    let rtmp = live.rtmp;
    match spec {
        OutputSpec::Mp4(path) => Ok(Box::new(mp4::Mp4Output::create(path, info)?)),
        OutputSpec::Rtmp(url) => Ok(Box::new(rtmp::RtmpOutput::connect(
            url,
            info,
            clock,
            rtmp.clone(),
        )?)),
        OutputSpec::Serve(o) => Ok(Box::new(serve::ServeOutput::start(
            o,
            info,
            clock,
            keyframe,
            live.peer_adapt(info),
        )?)),
        OutputSpec::Rtp(t) => Ok(Box::new(rtp::RtpOutput::connect(
            t.clone(),
            info,
            clock,
            keyframe,
            rtp::RtpOptions {
                reconnect: rtmp.clone(),
                ..Default::default()
            },
        )?)),
        OutputSpec::Whip { url, bearer } => Ok(Box::new(whip::WhipOutput::connect(
            url,
            bearer.clone(),
            info,
            clock,
            keyframe,
            rtmp.clone(),
            live.peer_adapt(info),
        )?)),
        OutputSpec::LiveKit(t) => Ok(Box::new(livekit::LiveKitOutput::connect(
            t,
            info,
            clock,
            keyframe,
            rtmp.clone(),
            live.peer_adapt(info),
        )?)),
    }
}
