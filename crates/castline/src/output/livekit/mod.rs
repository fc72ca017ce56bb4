//! Publishing a screen share into a LiveKit room over LiveKit's own signaling.
//!
//! - [`proto`]: the protobuf messages (join request with the `SCREEN_SHARE` tracks and the
//!   publisher offer, server events), sans-IO;
//! - [`signal`]: the WebSocket, pings at the server's interval;
//! - this file: the [`Output`]: one session = one signaling connection + one peer in a
//!   [`Hub`] (str0m: H.264 constrained baseline and Opus, PLI/FIR → keyframe, NACK, TWCC into the
//!   rate controller). A session that fails later is re-created with backoff (a full rejoin: the
//!   room gets a new track, which starts on a keyframe); a first session that fails is reported
//!   at once, classified. Tokens are never logged: names carry the host only.

pub mod proto;
pub mod signal;

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reconnect::Reconnect;
use super::{LinkReport, Output, OutputSummary, RtmpOptions, Written};
use crate::encode::{EncodedPacket, MediaInfo};
use crate::error::OutputError;
use crate::pipeline::clock::MediaClock;
use crate::webrtc::{self, hub::HubThread, Hub, HubConfig, PeerEvent, PeerId};
use proto::Event;
use signal::{ConnectError, Incoming, Signal};

/// How castline gets its access token.
#[derive(Clone, PartialEq, Eq)]
pub enum LiveKitAuth {
    /// A ready token (from the app's server); the room is in it.
    Token(String),
    /// Make a token per connection (what servers and tests do).
    Keys {
        api_key: String,
        api_secret: String,
        room: String,
        identity: String,
    },
}

impl std::fmt::Debug for LiveKitAuth {
    // Never print secrets, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::Keys { room, identity, .. } => f
                .debug_struct("Keys")
                .field("room", room)
                .field("identity", identity)
                .finish_non_exhaustive(),
        }
    }
}

/// Tokens castline makes itself live this long (a rejoin makes a new one).
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

impl LiveKitAuth {
    /// The token for the next connection.
    pub fn token(&self) -> Result<String, OutputError> {
        match self {
            Self::Token(t) => Ok(t.clone()),
            Self::Keys {
                api_key,
                api_secret,
                room,
                identity,
            } => livekit_token::AccessToken::with_api_key(api_key, api_secret)
                .with_identity(identity)
                .with_name(identity)
                .with_ttl(TOKEN_TTL)
                .with_grants(livekit_token::VideoGrants {
                    room_join: true,
                    room: room.clone(),
                    can_publish: Some(true),
                    can_subscribe: Some(false),
                    can_publish_data: Some(false),
                    can_publish_sources: vec!["screen_share".into(), "screen_share_audio".into()],
                    ..Default::default()
                })
                .to_jwt()
                .map_err(|e| OutputError::InvalidUrl {
                    url: "livekit".into(),
                    reason: format!("cannot make an access token: {e}"),
                }),
        }
    }
}

/// What a token says about itself (read without verifying: only the server can), for logs and
/// for refusing early what the server would refuse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub room: String,
    pub identity: String,
    pub can_publish: bool,
    /// Empty: every source.
    pub sources: Vec<String>,
    pub expires_at: Option<u64>,
}

pub fn token_claims(token: &str) -> Result<TokenClaims, String> {
    use base64::Engine;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or("not a JWT (expected three dot-separated parts)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "not a JWT (payload is not base64url)")?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "not a JWT (payload is not JSON)")?;
    let video = v.get("video").cloned().unwrap_or_default();
    Ok(TokenClaims {
        room: video
            .get("room")
            .and_then(|r| r.as_str())
            .unwrap_or("")
            .into(),
        identity: v.get("sub").and_then(|s| s.as_str()).unwrap_or("").into(),
        // LiveKit's default: publishing is allowed unless the grant says false.
        can_publish: video
            .get("canPublish")
            .and_then(|c| c.as_bool())
            .unwrap_or(true),
        sources: video
            .get("canPublishSources")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_ascii_lowercase))
                    .collect()
            })
            .unwrap_or_default(),
        expires_at: v.get("exp").and_then(|e| e.as_u64()),
    })
}

