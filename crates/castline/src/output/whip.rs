//! WHIP publishing (RFC 9725): POST an SDP offer, get `201` + answer + `Location`, send media
//! over ICE/DTLS/SRTP, `DELETE` the resource on stop. A session that fails later is re-created
//! with backoff; a first session that fails is reported at once, classified.
//!
//! ICE is "full" (non-trickle): the offer carries every host candidate of this machine.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reconnect::Reconnect;
use super::{LinkReport, Output, OutputSummary, RtmpOptions, Written};
use crate::encode::{EncodedPacket, MediaInfo, MediaKind};
use crate::error::OutputError;
use crate::pipeline::clock::MediaClock;
use crate::webrtc::{self, hub::HubThread, Hub, HubConfig, PeerEvent, PeerId};

/// The part of a WHIP URL safe to log: scheme, host and path, no query (tokens ride there too).
pub fn redact_whip_url(url: &str) -> String {
    let u = url.strip_prefix("whip+").unwrap_or(url);
    u.split(['?', '#']).next().unwrap_or("").to_string()
}

/// Validate a WHIP endpoint URL (http, https, or the same prefixed by `whip+`).
pub fn parse_whip_url(url: &str) -> Result<String, OutputError> {
    let u = url.strip_prefix("whip+").unwrap_or(url);
    let lower = u.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| OutputError::InvalidUrl {
            url: redact_whip_url(url),
            reason: "a WHIP endpoint is an http:// or https:// URL".into(),
        })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err(OutputError::InvalidUrl {
            url: redact_whip_url(url),
            reason: "missing host (and credentials belong in --bearer, not the URL)".into(),
        });
    }
    Ok(u.to_string())
}

/// One WHIP session: the resource URL to DELETE, and our peer in the hub.
struct Session {
    resource: Option<String>,
    peer: PeerId,
}

pub struct WhipOutput {
    url: String,
    bearer: Option<String>,
    opts: RtmpOptions,
    agent: ureq::Agent,
    hub: Hub,
    hub_thread: Option<HubThread>,
    events: Receiver<PeerEvent>,
    audio: bool,
    extradata: Vec<u8>,
    session: Option<Session>,
    reconnect: Reconnect,
    started: bool,
    bytes: u64,
    packets: u64,
}

fn agent(timeout: Duration) -> ureq::Agent {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .tls_config(tls)
        .build()
        .into()
}

impl WhipOutput {
    pub fn connect(
        url: &str,
        bearer: Option<String>,
        info: &MediaInfo,
        clock: MediaClock,
        keyframe: Arc<AtomicBool>,
        opts: RtmpOptions,
        adapt: Option<webrtc::hub::PeerAdapt>,
    ) -> Result<Self, OutputError> {
        let url = parse_whip_url(url)?;
        webrtc::init_crypto();
        let cfg = HubConfig {
            bind_ip: std::net::IpAddr::from([0, 0, 0, 0]),
            ice_lite: false,
            max_peers: 1,
            connect_timeout: opts.connect_timeout.max(Duration::from_secs(5)) * 2,
            // SFUs send RTCP receiver reports every second or so.
            silence_timeout: Duration::from_secs(5),
            name: "whip".into(),
            adapt,
            ..HubConfig::default()
        };
        let (hub, hub_thread) =
            Hub::start(cfg, keyframe, clock).map_err(|e| OutputError::Bind {
                addr: "0.0.0.0:0".into(),
                reason: format!("UDP: {e}"),
            })?;
        let events = hub.subscribe();
        let mut out = Self {
            agent: agent(opts.connect_timeout.max(Duration::from_secs(2))),
            url,
            bearer,
            reconnect: Reconnect::new(opts.clone()),
            opts,
            hub,
            hub_thread: Some(hub_thread),
            events,
            audio: info.audio.is_some(),
            extradata: info.video.extradata.clone(),
            session: None,
            started: false,
            bytes: 0,
            packets: 0,
        };
        if let Err(e) = out.open_session() {
            out.shutdown();
            return Err(e);
        }
        out.started = true;
        Ok(out)
    }

    fn safe_url(&self) -> String {
        redact_whip_url(&self.url)
    }

