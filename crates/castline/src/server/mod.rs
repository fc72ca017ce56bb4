//! `castline serve`: the HTTP server in front of the WebRTC hub.
//!
//! - `GET /?token=T`: the viewer page (plays the stream in a `<video>` element);
//! - `GET /ws?token=T`: the WebSocket signaling channel (see [`signaling`]);
//! - `POST /whep` (`Authorization: Bearer T`, body: SDP offer) → `201`, SDP answer, `Location`;
//!   `PATCH` that location with an `application/trickle-ice-sdpfrag` body; `DELETE` it to leave.
//!   CORS is open so players on other origins can use it: the token is the access control.
//!
//! Anything without the right token gets `401` and nothing else.

pub mod signaling;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, StatusCode};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::webrtc::{token_matches, Hub, HubError, PeerId};
use signaling::{parse_client_message, ClientMessage, ServerMessage};

const VIEWER_PAGE: &str = include_str!("viewer.html");
/// Request bodies (SDP offers, trickle fragments) larger than this are refused.
const MAX_BODY_BYTES: usize = 64 * 1024;
const HTTP_WORKERS: usize = 4;
/// Open signaling channels at once (each holds a thread).
const MAX_WEBSOCKETS: usize = 64;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub reason: String,
}

pub struct ViewerServer {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    token: Arc<str>,
    workers: Vec<JoinHandle<()>>,
}

impl ViewerServer {
    pub fn start(listen: SocketAddr, token: String, hub: Hub) -> Result<Self, BindError> {
        let http = tiny_http::Server::http(listen).map_err(|e| BindError {
            addr: listen,
            reason: e.to_string(),
        })?;
        let addr = http.server_addr().to_ip().unwrap_or(listen);
        let http = Arc::new(http);
        let token: Arc<str> = token.into();
        let sockets = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..HTTP_WORKERS {
            let (http, token, hub, sockets) =
                (http.clone(), token.clone(), hub.clone(), sockets.clone());
            let w = std::thread::Builder::new()
                .name("castline-http".into())
                .spawn(move || {
                    while let Ok(req) = http.recv() {
                        handle(req, &token, &hub, &sockets);
                    }
                })
                .map_err(|e| BindError {
                    addr: listen,
                    reason: e.to_string(),
                })?;
            workers.push(w);
        }
        tracing::info!(addr = %addr, "server_listening");
        Ok(Self {
            http,
            addr,
            token,
            workers,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL that opens the viewer page (holds the token: show it to the user, never log it).
    pub fn viewer_url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.token)
    }

    pub fn stop(self) {
        for _ in &self.workers {
            self.http.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    // Names and values here are ASCII constants or numbers: always valid.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("static header")
    })
}

fn cors(mut r: Response<std::io::Cursor<Vec<u8>>>) -> Response<std::io::Cursor<Vec<u8>>> {
    r.add_header(header("Access-Control-Allow-Origin", "*"));
    r.add_header(header(
        "Access-Control-Allow-Methods",
        "GET, POST, PATCH, DELETE, OPTIONS",
    ));
    r.add_header(header(
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type, If-Match",
    ));
    r.add_header(header(
        "Access-Control-Expose-Headers",
        "Location, Link, ETag",
    ));
    // Players on public origins may reach a server on the LAN (Private Network Access).
    r.add_header(header("Access-Control-Allow-Private-Network", "true"));
    r
}

fn text(status: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    cors(
        Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
    )
}

fn unauthorized() -> Response<std::io::Cursor<Vec<u8>>> {
    text(401, "unauthorized\n").with_header(header("WWW-Authenticate", "Bearer"))
}

fn query_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn header_value<'a>(req: &'a Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn bearer_ok(req: &Request, token: &str) -> bool {
    header_value(req, "Authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|t| token_matches(t.trim(), token))
}

fn query_token_ok(url: &str, token: &str) -> bool {
    query_param(url, "token").is_some_and(|t| token_matches(t, token))
}

fn read_body(req: &mut Request) -> Result<String, Response<std::io::Cursor<Vec<u8>>>> {
    if req.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(text(413, "body too large\n"));
    }
    let mut body = Vec::new();
    let n = req
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|_| text(400, "unreadable body\n"))?;
    if n > MAX_BODY_BYTES {
        return Err(text(413, "body too large\n"));
    }
    String::from_utf8(body).map_err(|_| text(400, "body is not UTF-8\n"))
}