/// Why a token cannot publish a screen share, judged from its claims.
fn cannot_publish(c: &TokenClaims, audio: bool) -> Option<String> {
    if !c.can_publish {
        return Some("the token does not grant canPublish".into());
    }
    if !c.sources.is_empty() {
        if !c.sources.iter().any(|s| s == "screen_share") {
            return Some("the token's canPublishSources do not include screen_share".into());
        }
        if audio && !c.sources.iter().any(|s| s == "screen_share_audio") {
            return Some("the token's canPublishSources do not include screen_share_audio".into());
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match c.expires_at {
        Some(exp) if exp <= now => Some("the token has expired".into()),
        _ => None,
    }
}

/// A LiveKit server: `livekit://HOST[:PORT]` (ws), `livekit+ws://…`, `livekit+wss://…`, or a
/// plain `ws://` / `wss://` URL as LiveKit's SDKs take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKitTarget {
    /// ws:// or wss:// base URL (no query).
    pub ws_url: String,
    pub auth: Option<LiveKitAuth>,
}

impl LiveKitTarget {
    pub fn is_livekit_url(url: &str) -> bool {
        let l = url.to_ascii_lowercase();
        l.starts_with("livekit://")
            || l.starts_with("livekit+ws://")
            || l.starts_with("livekit+wss://")
            || l.starts_with("ws://")
            || l.starts_with("wss://")
    }

    pub fn parse(url: &str) -> Result<Self, OutputError> {
        let invalid = |reason: &str| OutputError::InvalidUrl {
            url: redact_livekit_url(url),
            reason: reason.into(),
        };
        let lower = url.to_ascii_lowercase();
        let (scheme, rest) = [
            ("livekit+wss://", "wss://"),
            ("livekit+ws://", "ws://"),
            ("livekit://", "ws://"),
            ("wss://", "wss://"),
            ("ws://", "ws://"),
        ]
        .iter()
        .find(|(p, _)| lower.starts_with(p))
        .map(|(p, s)| (*s, &url[p.len()..]))
        .ok_or_else(|| {
            invalid("a LiveKit server is livekit://HOST:PORT, livekit+wss://HOST or ws(s)://HOST")
        })?;
        if rest.contains('?') || rest.contains('#') {
            return Err(invalid(
                "the token goes in --token (or CASTLINE_LIVEKIT_TOKEN), not the URL",
            ));
        }
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() || host.contains('@') {
            return Err(invalid("missing host"));
        }
        Ok(Self {
            ws_url: format!("{scheme}{}", rest.trim_end_matches('/')),
            auth: None,
        })
    }
}

/// The part of a LiveKit URL safe to log: scheme and host, nothing after.
pub fn redact_livekit_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}")
}