    /// Offer, POST, answer, then wait for ICE+DTLS to connect.
    fn open_session(&mut self) -> Result<(), OutputError> {
        let (peer, offer) = self
            .hub
            .create_offer("whip", self.audio)
            .map_err(|e| self.lost(e.to_string()))?;
        let (resource, answer) = match self.post_offer(&offer) {
            Ok(r) => r,
            Err(e) => {
                self.hub.remove(peer);
                return Err(e);
            }
        };
        self.session = Some(Session {
            resource: resource.clone(),
            peer,
        });
        if let Err(e) = self.hub.accept_answer(peer, &answer) {
            self.end_session();
            return Err(OutputError::Rejected {
                url: self.safe_url(),
                reason: format!("unusable SDP answer: {e}"),
            });
        }
        let deadline = Instant::now() + self.opts.connect_timeout.max(Duration::from_secs(5));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(PeerEvent::Connected(id)) if id == peer => {
                    tracing::info!(output = %self.safe_url(), "output_connected");
                    return Ok(());
                }
                Ok(PeerEvent::Closed(id, why)) if id == peer => {
                    self.end_session();
                    return Err(self.lost(format!("the WebRTC session closed: {why}")));
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    self.end_session();
                    return Err(OutputError::Unreachable {
                        url: self.safe_url(),
                        reason: "ICE/DTLS did not connect (no media path to the server)".into(),
                    });
                }
            }
        }
    }

    fn lost(&self, reason: String) -> OutputError {
        OutputError::Lost {
            url: self.safe_url(),
            reason,
        }
    }

    fn post_offer(&self, offer: &str) -> Result<(Option<String>, String), OutputError> {
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/sdp");
        if let Some(b) = &self.bearer {
            req = req.header("Authorization", &format!("Bearer {b}"));
        }
        let mut resp = req.send(offer).map_err(|e| self.http_error(e))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| self.resolve(l));
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024)
            .read_to_string()
            .unwrap_or_default();
        match status {
            201 | 200 => Ok((location, body)),
            400..=499 => Err(OutputError::Rejected {
                url: self.safe_url(),
                reason: format!(
                    "HTTP {status}{}",
                    if status == 401 || status == 403 {
                        " (check --bearer)"
                    } else {
                        ""
                    }
                ),
            }),
            _ => Err(OutputError::Unreachable {
                url: self.safe_url(),
                reason: format!("HTTP {status}"),
            }),
        }
    }

    /// The Location header may be relative to the endpoint.
    fn resolve(&self, location: &str) -> String {
        if location.contains("://") {
            return location.to_string();
        }
        let scheme_end = self.url.find("://").map(|i| i + 3).unwrap_or(0);
        let host_end = self.url[scheme_end..]
            .find('/')
            .map(|i| i + scheme_end)
            .unwrap_or(self.url.len());
        if location.starts_with('/') {
            format!("{}{}", &self.url[..host_end], location)
        } else {
            let base = self
                .url
                .rsplit_once('/')
                .map(|(b, _)| b)
                .unwrap_or(&self.url);
            format!("{base}/{location}")
        }
    }

    fn http_error(&self, e: ureq::Error) -> OutputError {
        let url = self.safe_url();
        match &e {
            ureq::Error::HostNotFound => OutputError::Dns {
                host: url
                    .split("://")
                    .nth(1)
                    .and_then(|r| r.split(['/', ':']).next())
                    .unwrap_or("")
                    .to_string(),
                url,
            },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                OutputError::Refused { url }
            }
            ureq::Error::Timeout(_) => OutputError::Unreachable {
                url,
                reason: "timed out".into(),
            },
            _ => OutputError::Unreachable {
                url,
                reason: e.to_string(),
            },
        }
    }

    /// Tell the server we are gone (best effort) and drop our peer.
    fn end_session(&mut self) {
        if let Some(s) = self.session.take() {
            self.hub.remove(s.peer);
            if let Some(r) = s.resource {
                let mut req = self.agent.delete(&r);
                if let Some(b) = &self.bearer {
                    req = req.header("Authorization", &format!("Bearer {b}"));
                }
                match req.call() {
                    Ok(resp) => tracing::info!(
                        output = %self.safe_url(),
                        status = resp.status().as_u16(),
                        "whip_session_deleted"
                    ),
                    Err(e) => {
                        tracing::warn!(output = %self.safe_url(), error = %e, "whip_delete_failed")
                    }
                }
            }
        }
    }

    fn shutdown(&mut self) {
        self.end_session();
        self.hub.shutdown();
        if let Some(t) = self.hub_thread.take() {
            t.join();
        }
    }

    /// Check the session; reconnect with backoff when it has failed. Returns whether media
    /// can flow now.
    fn maintain(&mut self) -> Result<bool, OutputError> {
        while let Ok(ev) = self.events.try_recv() {
            if let (PeerEvent::Closed(id, why), Some(s)) = (&ev, &self.session) {
                if *id == s.peer {
                    tracing::warn!(output = %self.safe_url(), reason = %why, "output_disconnected");
                    self.end_session();
                    self.reconnect.lost(Instant::now());
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
            Err(e) => self
                .reconnect
                .failed(Instant::now(), self.safe_url(), e)
                .map(|()| false),
        }
    }
}

impl Output for WhipOutput {
    fn name(&self) -> String {
        format!("whip {}", self.safe_url())
    }

    fn write(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError> {
        if !self.maintain()? {
            return Ok(Written::Skipped {
                want_keyframe: pkt.media == MediaKind::Video,
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
        self.shutdown();
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
    fn whip_urls() {
        assert!(parse_whip_url("http://127.0.0.1:8080/whip").is_ok());
        assert!(parse_whip_url("whip+https://sfu.example/whip/room?x=1").is_ok());
        assert!(parse_whip_url("rtmp://x/y").is_err());
        assert!(parse_whip_url("http:///whip").is_err());
        assert!(parse_whip_url("https://user:pw@host/whip").is_err());
        assert_eq!(
            redact_whip_url("whip+https://h/whip?token=secret"),
            "https://h/whip"
        );
    }
}