fn hub_error_response(e: &HubError) -> Response<std::io::Cursor<Vec<u8>>> {
    let status = match e {
        HubError::BadSdp(_) | HubError::Negotiation(_) | HubError::BadCandidate(_) => 400,
        HubError::UnknownPeer(_) => 404,
        HubError::Full(_) | HubError::Stopped => 503,
    };
    text(status, &format!("{e}\n"))
}

fn handle(mut req: Request, token: &str, hub: &Hub, sockets: &Arc<AtomicUsize>) {
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let method = req.method().clone();
    let response = match (&method, path.as_str()) {
        (Method::Options, _) => cors(Response::from_string("").with_status_code(204)),
        (Method::Get, "/" | "/index.html") => {
            if !query_token_ok(&url, token) {
                unauthorized()
            } else {
                Response::from_string(VIEWER_PAGE)
                    .with_header(header("Content-Type", "text/html; charset=utf-8"))
                    .with_header(header("Cache-Control", "no-store"))
            }
        }
        (Method::Get, "/ws") => {
            if !query_token_ok(&url, token) {
                unauthorized()
            } else if sockets.load(Ordering::SeqCst) >= MAX_WEBSOCKETS {
                text(503, "too many signaling connections\n")
            } else {
                match websocket_accept(&req) {
                    Some(accept) => {
                        let hub = hub.clone();
                        let sockets = sockets.clone();
                        let response = Response::empty(StatusCode(101))
                            .with_header(header("Sec-WebSocket-Accept", &accept));
                        let stream = req.upgrade("websocket", response);
                        sockets.fetch_add(1, Ordering::SeqCst);
                        let spawned = std::thread::Builder::new()
                            .name("castline-signal".into())
                            .spawn({
                                let sockets = sockets.clone();
                                move || {
                                    run_signaling(stream, &hub);
                                    sockets.fetch_sub(1, Ordering::SeqCst);
                                }
                            });
                        if spawned.is_err() {
                            sockets.fetch_sub(1, Ordering::SeqCst);
                        }
                        return;
                    }
                    None => text(400, "expected a WebSocket upgrade\n"),
                }
            }
        }
        (Method::Post, "/whep") => {
            if !bearer_ok(&req, token) {
                unauthorized()
            } else {
                match read_body(&mut req) {
                    Err(r) => r,
                    Ok(offer) => match hub.accept_offer(&offer, "whep") {
                        Ok((id, answer)) => cors(
                            Response::from_string(answer)
                                .with_status_code(201)
                                .with_header(header("Content-Type", "application/sdp"))
                                .with_header(header("Location", &format!("/whep/{id}"))),
                        ),
                        Err(e) => hub_error_response(&e),
                    },
                }
            }
        }
        (Method::Delete | Method::Patch, p) if p.starts_with("/whep/") => {
            let id = p["/whep/".len()..].parse::<PeerId>().ok();
            if !bearer_ok(&req, token) {
                unauthorized()
            } else if let Some(id) = id {
                if method == Method::Delete {
                    // Removing an unknown or already-gone peer is not an error for the client.
                    hub.remove(id);
                    text(200, "")
                } else {
                    match read_body(&mut req) {
                        Err(r) => r,
                        Ok(frag) => trickle(hub, id, &frag),
                    }
                }
            } else {
                text(404, "no such session\n")
            }
        }
        _ => text(404, "not found\n"),
    };
    let _ = req.respond(response);
}

