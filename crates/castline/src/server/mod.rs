//! `castline serve`: the HTTP server in front of the WebRTC hub.
//!
//! - `GET /?token=T`: the viewer page (plays the stream in a `<video>` element);
//! - `GET /ws?token=T`: the WebSocket signaling channel (see [`signaling`]);
//! - `POST /whep` (`Authorization: Bearer T`, body: SDP offer) → `201`, SDP answer, `Location`;
//!   `PATCH` that location with an `application/trickle-ice-sdpfrag` body; `DELETE` it to leave.
//!   CORS is open so players on other origins can use it: the token is the access control.
//!
//! Anything without the right token gets `401` and nothing else.

pub mod http;
pub mod limits;
pub mod signaling;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::webrtc::{token_matches, Hub, HubError, PeerId};
use http::{HttpConn, ReadError, RequestHead, Response};
pub use limits::ServerLimits;
use limits::{Admission, Refusal};
use signaling::{parse_client_message, ClientMessage, ServerMessage};

const VIEWER_PAGE: &str = include_str!("viewer.html");
/// A client that does not read its response within this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// What the connection threads share.
struct State {
    token: Arc<str>,
    hub: Hub,
    limits: ServerLimits,
    stopping: AtomicBool,
    admission: Mutex<Admission>,
    /// Open connections by id (a clone of each socket, so `stop` can shut them down).
    open: Mutex<HashMap<u64, TcpStream>>,
    closed: Condvar,
    next_id: AtomicU64,
    websockets: AtomicUsize,
}

/// `serve`'s HTTP and WebSocket server: one accept thread, one thread per admitted connection
/// (bounded by [`ServerLimits`]).
pub struct ViewerServer {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl ViewerServer {
    pub fn start(listen: SocketAddr, token: String, hub: Hub) -> Result<Self, BindError> {
        Self::start_with_limits(listen, token, hub, ServerLimits::default())
    }

    pub fn start_with_limits(
        listen: SocketAddr,
        token: String,
        hub: Hub,
        limits: ServerLimits,
    ) -> Result<Self, BindError> {
        let bind_error = |e: std::io::Error| BindError {
            addr: listen,
            reason: e.to_string(),
        };
        let listener = TcpListener::bind(listen).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let state = Arc::new(State {
            token: token.into(),
            hub,
            limits,
            stopping: AtomicBool::new(false),
            admission: Mutex::new(Admission::default()),
            open: Mutex::new(HashMap::new()),
            closed: Condvar::new(),
            next_id: AtomicU64::new(0),
            websockets: AtomicUsize::new(0),
        });
        let acceptor = std::thread::Builder::new()
            .name("castline-http".into())
            .spawn({
                let state = state.clone();
                move || accept_loop(listener, &state)
            })
            .map_err(bind_error)?;
        tracing::info!(addr = %addr, "server_listening");
        Ok(Self {
            addr,
            state,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL that opens the viewer page (holds the token: show it to the user, never log it).
    pub fn viewer_url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.state.token)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.state.admission).open()
    }

    /// Stop accepting, close every open connection, and wait (briefly) for their threads.
    pub fn stop(mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.addr.port()))
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, self.addr.port()))
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let mut open = lock(&self.state.open);
        for s in open.values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(open = open.len(), "server_connections_left_open");
                break;
            }
            open = match self.state.closed.wait_timeout(open, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: TcpListener, state: &Arc<State>) {
    let mut refused_logged = Instant::now() - Duration::from_secs(10);
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                if state.stopping.load(Ordering::SeqCst) {
                    return;
                }
                // Out of descriptors, or a connection reset before accept: wait, do not spin.
                tracing::debug!(error = %e, "accept_failed");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let ip = peer.ip();
        let admitted = lock(&state.admission).admit(ip, &state.limits);
        if let Err(refusal) = admitted {
            refuse(stream, refusal);
            // A flood is logged once a second, not once per connection.
            if refused_logged.elapsed() >= Duration::from_secs(1) {
                refused_logged = Instant::now();
                let total = lock(&state.admission).refused();
                tracing::warn!(
                    reason = refusal.as_str(),
                    refused_total = total,
                    "connection_refused"
                );
            }
            continue;
        }
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&state.open).insert(id, clone);
        }
        let spawned = std::thread::Builder::new()
            .name("castline-conn".into())
            .spawn({
                let state = state.clone();
                move || {
                    serve_connection(stream, &state);
                    lock(&state.admission).release(ip);
                    lock(&state.open).remove(&id);
                    state.closed.notify_all();
                }
            });
        if spawned.is_err() {
            lock(&state.admission).release(ip);
            lock(&state.open).remove(&id);
        }
    }
}

