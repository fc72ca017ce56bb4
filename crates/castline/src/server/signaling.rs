//! The WebSocket signaling protocol of `castline serve` (JSON text messages; see README).
//!
//! Browser → castline: `join`, `offer {sdp}`, `ice_candidate {candidate}`, `leave`.
//! castline → browser: `joined`, `answer {sdp, viewer}`, `left`, `error {code, message}`.
//! The browser is receive-only: it offers recvonly video and audio; castline's answer carries
//! its ICE candidates, so it never trickles any.

use serde::{Deserialize, Serialize};

/// Largest signaling message accepted (an SDP offer is a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Join {},
    Offer {
        sdp: String,
    },
    IceCandidate {
        /// The `candidate:…` attribute; empty or absent means end of candidates.
        #[serde(default)]
        candidate: Option<String>,
        #[serde(default, rename = "sdpMid")]
        sdp_mid: Option<String>,
        #[serde(default, rename = "sdpMLineIndex")]
        sdp_mline_index: Option<u32>,
    },
    Leave {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined,
    Answer { sdp: String, viewer: u64 },
    Left,
    Error { code: &'static str, message: String },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl MessageError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "bad_message",
        }
    }
}

/// Parse one text message from the browser. Never panics, whatever the input.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, MessageError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge(text.len()));
    }
    serde_json::from_str(text).map_err(|e| MessageError::Malformed(e.to_string()))
}

impl ServerMessage {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{\"type\":\"error\"}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            parse_client_message(r#"{"type":"join"}"#),
            Ok(ClientMessage::Join {})
        );
        assert_eq!(
            parse_client_message(r#"{"type":"offer","sdp":"v=0"}"#),
            Ok(ClientMessage::Offer { sdp: "v=0".into() })
        );
        assert!(matches!(
            parse_client_message(
                r#"{"type":"ice_candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#
            ),
            Ok(ClientMessage::IceCandidate {
                candidate: Some(_),
                ..
            })
        ));
        assert_eq!(
            parse_client_message(r#"{"type":"leave"}"#),
            Ok(ClientMessage::Leave {})
        );
    }

    #[test]
    fn rejects_malformed_and_oversized() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"type":"dance"}"#,
            r#"{"type":"offer"}"#,
            r#"{"type":"offer","sdp":5}"#,
            r#"{"sdp":"v=0"}"#,
        ] {
            assert!(
                matches!(parse_client_message(bad), Err(MessageError::Malformed(_))),
                "{bad}"
            );
        }
        let big = format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(
            parse_client_message(&big).map_err(|e| e.code()),
            Err("too_large")
        );
    }

    #[test]
    fn server_messages_are_tagged_json() {
        assert_eq!(ServerMessage::Joined.to_json(), r#"{"type":"joined"}"#);
        assert_eq!(
            ServerMessage::error("bad_sdp", "x").to_json(),
            r#"{"type":"error","code":"bad_sdp","message":"x"}"#
        );
    }
}
