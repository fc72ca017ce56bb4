//! RTMP(S) live output: FLV muxed by libavformat over FFmpeg's RTMP client.
//!
//! Connecting is done in three visible steps so failures are classified: DNS lookup
//! (`dns_failure`), a TCP connect probe (`connection_refused` / `unreachable`), then the RTMP
//! handshake, connect and publish (`publish_rejected`, e.g. a wrong app or stream key). Every
//! blocking network operation runs under a deadline (the I/O interrupt callback), so a server
//! that stops reading is reported as `network_stall` instead of hanging the sender.
//!
//! The first connection is made when the output is opened and a failure is returned at once.
//! Once live, a transient failure starts reconnection with exponential backoff (a publish
//! rejection is retried then as well: servers often still hold the dead session for a while); packets that
//! arrive while down are skipped (counted), and a new session starts on a keyframe with fresh
//! FLV headers. The sender never sends a packet before its DTS on the pipeline clock.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffmpeg_next::{self as ff, Dictionary, Rational};

use super::mux::{IoDeadline, Muxer};
use super::{LinkReport, Output, OutputSummary, Written};
use crate::encode::{EncodedPacket, MediaInfo};
use crate::error::{ErrorClass, ErrorReport, OutputError};
use crate::pipeline::clock::MediaClock;

/// Stream buffer and reconnection settings.
#[derive(Debug, Clone)]
pub struct RtmpOptions {
    /// Stream buffer bound, in packets.
    pub buffer_packets: usize,
    /// Stream buffer bound, in buffered media duration.
    pub buffer: Duration,
    /// First reconnection delay; each further attempt waits `multiplier` times longer, up to
    /// `reconnect_max_delay`.
    pub reconnect_delay: Duration,
    pub reconnect_multiplier: f64,
    pub reconnect_max_delay: Duration,
    /// Attempts before giving up.
    pub reconnect_tries: u32,
    pub connect_timeout: Duration,
    /// A write that makes no progress for this long is a stall.
    pub stall_timeout: Duration,
    /// rtmps://: verify the server certificate (system trust store, or `tls_ca_file`).
    /// FFmpeg does not verify by default; castline does, since the stream key crosses this link.
    pub tls_verify: bool,
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for RtmpOptions {
    fn default() -> Self {
        Self {
            buffer_packets: 100,
            buffer: Duration::from_millis(2000),
            reconnect_delay: Duration::from_secs(2),
            reconnect_multiplier: 1.5,
            reconnect_max_delay: Duration::from_secs(30),
            reconnect_tries: 20,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            tls_verify: true,
            tls_ca_file: None,
        }
    }
}

impl RtmpOptions {
    /// Wait before reconnection attempt `attempt` (0-based): the first delay, times the
    /// multiplier per earlier attempt, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let secs =
            self.reconnect_delay.as_secs_f64() * self.reconnect_multiplier.powi(attempt as i32);
        Duration::from_secs_f64(secs.min(self.reconnect_max_delay.as_secs_f64()))
    }
}

/// A parsed rtmp:// or rtmps:// URL.
#[derive(Debug, Clone)]
pub struct RtmpTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The URL with the stream key (and any credentials or query) hidden.
    pub redacted: String,
}

impl RtmpTarget {
    pub fn parse(url: &str) -> Result<Self, OutputError> {
        let redacted = redact_url(url);
        let invalid = |reason: &str| OutputError::InvalidUrl {
            url: redacted.clone(),
            reason: reason.into(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "rtmp" => 1935,
            "rtmps" => 443,
            _ => return Err(invalid("expected rtmp:// or rtmps://")),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hostport = authority
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or(authority);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed '['"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| invalid("invalid port"))?,
            None => default_port,
        };
        let path = path.split('?').next().unwrap_or("");
        let (app, key) = path.split_once('/').unwrap_or((path, ""));
        if app.is_empty() {
            return Err(invalid("missing application name (rtmp://HOST/APP/KEY)"));
        }
        if key.is_empty() {
            return Err(invalid("missing stream key (rtmp://HOST/APP/KEY)"));
        }
        Ok(Self {
            tls: default_port == 443,
            host,
            port,
            app: app.into(),
            redacted,
        })
    }
}

/// Hide what may be secret in a URL: credentials, everything after the first path segment
/// (the stream key) and the query. Paths that are not URLs are returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let path = path.split('?').next().unwrap_or("");
    let mut out = format!("{scheme}://{host}");
    if let Some((first, more)) = path.split_once('/') {
        out.push('/');
        out.push_str(first);
        if !more.is_empty() {
            out.push_str("/<redacted>");
        }
    } else if !path.is_empty() {
        out.push('/');
        out.push_str(path);
    }
    if rest.contains('?') || authority.contains('@') {
        out.push_str(" (credentials redacted)");
    }
    out
}