/// A server message with anything that looks like a JWT (a token) cut out.
fn scrub(text: &str) -> String {
    text.split_whitespace()
        .map(|w| if w.contains("eyJ") { "<redacted>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Session {
    signal: Signal,
    peer: PeerId,
    participant: String,
}

pub struct LiveKitOutput {
    target: LiveKitTarget,
    auth: LiveKitAuth,
    /// A token the server refreshed (used when rejoining with a given token).
    refreshed: Option<String>,
    publish: proto::Publish,
    opts: RtmpOptions,
    hub: Hub,
    hub_thread: Option<HubThread>,
    events: std::sync::mpsc::Receiver<PeerEvent>,
    extradata: Vec<u8>,
    session: Option<Session>,
    reconnect: Reconnect,
    started: bool,
    bytes: u64,
    packets: u64,
}

impl LiveKitOutput {
    pub fn connect(
        target: &LiveKitTarget,
        info: &MediaInfo,
        clock: MediaClock,
        keyframe: Arc<AtomicBool>,
        opts: RtmpOptions,
        adapt: Option<webrtc::hub::PeerAdapt>,
    ) -> Result<Self, OutputError> {
        let auth = target.auth.clone().ok_or_else(|| OutputError::InvalidUrl {
            url: redact_livekit_url(&target.ws_url),
            reason: "a LiveKit output needs --token (or CASTLINE_LIVEKIT_TOKEN), or --api-key, --api-secret and --room".into(),
        })?;
        if let LiveKitAuth::Token(t) = &auth {
            let claims = token_claims(t).map_err(|e| OutputError::Rejected {
                url: redact_livekit_url(&target.ws_url),
                reason: format!("unusable access token: {e}"),
            })?;
            if let Some(why) = cannot_publish(&claims, info.audio.is_some()) {
                return Err(OutputError::Rejected {
                    url: redact_livekit_url(&target.ws_url),
                    reason: why,
                });
            }
        }
        if !opts.tls_verify && target.ws_url.starts_with("wss://") {
            return Err(OutputError::InvalidUrl {
                url: redact_livekit_url(&target.ws_url),
                reason: "castline always verifies a LiveKit server's certificate (the token crosses this link); trust a private CA with --ca-file".into(),
            });
        }
        webrtc::init_crypto();
        let cfg = HubConfig {
            bind_ip: std::net::IpAddr::from([0, 0, 0, 0]),
            ice_lite: false,
            max_peers: 1,
            connect_timeout: opts.connect_timeout.max(Duration::from_secs(5)) * 2,
            silence_timeout: Duration::from_secs(5),
            name: "livekit".into(),
            adapt,
            offer_h264: Some(match info.video.profile {
                crate::encode::H264Profile::Main => 0x4d001f,
                _ => 0x42e01f,
            }),
            ..HubConfig::default()
        };
        let (hub, hub_thread) =
            Hub::start(cfg, keyframe, clock).map_err(|e| OutputError::Bind {
                addr: "0.0.0.0:0".into(),
                reason: format!("UDP: {e}"),
            })?;
        let events = hub.subscribe();
        let mut out = Self {
            target: target.clone(),
            auth,
            refreshed: None,
            publish: proto::Publish {
                width: info.video.width,
                height: info.video.height,
                bitrate: info.video.bitrate,
                fps: info.video.fps,
                audio: info.audio.is_some(),
                track_name: "screen".into(),
            },
            reconnect: Reconnect::new(opts.clone()),
            opts,
            hub,
            hub_thread: Some(hub_thread),
            events,
            extradata: info.video.extradata.clone(),
            session: None,
            started: false,
            bytes: 0,
            packets: 0,
        };
        if let Err(e) = out.open_session() {
            out.shutdown(false);
            return Err(e);
        }
        out.started = true;
        Ok(out)
    }

    fn safe_url(&self) -> String {
        redact_livekit_url(&self.target.ws_url)
    }

    fn connect_error(&self, e: ConnectError) -> OutputError {
        let url = self.safe_url();
        match e {
            ConnectError::Dns(host) => OutputError::Dns { url, host },
            ConnectError::Refused => OutputError::Refused { url },
            ConnectError::Unreachable(reason) => OutputError::Unreachable { url, reason },
            // LiveKit echoes the token in its 401 body: never repeat it.
            ConnectError::Http(status @ (401 | 403), _) => OutputError::Rejected {
                url,
                reason: format!(
                    "HTTP {status}: the server refused the access token (bad signature, wrong key, expired or not yet valid)"
                ),
            },
            ConnectError::Http(status @ 400..=499, body) => OutputError::Rejected {
                url,
                reason: format!("HTTP {status}: {}", scrub(&body)),
            },
            ConnectError::Http(status, body) => OutputError::Unreachable {
                url,
                reason: format!("HTTP {status}: {}", scrub(&body)),
            },
        }
    }

    /// Offer, join with it, take the answer and the server's candidates, wait for ICE+DTLS and
    /// the video track's publication.
    fn open_session(&mut self) -> Result<(), OutputError> {
        let token = match &self.refreshed {
            Some(t) => t.clone(),
            None => self.auth.token()?,
        };
        let (peer, offer) = self
            .hub
            .create_offer("livekit", self.publish.audio)
            .map_err(|e| self.lost(e.to_string()))?;
        let join = proto::join_request(&self.publish, &offer);
        let url = proto::join_url(&self.target.ws_url, &join);
        let timeout = self.opts.connect_timeout.max(Duration::from_secs(2));
        let signal = match Signal::connect(&url, &token, timeout, self.opts.tls_ca_file.as_deref())
        {
            Ok(s) => s,
            Err(e) => {
                self.hub.remove(peer);
                return Err(self.connect_error(e));
            }
        };
        for (c, mid) in proto::sdp_candidates(&offer) {
            signal.send(proto::trickle(&c, &mid));
        }
        self.session = Some(Session {
            signal,
            peer,
            participant: String::new(),
        });
        match self.await_session(peer) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.end_session(false);
                Err(e)
            }
        }
    }

    fn await_session(&mut self, peer: PeerId) -> Result<(), OutputError> {
        let deadline = Instant::now() + self.opts.connect_timeout.max(Duration::from_secs(5));
        let (mut connected, mut published, mut answered) = (false, false, false);
        loop {
            if connected && published {
                let s = self.session.as_ref().map(|s| s.participant.clone());
                tracing::info!(output = %self.safe_url(), participant = ?s, "output_connected");
                return Ok(());
            }
            while let Ok(ev) = self.events.try_recv() {
                match ev {
                    PeerEvent::Connected(id) if id == peer => connected = true,
                    PeerEvent::Closed(id, why) if id == peer => {
                        return Err(self.lost(format!("the WebRTC session closed: {why}")))
                    }
                    _ => {}
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let reason = match (answered, connected, published) {
                    (false, _, _) => "the server sent no answer to the publisher offer",
                    (true, false, _) => "ICE/DTLS did not connect (no media path to the server)",
                    _ => "the server did not publish the screen-share track",
                };
                return Err(OutputError::Unreachable {
                    url: self.safe_url(),
                    reason: reason.into(),
                });
            }
            let Some(s) = &self.session else {
                return Err(self.lost("session ended".into()));
            };
            match s.signal.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(Incoming::Event(Event::Answer(sdp))) => {
                    answered = true;
                    tracing::debug!(sdp = %sdp, "livekit_answer");
                    self.hub
                        .accept_answer(peer, &sdp)
                        .map_err(|e| OutputError::Rejected {
                            url: self.safe_url(),
                            reason: format!("unusable SDP answer: {e}"),
                        })?;
                }
                Ok(Incoming::Event(Event::TrackPublished { cid, sid, source })) => {
                    tracing::info!(output = %self.safe_url(), cid = %cid, track = %sid, source, "livekit_track_published");
                    if cid == proto::VIDEO_CID {
                        published = true;
                    }
                }
                Ok(Incoming::Event(Event::Refused(why))) => {
                    return Err(OutputError::Rejected {
                        url: self.safe_url(),
                        reason: format!("the server refused to publish: {why}"),
                    })
                }
                Ok(Incoming::Event(Event::Leave { reason, .. })) => {
                    return Err(OutputError::Rejected {
                        url: self.safe_url(),
                        reason: format!("the server ended the join: {reason}"),
                    })
                }
                Ok(Incoming::Closed(why)) => return Err(self.lost(why)),
                Ok(ev) => self.handle_incoming(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.lost("signaling thread ended".into()))
                }
            }
        }
    }

    /// Server messages that need no answer from the session's state machine.
    fn handle_incoming(&mut self, ev: Incoming) {
        let url = self.safe_url();
        let Some(s) = &mut self.session else { return };
        match ev {
            Incoming::Event(Event::Joined {
                participant_sid,
                ping_interval,
                ping_timeout,
                server_version,
            }) => {
                tracing::info!(output = %url, participant = %participant_sid, server_version = %server_version, ping_interval, "livekit_joined");
                s.signal.set_ping(ping_interval, ping_timeout);
                s.participant = participant_sid;
            }
            Incoming::Event(Event::Candidate(Some(c))) => {
                if let Err(e) = self.hub.add_remote_candidate(s.peer, &c) {
                    tracing::warn!(output = %url, error = %e, "livekit_bad_candidate");
                }
            }
            Incoming::Event(Event::RefreshToken(t)) => {
                if matches!(self.auth, LiveKitAuth::Token(_)) {
                    self.refreshed = Some(t);
                }
            }
            Incoming::Event(Event::Offer) => {
                tracing::warn!(output = %url, "livekit_offer_ignored");
            }
            Incoming::Malformed(e) => {
                tracing::warn!(output = %url, error = %e, "livekit_malformed_message");
            }
            _ => {}
        }
    }

    fn lost(&self, reason: String) -> OutputError {
        OutputError::Lost {
            url: self.safe_url(),
            reason,
        }
    }

    fn end_session(&mut self, leave: bool) {
        if let Some(s) = self.session.take() {
            self.hub.remove(s.peer);
            s.signal.close(leave);
        }
    }

    fn shutdown(&mut self, leave: bool) {
        self.end_session(leave);
        self.hub.shutdown();
        if let Some(t) = self.hub_thread.take() {
            t.join();
        }
    }

    fn session_lost(&mut self, why: &str) {
        tracing::warn!(output = %self.safe_url(), reason = %why, "output_disconnected");
        self.end_session(false);
        self.reconnect.lost(Instant::now());
    }

    /// Check the session; rejoin with backoff when it has failed. Returns whether media can flow.
    fn maintain(&mut self) -> Result<bool, OutputError> {
        while let Ok(ev) = self.events.try_recv() {
            if let (PeerEvent::Closed(id, why), Some(s)) = (&ev, &self.session) {
                if *id == s.peer {
                    let why = why.clone();
                    self.session_lost(&why);
                }
            }
        }
        while let Some(s) = &self.session {
            match s.signal.incoming.try_recv() {
                Ok(Incoming::Closed(why)) => self.session_lost(&why),
                Ok(Incoming::Event(Event::Leave {
                    reason,
                    final_: true,
                    ..
                })) => {
                    self.end_session(false);
                    return Err(OutputError::Ended {
                        url: self.safe_url(),
                        reason: format!("the server removed this participant ({reason})"),
                    });
                }
                Ok(Incoming::Event(Event::Leave { reason, .. })) => {
                    self.session_lost(&format!("the server asked to leave ({reason})"))
                }
                Ok(ev) => self.handle_incoming(ev),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.session_lost("signaling thread ended")
                }
            }
        }
        if self.session.is_some() {
            return Ok(true);
        }
        if !self.reconnect.due(Instant::now()) {
            return Ok(false);
        }
        tracing::info!(output = %self.safe_url(), attempt = self.reconnect.attempts(), "reconnecting");
        match self.open_session() {
            Ok(()) => {
                self.reconnect.succeeded();
                Ok(true)
            }
            Err(e) => {
                // A refreshed token may have expired while the server was away.
                self.refreshed = None;
                self.reconnect
                    .failed(Instant::now(), self.safe_url(), e)
                    .map(|()| false)
            }
        }
    }
}

