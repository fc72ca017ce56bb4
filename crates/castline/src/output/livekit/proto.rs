//! LiveKit's signaling messages, sans-IO: what castline sends to join and publish, and what the
//! server's answers mean. No sockets here; [`super::signal`] moves the bytes.
//!
//! castline joins over LiveKit's v1 signaling path (`/rtc/v1?join_request=…`, "single peer
//! connection"): the join request carries the `AddTrackRequest`s and the publisher offer, and the
//! server creates no subscriber PeerConnection — the documented way for a client that only
//! publishes (`auto_subscribe` off as well). The older `/rtc` path always adds a subscriber
//! PeerConnection the client must answer.

use base64::Engine;
use livekit_protocol as lk;
use prost::Message;

/// The signaling protocol version castline speaks (the one that introduced v1 join requests).
pub const PROTOCOL_VERSION: i32 = 16;
/// Client track ids; they match the `msid` track ids of the hub's offer.
pub const VIDEO_CID: &str = "video";
pub const AUDIO_CID: &str = "audio";

/// What to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub width: u32,
    pub height: u32,
    pub bitrate: u64,
    pub fps: u32,
    pub audio: bool,
    pub track_name: String,
}

/// The join request: client info, no auto-subscription, the tracks and the offer.
pub fn join_request(p: &Publish, offer_sdp: &str) -> lk::JoinRequest {
    let mut tracks = vec![lk::AddTrackRequest {
        cid: VIDEO_CID.into(),
        name: p.track_name.clone(),
        r#type: lk::TrackType::Video as i32,
        width: p.width,
        height: p.height,
        source: lk::TrackSource::ScreenShare as i32,
        layers: vec![lk::VideoLayer {
            quality: lk::VideoQuality::High as i32,
            width: p.width,
            height: p.height,
            bitrate: p.bitrate.min(u32::MAX as u64) as u32,
            ..Default::default()
        }],
        ..Default::default()
    }];
    if p.audio {
        tracks.push(lk::AddTrackRequest {
            cid: AUDIO_CID.into(),
            name: format!("{}-audio", p.track_name),
            r#type: lk::TrackType::Audio as i32,
            source: lk::TrackSource::ScreenShareAudio as i32,
            audio_features: vec![lk::AudioTrackFeature::TfStereo as i32],
            ..Default::default()
        });
    }
    lk::JoinRequest {
        client_info: Some(lk::ClientInfo {
            sdk: lk::client_info::Sdk::Unknown as i32,
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
            os: std::env::consts::OS.into(),
            other_sdks: format!("castline/{}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        }),
        connection_settings: Some(lk::ConnectionSettings {
            auto_subscribe: false,
            adaptive_stream: false,
            ..Default::default()
        }),
        add_track_requests: tracks,
        publisher_offer: Some(lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer_sdp.into(),
            id: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The WebSocket URL of a v1 join: `{base}/rtc/v1?join_request=…` (the token goes in the
/// `Authorization` header, never in the URL).
pub fn join_url(base: &str, join: &lk::JoinRequest) -> String {
    let wrapped = lk::WrappedJoinRequest {
        compression: lk::wrapped_join_request::Compression::None as i32,
        join_request: join.encode_to_vec(),
    };
    let b64 = base64::engine::general_purpose::URL_SAFE.encode(wrapped.encode_to_vec());
    // '=' padding is a reserved character in a query value.
    let b64 = b64.replace('=', "%3D");
    format!("{}/rtc/v1?join_request={b64}", base.trim_end_matches('/'))
}

pub fn encode_request(msg: lk::signal_request::Message) -> Vec<u8> {
    lk::SignalRequest { message: Some(msg) }.encode_to_vec()
}

/// A ping with our clock (ms), in both forms servers understand.
pub fn pings(now_ms: i64, rtt_ms: i64) -> [Vec<u8>; 2] {
    [
        encode_request(lk::signal_request::Message::PingReq(lk::Ping {
            timestamp: now_ms,
            rtt: rtt_ms,
        })),
        encode_request(lk::signal_request::Message::Ping(now_ms)),
    ]
}

/// Leaving on our own: the server unpublishes the tracks at once instead of waiting for a timeout.
pub fn leave() -> Vec<u8> {
    encode_request(lk::signal_request::Message::Leave(lk::LeaveRequest {
        can_reconnect: false,
        reason: lk::DisconnectReason::ClientInitiated as i32,
        action: lk::leave_request::Action::Disconnect as i32,
        ..Default::default()
    }))
}

/// One of our ICE candidates (`candidate:…`, no `a=`) for the publisher PeerConnection.
pub fn trickle(candidate: &str, mid: &str) -> Vec<u8> {
    let init = serde_json::json!({ "candidate": candidate, "sdpMid": mid, "sdpMLineIndex": 0 });
    encode_request(lk::signal_request::Message::Trickle(lk::TrickleRequest {
        candidate_init: init.to_string(),
        target: lk::SignalTarget::Publisher as i32,
        ..Default::default()
    }))
}

/// The `a=candidate:` lines of an SDP, without the `a=`, with the mid of their section.
pub fn sdp_candidates(sdp: &str) -> Vec<(String, String)> {
    let mut mid = String::new();
    let mut out = Vec::new();
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = m.trim().to_string();
        } else if let Some(c) = line.strip_prefix("a=candidate:") {
            let c = format!("candidate:{}", c.trim());
            if !out.iter().any(|(x, _)| *x == c) {
                out.push((c, mid.clone()));
            }
        }
    }
    out
}

/// What a server message means to the publisher.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Joined {
        participant_sid: String,
        /// Seconds; 0 when the server asks for no pings.
        ping_interval: u32,
        ping_timeout: u32,
        server_version: String,
    },
    Answer(String),
    /// A server candidate for the publisher PeerConnection (`candidate:…`), None at the end.
    Candidate(Option<String>),
    TrackPublished {
        cid: String,
        sid: String,
        source: i32,
    },
    Pong {
        sent_ms: i64,
    },
    /// A new token to use when rejoining.
    RefreshToken(String),
    /// The server renegotiates (castline publishes only, and ignores it).
    Offer,
    /// The server refused a request, e.g. publishing without the permission.
    Refused(String),
    /// The server ends the session.
    Leave {
        reason: String,
        can_reconnect: bool,
        /// Removed, room deleted, duplicate identity: rejoining would not help.
        final_: bool,
    },
    Other,
}

/// Decode one binary frame from the server. Malformed bytes are an error, never a panic.
pub fn parse_response(bytes: &[u8]) -> Result<Event, String> {
    use lk::signal_response::Message as M;
    let resp = lk::SignalResponse::decode(bytes).map_err(|e| format!("malformed protobuf: {e}"))?;
    Ok(match resp.message {
        Some(M::Join(j)) => Event::Joined {
            participant_sid: j.participant.map(|p| p.sid).unwrap_or_default(),
            ping_interval: j.ping_interval.max(0) as u32,
            ping_timeout: j.ping_timeout.max(0) as u32,
            server_version: j.server_version,
        },
        Some(M::Answer(sd)) => Event::Answer(sd.sdp),
        Some(M::Offer(_)) => Event::Offer,
        Some(M::Trickle(t)) if t.target == lk::SignalTarget::Publisher as i32 => {
            Event::Candidate(parse_candidate_init(&t.candidate_init)?)
        }
        Some(M::Trickle(_)) => Event::Other,
        Some(M::TrackPublished(t)) => {
            let (sid, source) = t.track.map(|i| (i.sid, i.source)).unwrap_or_default();
            Event::TrackPublished {
                cid: t.cid,
                sid,
                source,
            }
        }
        Some(M::PongResp(p)) => Event::Pong {
            sent_ms: p.last_ping_timestamp,
        },
        Some(M::Pong(_)) => Event::Other,
        Some(M::RefreshToken(t)) => Event::RefreshToken(t),
        Some(M::RequestResponse(r)) if r.reason != lk::request_response::Reason::Ok as i32 => {
            let reason = lk::request_response::Reason::try_from(r.reason)
                .map(|r| r.as_str_name().to_string())
                .unwrap_or_else(|_| r.reason.to_string());
            Event::Refused(if r.message.is_empty() {
                reason
            } else {
                format!("{reason}: {}", r.message)
            })
        }
        Some(M::Leave(l)) => {
            let reason = lk::DisconnectReason::try_from(l.reason).unwrap_or_default();
            let final_ = matches!(
                reason,
                lk::DisconnectReason::ParticipantRemoved
                    | lk::DisconnectReason::RoomDeleted
                    | lk::DisconnectReason::DuplicateIdentity
                    | lk::DisconnectReason::RoomClosed
            );
            Event::Leave {
                reason: reason.as_str_name().to_string(),
                can_reconnect: l.can_reconnect,
                final_,
            }
        }
        _ => Event::Other,
    })
}

/// `{"candidate":"candidate:…","sdpMid":…}` → the candidate line; an empty one ends gathering.
fn parse_candidate_init(json: &str) -> Result<Option<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("malformed trickle candidate: {e}"))?;
    let c = v
        .get("candidate")
        .and_then(|c| c.as_str())
        .ok_or("trickle candidate without a candidate field")?;
    Ok((!c.trim().is_empty()).then(|| c.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Publish {
        Publish {
            width: 1280,
            height: 720,
            bitrate: 3_000_000,
            fps: 30,
            audio: true,
            track_name: "screen".into(),
        }
    }

    #[test]
    fn join_request_carries_screen_share_tracks_and_the_offer() {
        let j = join_request(&publish(), "v=0\r\n");
        assert_eq!(j.add_track_requests.len(), 2);
        let v = &j.add_track_requests[0];
        assert_eq!(v.source, lk::TrackSource::ScreenShare as i32);
        assert_eq!(v.r#type, lk::TrackType::Video as i32);
        assert_eq!((v.width, v.height), (1280, 720));
        assert_eq!(
            j.add_track_requests[1].source,
            lk::TrackSource::ScreenShareAudio as i32
        );
        assert!(!j.connection_settings.unwrap().auto_subscribe);
        assert_eq!(j.publisher_offer.unwrap().sdp, "v=0\r\n");
        let no_audio = join_request(
            &Publish {
                audio: false,
                ..publish()
            },
            "",
        );
        assert_eq!(no_audio.add_track_requests.len(), 1);
    }

    #[test]
    fn join_url_round_trips() {
        let j = join_request(&publish(), "v=0\r\n");
        let url = join_url("ws://127.0.0.1:7880/", &j);
        let q = url
            .strip_prefix("ws://127.0.0.1:7880/rtc/v1?join_request=")
            .unwrap();
        assert!(!q.contains('='));
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(q.replace("%3D", "="))
            .unwrap();
        let w = lk::WrappedJoinRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            lk::JoinRequest::decode(w.join_request.as_slice()).unwrap(),
            j
        );
    }

    fn response(m: lk::signal_response::Message) -> Vec<u8> {
        lk::SignalResponse { message: Some(m) }.encode_to_vec()
    }

    #[test]
    fn responses_mean_what_they_say() {
        use lk::signal_response::Message as M;
        let t = response(M::Trickle(lk::TrickleRequest {
            candidate_init: r#"{"candidate":"candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host","sdpMid":"0"}"#.into(),
            target: lk::SignalTarget::Publisher as i32,
            ..Default::default()
        }));
        assert_eq!(
            parse_response(&t).unwrap(),
            Event::Candidate(Some(
                "candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host".into()
            ))
        );
        let leave = response(M::Leave(lk::LeaveRequest {
            reason: lk::DisconnectReason::ParticipantRemoved as i32,
            ..Default::default()
        }));
        assert!(matches!(
            parse_response(&leave).unwrap(),
            Event::Leave { final_: true, .. }
        ));
        let shutdown = response(M::Leave(lk::LeaveRequest {
            reason: lk::DisconnectReason::ServerShutdown as i32,
            can_reconnect: true,
            ..Default::default()
        }));
        assert!(matches!(
            parse_response(&shutdown).unwrap(),
            Event::Leave {
                final_: false,
                can_reconnect: true,
                ..
            }
        ));
        let refused = response(M::RequestResponse(lk::RequestResponse {
            reason: lk::request_response::Reason::NotAllowed as i32,
            message: "no permission".into(),
            ..Default::default()
        }));
        assert!(
            matches!(parse_response(&refused).unwrap(), Event::Refused(m) if m.contains("NOT_ALLOWED"))
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(parse_response(&[0xff, 0xff, 0xff]).is_err());
        let bad_trickle = response(lk::signal_response::Message::Trickle(lk::TrickleRequest {
            candidate_init: "{not json".into(),
            target: 0,
            ..Default::default()
        }));
        assert!(parse_response(&bad_trickle).is_err());
    }

    #[test]
    fn candidates_come_from_the_offer_once() {
        let sdp = "v=0\r\na=mid:0\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\na=mid:1\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n";
        let c = sdp_candidates(sdp);
        assert_eq!(
            c,
            vec![(
                "candidate:1 1 udp 1 10.0.0.1 5000 typ host".to_string(),
                "0".to_string()
            )]
        );
    }
}