/// How long a session must carry data before a failure counts as a lost link (see `confirmed`).
const CONFIRM_AFTER: Duration = Duration::from_secs(1);

struct Down {
    attempt: u32,
    next_try: Instant,
    since: Instant,
}

pub struct RtmpOutput {
    url: String,
    target: RtmpTarget,
    info: MediaInfo,
    clock: MediaClock,
    opts: RtmpOptions,
    deadline: Arc<IoDeadline>,
    session: Option<Muxer>,
    down: Option<Down>,
    waiting_for_keyframe: bool,
    /// Whether this session already asked the encoder for its starting keyframe.
    keyframe_asked: bool,
    session_opened: Instant,
    /// Set once the first session has carried data for `CONFIRM_AFTER`: FFmpeg's client returns
    /// from connecting after *sending* publish, so a server's refusal can arrive on the first
    /// writes. A first session that dies before this is a rejected publish, not a lost link.
    confirmed: bool,
    reconnects: u32,
    last_error: Option<OutputError>,
    packets: u64,
    bytes: u64,
}

impl RtmpOutput {
    /// Connect and publish; an error here is the first connection failing (reported at once).
    pub fn connect(
        url: &str,
        info: &MediaInfo,
        clock: MediaClock,
        opts: RtmpOptions,
    ) -> Result<Self, OutputError> {
        let target = RtmpTarget::parse(url)?;
        let mut out = Self {
            url: url.to_string(),
            target,
            info: info.clone(),
            clock,
            opts,
            deadline: Arc::new(IoDeadline::default()),
            session: None,
            down: None,
            waiting_for_keyframe: true,
            keyframe_asked: false,
            session_opened: Instant::now(),
            confirmed: false,
            reconnects: 0,
            last_error: None,
            packets: 0,
            bytes: 0,
        };
        out.session = Some(out.open_session()?);
        out.session_opened = Instant::now();
        tracing::info!(url = %out.target.redacted, "output_opened");
        Ok(out)
    }