impl Output for LiveKitOutput {
    fn name(&self) -> String {
        format!("livekit {}", self.safe_url())
    }

    fn write(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError> {
        if !self.maintain()? {
            // No keyframe request while down: a rejoined peer asks for one itself, and forced
            // keyframes would bloat a recording fed by the same encode.
            return Ok(Written::Skipped {
                want_keyframe: false,
            });
        }
        let out = webrtc::packet_for_peers(pkt, &self.extradata);
        self.bytes += out.data.len() as u64;
        self.packets += 1;
        self.hub
            .push_media(out)
            .map_err(|e| self.lost(e.to_string()))?;
        Ok(Written::Sent)
    }

    fn finish(mut self: Box<Self>, _clean: bool) -> Result<OutputSummary, OutputError> {
        self.shutdown(true);
        Ok(OutputSummary {
            name: self.name(),
            bytes: self.bytes,
            packets: self.packets,
            warning: None,
        })
    }

    fn link(&self) -> Option<LinkReport> {
        Some(self.reconnect.link.clone())
    }

    fn started(&self) -> bool {
        self.started
    }

    fn hub(&self) -> Option<Hub> {
        Some(self.hub.clone())
    }

    fn demand(&self) -> Option<Arc<crate::adapt::TierDemand>> {
        Some(self.hub.demand())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = LiveKitTarget::parse("livekit://127.0.0.1:7880").unwrap();
        assert_eq!(t.ws_url, "ws://127.0.0.1:7880");
        assert_eq!(
            LiveKitTarget::parse("livekit+wss://lk.example/")
                .unwrap()
                .ws_url,
            "wss://lk.example"
        );
        assert_eq!(
            LiveKitTarget::parse("ws://localhost:7880").unwrap().ws_url,
            "ws://localhost:7880"
        );
        assert!(LiveKitTarget::parse("livekit://host:7880?access_token=x").is_err());
        assert!(LiveKitTarget::parse("livekit://").is_err());
        assert!(LiveKitTarget::parse("http://host").is_err());
        assert_eq!(
            redact_livekit_url("wss://u:p@lk.example/rtc?access_token=secret"),
            "wss://lk.example"
        );
    }

    #[test]
    fn made_tokens_grant_a_screen_share_and_say_so() {
        let auth = LiveKitAuth::Keys {
            api_key: "key".into(),
            api_secret: "a-secret-of-at-least-32-characters!!".into(),
            room: "demo".into(),
            identity: "castline".into(),
        };
        let c = token_claims(&auth.token().unwrap()).unwrap();
        assert_eq!(c.room, "demo");
        assert_eq!(c.identity, "castline");
        assert!(c.can_publish);
        assert_eq!(cannot_publish(&c, true), None);
        assert!(!format!("{auth:?}").contains("secret"));
    }

    #[test]
    fn tokens_that_cannot_publish_are_refused_early() {
        let c = TokenClaims {
            can_publish: false,
            ..Default::default()
        };
        assert!(cannot_publish(&c, false).is_some());
        let cam_only = TokenClaims {
            can_publish: true,
            sources: vec!["camera".into()],
            ..Default::default()
        };
        assert!(cannot_publish(&cam_only, false).is_some());
        let expired = TokenClaims {
            can_publish: true,
            expires_at: Some(1),
            ..Default::default()
        };
        assert!(cannot_publish(&expired, false).is_some());
        assert!(token_claims("garbage").is_err());
        assert_eq!(
            scrub("invalid token: eyJhbGci.x.y, bad"),
            "invalid token: <redacted> bad"
        );
        assert!(token_claims("a.!!!.c").is_err());
    }
}