/// Answer 503 without waiting on the client, then close.
fn refuse(stream: TcpStream, refusal: Refusal) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    let body = match refusal {
        Refusal::Full => "server busy\n",
        Refusal::PerIpFull => "too many connections from this address\n",
    };
    let r = text(503, body).header("Retry-After", "1");
    let _ = (&stream).write_all(&r.to_bytes(false));
}

fn cors(r: Response) -> Response {
    r.header("Access-Control-Allow-Origin", "*")
        .header(
            "Access-Control-Allow-Methods",
            "GET, POST, PATCH, DELETE, OPTIONS",
        )
        .header(
            "Access-Control-Allow-Headers",
            "Authorization, Content-Type, If-Match",
        )
        .header("Access-Control-Expose-Headers", "Location, Link, ETag")
        // Players on public origins may reach a server on the LAN (Private Network Access).
        .header("Access-Control-Allow-Private-Network", "true")
}

fn text(status: u16, body: &str) -> Response {
    cors(
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body),
    )
}

fn unauthorized() -> Response {
    text(401, "unauthorized\n").header("WWW-Authenticate", "Bearer")
}

fn bearer_ok(head: &RequestHead, token: &str) -> bool {
    head.header("Authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|t| token_matches(t.trim(), token))
}

fn query_token_ok(head: &RequestHead, token: &str) -> bool {
    head.query("token").is_some_and(|t| token_matches(t, token))
}

fn hub_error_response(e: &HubError) -> Response {
    let status = match e {
        HubError::BadSdp(_) | HubError::Negotiation(_) | HubError::BadCandidate(_) => 400,
        HubError::UnknownPeer(_) => 404,
        HubError::Full(_) | HubError::Stopped => 503,
    };
    text(status, &format!("{e}\n"))
}

/// What a request turned into.
enum Reply {
    /// Answer; the connection may stay open if the request's body was read.
    Respond(Response),
    /// Switch to the signaling WebSocket (the value of Sec-WebSocket-Accept).
    WebSocket(String),
}

/// Requests on one connection, one after the other, until it closes, errs or times out.
fn serve_connection(stream: TcpStream, state: &Arc<State>) {
    let limits = &state.limits;
    let mut conn = HttpConn::new(stream, WRITE_TIMEOUT);
    let mut wait = limits.header_timeout;
    for _ in 0..limits.max_requests_per_connection {
        let head = match conn.read_head(Instant::now() + wait, limits) {
            Ok(h) => h,
            Err(ReadError::Refused(e)) => {
                let _ = conn.respond(&text(e.status(), &format!("{e}\n")), false);
                return;
            }
            Err(ReadError::TimedOut) => {
                let _ = conn.respond(&text(408, "request timeout\n"), false);
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        };
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut body_read = head.body_len == 0;
        let reply = route(&head, &mut conn, &mut body_read, state);
        match reply {
            Reply::Respond(r) => {
                let keep_alive = head.keep_alive && body_read;
                if conn.respond(&r, keep_alive).is_err() || !keep_alive {
                    return;
                }
            }
            Reply::WebSocket(accept) => {
                let r = Response::new(101)
                    .header("Upgrade", "websocket")
                    .header("Connection", "Upgrade")
                    .header("Sec-WebSocket-Accept", accept);
                if conn.respond(&r, true).is_ok() {
                    let (stream, early) = conn.into_parts();
                    run_signaling(stream, early, state);
                }
                state.websockets.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
        wait = limits.idle_timeout;
    }
}

/// Read the request's body (`Expect: 100-continue` answered first); Err is the response.
fn read_body(
    head: &RequestHead,
    conn: &mut HttpConn,
    body_read: &mut bool,
    limits: &ServerLimits,
) -> Result<String, Response> {
    if head.expect_continue && head.body_len > 0 && conn.send_continue().is_err() {
        return Err(text(400, "unreadable body\n"));
    }
    let body = match conn.read_body(head.body_len, Instant::now() + limits.body_timeout) {
        Ok(b) => b,
        Err(ReadError::TimedOut) => return Err(text(408, "request timeout\n")),
        Err(_) => return Err(text(400, "unreadable body\n")),
    };
    *body_read = true;
    String::from_utf8(body).map_err(|_| text(400, "body is not UTF-8\n"))
}

fn route(head: &RequestHead, conn: &mut HttpConn, body_read: &mut bool, state: &State) -> Reply {
    let (token, hub) = (&*state.token, &state.hub);
    let path = head.path();
    let response = match (head.method.as_str(), path) {
        ("OPTIONS", _) => cors(Response::new(204)),
        ("GET", "/" | "/index.html") => {
            if !query_token_ok(head, token) {
                unauthorized()
            } else {
                Response::new(200)
                    .header("Content-Type", "text/html; charset=utf-8")
                    .header("Cache-Control", "no-store")
                    .body(VIEWER_PAGE)
            }
        }
        ("GET", "/ws") => {
            if !query_token_ok(head, token) {
                unauthorized()
            } else if !*body_read {
                text(400, "a WebSocket upgrade has no body\n")
            } else {
                match websocket_accept(head) {
                    None => text(400, "expected a WebSocket upgrade\n"),
                    Some(accept) => {
                        let n = state.websockets.fetch_add(1, Ordering::SeqCst);
                        if n >= state.limits.max_websockets {
                            state.websockets.fetch_sub(1, Ordering::SeqCst);
                            text(503, "too many signaling connections\n")
                        } else {
                            return Reply::WebSocket(accept);
                        }
                    }
                }
            }
        }
        ("POST", "/whep") => {
            if !bearer_ok(head, token) {
                unauthorized()
            } else {
                match read_body(head, conn, body_read, &state.limits) {
                    Err(r) => r,
                    Ok(offer) => match hub.accept_offer(&offer, "whep") {
                        Ok((id, answer)) => cors(
                            Response::new(201)
                                .header("Content-Type", "application/sdp")
                                .header("Location", format!("/whep/{id}"))
                                .body(answer),
                        ),
                        Err(e) => hub_error_response(&e),
                    },
                }
            }
        }
        (method @ ("DELETE" | "PATCH"), p) if p.starts_with("/whep/") => {
            let id = p["/whep/".len()..].parse::<PeerId>().ok();
            if !bearer_ok(head, token) {
                unauthorized()
            } else if let Some(id) = id {
                if method == "DELETE" {
                    // Removing an unknown or already-gone peer is not an error for the client.
                    hub.remove(id);
                    text(200, "")
                } else {
                    match read_body(head, conn, body_read, &state.limits) {
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
    Reply::Respond(response)
}

/// Apply the candidates of a trickle-ICE SDP fragment (RFC 8840).
fn trickle(hub: &Hub, id: PeerId, frag: &str) -> Response {
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
fn websocket_accept(head: &RequestHead) -> Option<String> {
    let upgrade = head.header("Upgrade")?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let key = head.header("Sec-WebSocket-Key")?;
    Some(tungstenite::handshake::derive_accept_key(
        key.trim().as_bytes(),
    ))
}

/// One browser's signaling session: blocking reads, a reply per message. A silent channel is
/// pinged; one that answers nothing for `websocket_idle_timeout` is closed.
fn run_signaling(stream: TcpStream, early: Vec<u8>, state: &State) {
    let hub = &state.hub;
    let idle = state.limits.websocket_idle_timeout;
    let _ = stream.set_read_timeout(Some((idle / 3).max(Duration::from_millis(10))));
    // Messages up to 1 MiB are read and answered (over 64 KiB: a too_large error); beyond that
    // the connection is dropped rather than buffered.
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(1 << 20);
    config.max_frame_size = Some(1 << 20);
    let mut ws = WebSocket::from_partially_read(stream, early, Role::Server, Some(config));
    let mut joined = false;
    let mut peer: Option<PeerId> = None;
    let mut heard = Instant::now();
    loop {
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let msg = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => break,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if heard.elapsed() >= idle {
                    tracing::debug!("signaling_idle_closed");
                    break;
                }
                if ws.send(Message::Ping(Vec::new().into())).is_err() {
                    break;
                }
                continue;
            }
            Err(_) => break,
            Ok(Message::Binary(_)) => {
                heard = Instant::now();
                let reply = ServerMessage::error("bad_message", "expected a JSON text message");
                if ws.send(Message::text(reply.to_json())).is_err() {
                    break;
                }
                continue;
            }
            Ok(_) => {
                heard = Instant::now();
                continue;
            }
        };
        heard = Instant::now();
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

    fn head(raw: &[u8]) -> RequestHead {
        http::parse_head(raw, &ServerLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn tokens_are_checked_exactly() {
        assert!(query_token_ok(
            &head(b"GET /ws?token=s3cret HTTP/1.1\r\n\r\n"),
            "s3cret"
        ));
        assert!(!query_token_ok(
            &head(b"GET /ws?token=s3cre HTTP/1.1\r\n\r\n"),
            "s3cret"
        ));
        assert!(!query_token_ok(
            &head(b"GET /ws?token= HTTP/1.1\r\n\r\n"),
            "s3cret"
        ));
        assert!(!query_token_ok(
            &head(b"GET /ws?xtoken=s3cret HTTP/1.1\r\n\r\n"),
            "s3cret"
        ));
        assert!(bearer_ok(
            &head(b"POST /whep HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n"),
            "s3cret"
        ));
        assert!(!bearer_ok(
            &head(b"POST /whep HTTP/1.1\r\nAuthorization: Basic s3cret\r\n\r\n"),
            "s3cret"
        ));
    }
}