    fn open_session(&self) -> Result<Muxer, OutputError> {
        let t = &self.target;
        let url = t.redacted.clone();
        let addrs: Vec<_> = (t.host.as_str(), t.port)
            .to_socket_addrs()
            .map_err(|_| OutputError::Dns {
                url: url.clone(),
                host: t.host.clone(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(OutputError::Dns {
                url,
                host: t.host.clone(),
            });
        }
        let mut last = None;
        let reachable =
            addrs.iter().any(
                |a| match TcpStream::connect_timeout(a, self.opts.connect_timeout) {
                    Ok(_) => true,
                    Err(e) => {
                        last = Some(e);
                        false
                    }
                },
            );
        if !reachable {
            return Err(match last {
                Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    OutputError::Refused { url }
                }
                Some(e) if e.kind() == std::io::ErrorKind::TimedOut => OutputError::Unreachable {
                    url,
                    reason: format!("no answer within {} s", self.opts.connect_timeout.as_secs()),
                },
                Some(e) => OutputError::Unreachable {
                    url,
                    reason: e.to_string(),
                },
                None => OutputError::Unreachable {
                    url,
                    reason: "no address".into(),
                },
            });
        }
        // Keep the kernel's send buffer to ~250 ms of media: an auto-tuned one grows to megabytes
        // and hides congestion for many seconds, so the stream buffer's drop policy (and the
        // latency bound it gives) would never engage.
        let mut io_opts = Dictionary::new();
        let bitrate = self.info.video.bitrate + self.info.audio.as_ref().map_or(0, |a| a.bitrate);
        let sndbuf = (bitrate / 8 / 4).clamp(32 * 1024, 4 * 1024 * 1024);
        io_opts.set("send_buffer_size", &sndbuf.to_string());
        io_opts.set("tcp_nodelay", "1");
        if t.tls {
            io_opts.set("tls_verify", if self.opts.tls_verify { "1" } else { "0" });
            if let Some(ca) = &self.opts.tls_ca_file {
                io_opts.set("ca_file", &ca.to_string_lossy());
            }
        }
        let mut mux_opts = Dictionary::new();
        // Live: there is no file to seek back into for duration/size.
        mux_opts.set("flvflags", "no_duration_filesize");
        self.deadline.arm(self.opts.connect_timeout * 2);
        Muxer::open(
            &self.url,
            "flv",
            io_opts,
            mux_opts,
            &self.info,
            Rational(1, 1000),
            Some(self.deadline.clone()),
        )
        .map_err(|e| match e {
            ff::Error::Exit => OutputError::Stalled {
                url,
                secs: (self.opts.connect_timeout * 2).as_secs(),
            },
            // FFmpeg's RTMP client reports server refusals without detail; never echo the URL.
            e => OutputError::Rejected {
                url,
                reason: if t.tls {
                    format!("TLS handshake (certificate not trusted?) or publish failed: {e}")
                } else {
                    format!("{e} (check the app name and stream key)")
                },
            },
        })
    }

    fn classify_write_error(&self, e: ff::Error) -> OutputError {
        let url = self.target.redacted.clone();
        match e {
            ff::Error::Exit => OutputError::Stalled {
                url,
                secs: self.opts.stall_timeout.as_secs(),
            },
            e => OutputError::Lost {
                url,
                reason: e.to_string(),
            },
        }
    }

    fn go_down(&mut self, err: OutputError) {
        let delay = self.opts.backoff(0);
        tracing::warn!(
            output = %self.target.redacted,
            kind = err.kind(),
            reason = %err,
            attempt = 1,
            delay_s = delay.as_secs_f64(),
            "reconnecting"
        );
        self.session = None;
        self.last_error = Some(err);
        let now = Instant::now();
        self.down = Some(Down {
            attempt: 0,
            next_try: now + delay,
            since: now,
        });
    }

    /// While down: try again when the backoff says so. Ok(true) once reconnected.
    fn try_reconnect(&mut self) -> Result<bool, OutputError> {
        let Some(down) = &self.down else {
            return Ok(true);
        };
        if Instant::now() < down.next_try {
            return Ok(false);
        }
        let (attempt, since) = (down.attempt + 1, down.since);
        match self.open_session() {
            Ok(m) => {
                self.session = Some(m);
                self.session_opened = Instant::now();
                self.down = None;
                self.reconnects += 1;
                self.waiting_for_keyframe = true;
                self.keyframe_asked = false;
                tracing::info!(
                    output = %self.target.redacted,
                    attempt,
                    downtime_s = since.elapsed().as_secs_f64(),
                    "reconnected"
                );
                Ok(true)
            }
            // A rejection while reconnecting is retried too: the key was accepted before, and the
            // server may still hold the previous (dead) session as the active publisher.
            Err(e)
                if (e.class() == ErrorClass::Transient
                    || matches!(e, OutputError::Rejected { .. }))
                    && attempt < self.opts.reconnect_tries =>
            {
                let delay = self.opts.backoff(attempt);
                tracing::warn!(
                    output = %self.target.redacted,
                    kind = e.kind(),
                    reason = %e,
                    attempt = attempt + 1,
                    delay_s = delay.as_secs_f64(),
                    "reconnecting"
                );
                self.last_error = Some(e);
                self.down = Some(Down {
                    attempt,
                    next_try: Instant::now() + delay,
                    since,
                });
                Ok(false)
            }
            Err(e) => {
                let gave_up = OutputError::GaveUp {
                    url: self.target.redacted.clone(),
                    attempts: attempt,
                    last: e.to_string(),
                };
                tracing::error!(output = %self.target.redacted, kind = e.kind(), reason = %e, attempts = attempt, "gave_up");
                Err(gave_up)
            }
        }
    }
}

impl Output for RtmpOutput {
    fn name(&self) -> String {
        self.target.redacted.clone()
    }

