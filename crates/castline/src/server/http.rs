//! HTTP/1.1 as much as `serve` needs: request heads parsed by `httparse` against the
//! [`ServerLimits`], bodies by `Content-Length` only, keep-alive, and deadlines on every read so
//! a slow client holds its thread for a bounded time.
//!
//! [`parse_head`] is sans-IO (bytes in, a head or a status to answer out); [`HttpConn`] runs it
//! on a socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::limits::ServerLimits;

/// Headers read per request; more gets 431.
const MAX_HEADERS: usize = 48;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    headers: Vec<(String, String)>,
    /// Whether the client lets the connection stay open after the response.
    pub keep_alive: bool,
    /// `Content-Length` (0 without one).
    pub body_len: usize,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `key`, as sent.
    pub fn query(&self, key: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A request refused before it reached a handler: the status to answer, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request")]
    Malformed,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("a Content-Length is required (no chunked bodies)")]
    LengthRequired,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            Self::Malformed => 400,
            Self::HeadTooLarge => 431,
            Self::BodyTooLarge => 413,
            Self::LengthRequired => 411,
        }
    }
}

/// Parse a request head from the start of `buf`: `Ok(None)` while it is incomplete, else the
/// head and the bytes it took. Never panics, whatever the input.
pub fn parse_head(
    buf: &[u8],
    limits: &ServerLimits,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_header_bytes {
                Err(HeadError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if consumed > limits.max_header_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| HeadError::Malformed)?;
        headers.push((h.name.to_string(), value.trim().to_string()));
    }
    let mut body_len: Option<usize> = None;
    let mut keep_alive = version == 1;
    let mut expect_continue = false;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| HeadError::Malformed)?;
            if body_len.is_some_and(|m| m != n) {
                return Err(HeadError::Malformed);
            }
            body_len = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::LengthRequired);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(HeadError::Malformed);
            }
            expect_continue = true;
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > limits.max_body_bytes {
        return Err(HeadError::BodyTooLarge);
    }
    Ok(Some((
        RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            keep_alive,
            body_len,
            expect_continue,
        },
        consumed,
    )))
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The response as bytes on the wire. Values come from the server, never from the
    /// client, but CR and LF are dropped anyway so no header can be split.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        for (name, value) in &self.headers {
            let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if self.status != 101 {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
            let connection = if keep_alive { "keep-alive" } else { "close" };
            out.extend_from_slice(format!("Connection: {connection}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection (or never sent a byte before the deadline).
    Closed,
    /// The deadline passed with part of a request read.
    TimedOut,
    /// The request is refused: answer its status, then close.
    Refused(HeadError),
    Io(io::Error),
}

/// One client connection: a socket and what was read past the last request.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn new(stream: TcpStream, write_timeout: Duration) -> Self {
        let _ = stream.set_write_timeout(Some(write_timeout));
        let _ = stream.set_nodelay(true);
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Read bytes until `deadline`; false when the client closed.
    fn fill(&mut self, deadline: Instant) -> Result<bool, ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut);
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(ReadError::Io)?;
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// The next request head, complete before `deadline`.
    pub fn read_head(
        &mut self,
        deadline: Instant,
        limits: &ServerLimits,
    ) -> Result<RequestHead, ReadError> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf, limits) {
                    Ok(Some((head, n))) => {
                        self.buf.drain(..n);
                        return Ok(head);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ReadError::Refused(e)),
                }
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return Err(ReadError::Closed),
                Err(ReadError::TimedOut) if self.buf.is_empty() => return Err(ReadError::Closed),
                Err(e) => return Err(e),
            }
        }
    }

    /// A body of `len` bytes, complete before `deadline`.
    pub fn read_body(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < len {
            if !self.fill(deadline)? {
                return Err(ReadError::Closed);
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    pub fn respond(&mut self, response: &Response, keep_alive: bool) -> io::Result<()> {
        self.stream.write_all(&response.to_bytes(keep_alive))
    }

    /// Tell a client that sent `Expect: 100-continue` to go on.
    pub fn send_continue(&mut self) -> io::Result<()> {
        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    }

    /// The socket and the bytes read past the last request (a WebSocket's first frames).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerLimits {
        ServerLimits::default()
    }

    #[test]
    fn parses_a_whep_post_and_keeps_the_rest() {
        let raw = b"POST /whep?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nv=0";
        let (head, n) = parse_head(raw, &limits()).unwrap().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path(), "/whep");
        assert_eq!(head.query("x"), Some("1"));
        assert_eq!(head.header("authorization"), Some("Bearer t"));
        assert_eq!(head.body_len, 3);
        assert!(head.keep_alive && head.expect_continue);
        assert_eq!(&raw[n..], b"v=0");
    }

    #[test]
    fn partial_heads_wait_until_they_pass_the_limit() {
        let l = limits();
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n", &l), Ok(None));
        let mut slow = b"GET / HTTP/1.1\r\nX-A: ".to_vec();
        slow.extend(vec![b'a'; l.max_header_bytes]);
        assert_eq!(parse_head(&slow, &l), Err(HeadError::HeadTooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(parse_head(&many, &l), Err(HeadError::HeadTooLarge));
    }

    #[test]
    fn refuses_what_it_does_not_handle() {
        let l = limits();
        let refused = |raw: &[u8]| parse_head(raw, &l).err();
        assert_eq!(
            refused(b"\x16\x03\x01garbage\r\n\r\n"),
            Some(HeadError::Malformed)
        );
        assert_eq!(
            refused(b"POST /whep HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(HeadError::LengthRequired)
        );
        assert_eq!(
            refused(b"POST /whep HTTP/1.1\r\nContent-Length: 70000\r\n\r\n"),
            Some(HeadError::BodyTooLarge)
        );
        assert_eq!(
            refused(b"POST /whep HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(HeadError::Malformed)
        );
        assert_eq!(
            refused(b"POST /whep HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Some(HeadError::Malformed)
        );
    }

    #[test]
    fn connection_header_decides_keep_alive() {
        let l = limits();
        let ka = |raw: &[u8]| parse_head(raw, &l).unwrap().unwrap().0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(ka(
            b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n"
        ));
    }

    #[test]
    fn responses_carry_length_and_connection_and_no_injected_lines() {
        let r = Response::new(201)
            .header("Location", "/whep/1\r\nX-Evil: 1")
            .body("ok");
        let text = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
        assert!(text.contains("Location: /whep/1X-Evil: 1\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\nConnection: close\r\n\r\nok"));
    }
}