/// Apply the candidates of a trickle-ICE SDP fragment (RFC 8840).
fn trickle(hub: &Hub, id: PeerId, frag: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    for line in frag.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix("a=candidate:") {
            if let Err(e) = hub.add_remote_candidate(id, &format!("candidate:{c}")) {
                return hub_error_response(&e);
            }
        }
    }
    text(204, "")
}

/// The Sec-WebSocket-Accept value for a valid upgrade request, None otherwise.
fn websocket_accept(req: &Request) -> Option<String> {
    let upgrade = header_value(req, "Upgrade")?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let key = header_value(req, "Sec-WebSocket-Key")?;
    Some(tungstenite::handshake::derive_accept_key(
        key.trim().as_bytes(),
    ))
}

/// One browser's signaling session: blocking reads, a reply per message.
fn run_signaling(stream: Box<dyn tiny_http::ReadWrite + Send>, hub: &Hub) {
    // Messages up to 1 MiB are read and answered (over 64 KiB: a too_large error); beyond that
    // the connection is dropped rather than buffered.
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(1 << 20);
    config.max_frame_size = Some(1 << 20);
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    let mut joined = false;
    let mut peer: Option<PeerId> = None;
    loop {
        let msg = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(Message::Binary(_)) => {
                let reply = ServerMessage::error("bad_message", "expected a JSON text message");
                if ws.send(Message::text(reply.to_json())).is_err() {
                    break;
                }
                continue;
            }
            Ok(_) => continue,
        };
        let reply = match parse_client_message(msg.as_str()) {
            Err(e) => {
                tracing::warn!(error = %e, "signaling_message_rejected");
                Some(ServerMessage::error(e.code(), e.to_string()))
            }
            Ok(ClientMessage::Join {}) => {
                joined = true;
                Some(ServerMessage::Joined)
            }
            Ok(ClientMessage::Offer { .. }) if !joined => {
                Some(ServerMessage::error("not_joined", "send join first"))
            }
            Ok(ClientMessage::Offer { sdp }) => {
                if let Some(old) = peer.take() {
                    hub.remove(old);
                }
                match hub.accept_offer(&sdp, "ws") {
                    Ok((id, answer)) => {
                        peer = Some(id);
                        Some(ServerMessage::Answer {
                            sdp: answer,
                            viewer: id,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "signaling_offer_rejected");
                        let code = match e {
                            HubError::Full(_) => "full",
                            HubError::Stopped => "unavailable",
                            _ => "bad_sdp",
                        };
                        Some(ServerMessage::error(code, e.to_string()))
                    }
                }
            }
            Ok(ClientMessage::IceCandidate { candidate, .. }) => match (peer, candidate) {
                (Some(id), Some(c)) if !c.trim().is_empty() => {
                    match hub.add_remote_candidate(id, &c) {
                        Ok(()) => None,
                        Err(e) => Some(ServerMessage::error("bad_candidate", e.to_string())),
                    }
                }
                (None, _) => Some(ServerMessage::error(
                    "not_joined",
                    "send an offer before candidates",
                )),
                _ => None,
            },
            Ok(ClientMessage::Leave {}) => {
                if let Some(id) = peer.take() {
                    hub.remove(id);
                }
                joined = false;
                Some(ServerMessage::Left)
            }
        };
        if let Some(r) = reply {
            if ws.send(Message::text(r.to_json())).is_err() {
                break;
            }
        }
    }
    if let Some(id) = peer {
        hub.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_exactly() {
        assert_eq!(query_param("/?token=abc&x=1", "token"), Some("abc"));
        assert_eq!(query_param("/?xtoken=abc", "token"), None);
        assert_eq!(query_param("/", "token"), None);
        assert!(query_token_ok("/ws?token=s3cret", "s3cret"));
        assert!(!query_token_ok("/ws?token=s3cre", "s3cret"));
        assert!(!query_token_ok("/ws?token=", "s3cret"));
    }
}