    fn write(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError> {
        if !self.try_reconnect()? {
            return Ok(Written::Skipped {
                want_keyframe: false,
            });
        }
        if self.waiting_for_keyframe {
            if pkt.is_audio() {
                // The session starts with the video keyframe; audio joins from there.
                return Ok(Written::Skipped {
                    want_keyframe: false,
                });
            }
            if !pkt.keyframe {
                // A fresh session must start on a keyframe: ask for one, once.
                let want_keyframe = !std::mem::replace(&mut self.keyframe_asked, true);
                return Ok(Written::Skipped { want_keyframe });
            }
            self.waiting_for_keyframe = false;
        }
        // Pace by DTS: never ahead of the capture clock (bursts after a reconnect are late
        // packets and go out at once).
        let due = self.clock.instant_at(pkt.dts_us);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(Written::Skipped {
                want_keyframe: false,
            });
        };
        self.deadline.arm(self.opts.stall_timeout);
        match session.write(pkt) {
            Ok(()) => {
                self.packets += u64::from(!pkt.is_audio());
                self.bytes += pkt.data.len() as u64;
                if !self.confirmed && self.session_opened.elapsed() >= CONFIRM_AFTER {
                    self.confirmed = true;
                }
                Ok(Written::Sent)
            }
            Err(e) if !self.confirmed => {
                // The server took the connection but ended the first session at once: a refused
                // publish (wrong app or key, or already publishing). Reported, never retried.
                self.session = None;
                Err(OutputError::Rejected {
                    url: self.target.redacted.clone(),
                    reason: format!(
                        "the server closed the session right after publish ({e}); check the app name and stream key"
                    ),
                })
            }
            Err(e) => {
                let err = self.classify_write_error(e);
                if err.class() == ErrorClass::Fatal || self.opts.reconnect_tries == 0 {
                    return Err(err);
                }
                // Bound the teardown of the dead session too.
                self.deadline.arm(Duration::from_secs(1));
                self.go_down(err);
                Ok(Written::Skipped {
                    want_keyframe: false,
                })
            }
        }
    }

    fn finish(mut self: Box<Self>, _clean: bool) -> Result<OutputSummary, OutputError> {
        if let Some(mut s) = self.session.take() {
            self.deadline.arm(Duration::from_secs(2));
            let _ = s.trailer();
        }
        tracing::info!(output = %self.target.redacted, packets = self.packets, "output_finished");
        Ok(OutputSummary {
            name: self.target.redacted.clone(),
            bytes: self.bytes,
            packets: self.packets,
            warning: (self.reconnects > 0)
                .then(|| format!("reconnected {} time(s)", self.reconnects)),
        })
    }

    fn started(&self) -> bool {
        self.confirmed
    }

    fn link(&self) -> Option<LinkReport> {
        Some(LinkReport {
            reconnecting: self.down.is_some(),
            reconnects: self.reconnects,
            last_error: self.last_error.as_ref().map(ErrorReport::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_are_redacted() {
        assert_eq!(
            redact_url("rtmp://live.example.com/app/sk_live_123"),
            "rtmp://live.example.com/app/<redacted>"
        );
        assert_eq!(
            redact_url("rtmps://u:pw@h:443/live/key?token=x"),
            "rtmps://h:443/live/<redacted> (credentials redacted)"
        );
        assert_eq!(redact_url("out.mp4"), "out.mp4");
        assert!(
            !format!("{:?}", RtmpTarget::parse("rtmp://h/app/secret").unwrap()).contains("secret")
        );
    }

    #[test]
    fn urls_are_validated() {
        let t = RtmpTarget::parse("rtmp://127.0.0.1:1936/live/k").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.app.as_str()),
            ("127.0.0.1", 1936, "live")
        );
        assert_eq!(RtmpTarget::parse("rtmps://h/a/k").unwrap().port, 443);
        assert_eq!(RtmpTarget::parse("rtmp://[::1]/a/k").unwrap().host, "::1");
        for bad in [
            "rtmp:///a/k",
            "rtmp://h/app",
            "rtmp://h//k",
            "rtmp://h:port/a/k",
        ] {
            let e = RtmpTarget::parse(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid_url", "{bad}");
        }
    }
}
