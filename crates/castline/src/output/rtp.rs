//! Plain RTP publishing: H.264 (RFC 6184, packetization-mode 1) and Opus over one UDP 5-tuple
//! with RTCP multiplexed (rtcp-mux), as a mediasoup comedia PlainTransport expects. RTP headers
//! and RTCP through the GStreamer project's `rtp-types` / `rtcp-types`; the H.264 payloader
//! (single NAL unit, STAP-A for parameter sets, FU-A) is here. RTCP arriving on the socket is
//! read before each packet is sent: receiver reports feed the stats, PLI/FIR request a keyframe
//! (rate-limited), NACKs are answered from a bounded send history; sender reports go out every
//! second with the NTP ↔ RTP mapping of the capture clock, and a BYE on exit. UDP has no
//! connection to lose: when ICMP says the receiver is gone, media pauses and sender reports probe
//! the target on the reconnect backoff until one draws no error (then video resumes at a
//! keyframe) or the tries run out.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtcp_types::{Bye, Compound, Fir, Nack, Packet, Pli, RtcpPacketWriter, RtcpPacketWriterExt};

use super::rtmp::RtmpOptions;
use super::{LinkReport, Output, OutputSummary, Written};
use crate::encode::{EncodedPacket, MediaInfo, MediaKind};
use crate::error::{ErrorReport, OutputError};
use crate::pipeline::clock::MediaClock;
use crate::webrtc::{nal_units, with_parameter_sets};

/// Errors of a connected UDP socket that mean nobody receives at the target (for now).
fn receiver_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable
    )
}

/// Where to send and how to label the streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpTarget {
    pub addr: SocketAddr,
    pub video_pt: u8,
    pub video_ssrc: u32,
    pub audio: Option<(u8, u32)>,
    /// Largest datagram, RTP header included.
    pub mtu: usize,
}

/// Datagram size limits: below 256 the parameter sets may not fit one packet; above 9000 no
/// link carries it unfragmented.
pub const MTU_RANGE: std::ops::RangeInclusive<usize> = 256..=9000;
pub const DEFAULT_MTU: usize = 1200;

fn mtu(m: Option<u64>, what: &str) -> Result<usize, OutputError> {
    m.and_then(|m| usize::try_from(m).ok())
        .filter(|m| MTU_RANGE.contains(m))
        .ok_or_else(|| {
            invalid(
                what,
                format!("mtu must be {}–{}", MTU_RANGE.start(), MTU_RANGE.end()),
            )
        })
}

fn invalid(url: &str, reason: impl Into<String>) -> OutputError {
    OutputError::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

fn pt(v: &str, url: &str, name: &str) -> Result<u8, OutputError> {
    match v.parse::<u8>() {
        Ok(p) if p < 128 => Ok(p),
        _ => Err(invalid(url, format!("{name} must be 0–127"))),
    }
}

fn ssrc(v: &str, url: &str, name: &str) -> Result<u32, OutputError> {
    v.parse::<u32>()
        .map_err(|_| invalid(url, format!("{name} must be a 32-bit unsigned number")))
}

impl RtpTarget {
    /// `rtp://IP:PORT?video_pt=102&video_ssrc=1111[&audio_pt=100&audio_ssrc=2222][&mtu=1200]`
    pub fn parse_url(url: &str) -> Result<Self, OutputError> {
        let rest = url
            .strip_prefix("rtp://")
            .ok_or_else(|| invalid(url, "expected rtp://IP:PORT?video_pt=…&video_ssrc=…"))?;
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let addr: SocketAddr = hostport
            .trim_end_matches('/')
            .parse()
            .map_err(|_| invalid(url, "expected an IP:PORT (no host names)"))?;
        if addr.port() == 0 {
            return Err(invalid(url, "port 0"));
        }
        let mut video_pt = None;
        let mut video_ssrc = None;
        let mut audio_pt = None;
        let mut audio_ssrc = None;
        let mut size = DEFAULT_MTU;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| invalid(url, format!("'{kv}' is not key=value")))?;
            match k {
                "video_pt" => video_pt = Some(pt(v, url, k)?),
                "video_ssrc" => video_ssrc = Some(ssrc(v, url, k)?),
                "audio_pt" => audio_pt = Some(pt(v, url, k)?),
                "audio_ssrc" => audio_ssrc = Some(ssrc(v, url, k)?),
                "mtu" => size = mtu(v.parse().ok(), url)?,
                _ => return Err(invalid(url, format!("unknown parameter '{k}'"))),
            }
        }
        let target = Self::assemble(url, addr, video_pt, video_ssrc, audio_pt, audio_ssrc)?;
        Ok(Self {
            mtu: size,
            ..target
        })
    }

    /// The JSON a server's "create native sender session" reply has:
    /// `{"rtp":{"ip":…,"port":…[,"mtu":…]},"video":{"payload_type":…,"ssrc":…},"audio":{…}}`.
    pub fn parse_json(text: &str) -> Result<Self, OutputError> {
        let what = "session JSON";
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(what, format!("not JSON: {e}")))?;
        let ip: IpAddr = v["rtp"]["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(what, "rtp.ip must be an IP address string"))?;
        let port = v["rtp"]["port"]
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| invalid(what, "rtp.port must be 1–65535"))? as u16;
        let num =
            |path: [&str; 2], max: u64| -> Result<Option<u64>, OutputError> {
                match &v[path[0]][path[1]] {
                    serde_json::Value::Null => Ok(None),
                    x => x.as_u64().filter(|n| *n <= max).map(Some).ok_or_else(|| {
                        invalid(what, format!("{}.{} out of range", path[0], path[1]))
                    }),
                }
            };
        let size = match &v["rtp"]["mtu"] {
            serde_json::Value::Null => DEFAULT_MTU,
            x => mtu(x.as_u64(), what)?,
        };
        let target = Self::assemble(
            what,
            SocketAddr::new(ip, port),
            num(["video", "payload_type"], 127)?.map(|n| n as u8),
            num(["video", "ssrc"], u32::MAX as u64)?.map(|n| n as u32),
            num(["audio", "payload_type"], 127)?.map(|n| n as u8),
            num(["audio", "ssrc"], u32::MAX as u64)?.map(|n| n as u32),
        )?;
        Ok(Self {
            mtu: size,
            ..target
        })
    }

    /// The same target with another datagram size limit (`--mtu`).
    pub fn with_mtu(self, value: usize) -> Result<Self, OutputError> {
        let size = mtu(Some(value as u64), &format!("rtp://{}", self.addr))?;
        Ok(Self { mtu: size, ..self })
    }

    fn assemble(
        what: &str,
        addr: SocketAddr,
        video_pt: Option<u8>,
        video_ssrc: Option<u32>,
        audio_pt: Option<u8>,
        audio_ssrc: Option<u32>,
    ) -> Result<Self, OutputError> {
        let (Some(video_pt), Some(video_ssrc)) = (video_pt, video_ssrc) else {
            return Err(invalid(what, "video payload type and SSRC are required"));
        };
        let audio = match (audio_pt, audio_ssrc) {
            (Some(p), Some(s)) => Some((p, s)),
            (None, None) => None,
            _ => return Err(invalid(what, "audio needs both a payload type and an SSRC")),
        };
        if audio.is_some_and(|(p, s)| p == video_pt || s == video_ssrc) {
            return Err(invalid(
                what,
                "audio and video need distinct payload types and SSRCs",
            ));
        }
        Ok(Self {
            addr,
            video_pt,
            video_ssrc,
            audio,
            mtu: DEFAULT_MTU,
        })
    }
}

/// RTP settings of the plain-RTP output (the datagram size is the target's).
#[derive(Debug, Clone)]
pub struct RtpOptions {
    /// PLI/FIR are answered with at most one keyframe per interval.
    pub keyframe_interval: Duration,
    /// Video packets kept for NACK retransmission.
    pub history: usize,
    /// Backoff while the receiver is unreachable (the `--reconnect-*` settings RTMP and WHIP
    /// use too).
    pub reconnect: RtmpOptions,
}

impl Default for RtpOptions {
    fn default() -> Self {
        Self {
            keyframe_interval: Duration::from_millis(500),
            history: 1024,
            reconnect: RtmpOptions::default(),
        }
    }
}

/// One outgoing RTP stream (video or audio).
struct Stream {
    pt: u8,
    ssrc: u32,
    clock_rate: u64,
    seq: u16,
    ts_offset: u32,
    packets: u32,
    octets: u32,
}

impl Stream {
    fn new(pt: u8, ssrc: u32, clock_rate: u64) -> Self {
        let r = crate::webrtc::random_token();
        let seed = u64::from_str_radix(&r[..16], 16).unwrap_or(0);
        Self {
            pt,
            ssrc,
            clock_rate,
            seq: seed as u16,
            ts_offset: (seed >> 16) as u32,
            packets: 0,
            octets: 0,
        }
    }

    fn rtp_ts(&self, t_us: i64) -> u32 {
        ((t_us.max(0) as u64 * self.clock_rate / 1_000_000) as u32).wrapping_add(self.ts_offset)
    }
}

/// What RTCP told us, for stats.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RtcpReport {
    pub plis: u64,
    pub firs: u64,
    pub nacks: u64,
    pub retransmitted: u64,
    pub keyframes_requested: u64,
    /// Fraction lost in the last receiver report for video (0..1).
    pub loss: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// RTCP datagrams that did not parse (ignored).
    pub malformed: u64,
    /// Receiver report blocks about our video (each one is a loss sample for rate control).
    pub receiver_reports: u64,
}

pub struct RtpOutput {
    target: RtpTarget,
    socket: UdpSocket,
    clock: MediaClock,
    keyframe: Arc<AtomicBool>,
    opts: RtpOptions,
    video: Stream,
    audio: Option<Stream>,
    history: SendHistory,
    extradata: Vec<u8>,
    last_sr: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    report: RtcpReport,
    /// A copy of `report` for the stats sampler, refreshed after each RTCP datagram.
    shared: Arc<std::sync::Mutex<RtcpReport>>,
    bytes: u64,
    packets: u64,
    down: Option<Down>,
    reconnects: u32,
    last_error: Option<OutputError>,
    /// After the receiver came back, video resumes at a keyframe.
    waiting_for_keyframe: bool,
}

/// The receiver stopped listening (ICMP unreachable): media is paused, and a sender report
/// probes the target on the reconnect backoff until one draws no ICMP error.
struct Down {
    /// Failed probes so far.
    attempt: u32,
    since: Instant,
    next_probe: Instant,
    probed_at: Option<Instant>,
}

/// A probe that draws no ICMP error within this long means the receiver is back.
const PROBE_WAIT: Duration = Duration::from_millis(300);

/// NTP time (RFC 3550: seconds since 1900 in 32.32 fixed point) of a UNIX time in µs.
fn ntp_of_unix_us(us: u64) -> u64 {
    let secs = us / 1_000_000 + 2_208_988_800;
    let frac = ((us % 1_000_000) << 32) / 1_000_000;
    (secs << 32) | frac
}

impl RtpOutput {
    /// Bind a UDP socket connected to the target (RTP and RTCP share it: rtcp-mux) and check
    /// the target is there: an ICMP port unreachable for a first RTCP packet fails here.
    pub fn connect(
        target: RtpTarget,
        info: &MediaInfo,
        clock: MediaClock,
        keyframe: Arc<AtomicBool>,
        opts: RtpOptions,
    ) -> Result<Self, OutputError> {
        let url = format!("rtp://{}", target.addr);
        let bind: SocketAddr = if target.addr.is_ipv4() {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| OutputError::Unsupported(url.clone()))?
        } else {
            "[::]:0"
                .parse()
                .map_err(|_| OutputError::Unsupported(url.clone()))?
        };
        let socket = UdpSocket::bind(bind).map_err(|e| OutputError::Bind {
            addr: bind.to_string(),
            reason: e.to_string(),
        })?;
        socket
            .connect(target.addr)
            .map_err(|e| OutputError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let audio = match (target.audio, &info.audio) {
            (Some((pt, ssrc)), Some(_)) => Some(Stream::new(pt, ssrc, 48_000)),
            _ => None,
        };
        let mut me = Self {
            video: Stream::new(target.video_pt, target.video_ssrc, 90_000),
            audio,
            target,
            socket,
            clock,
            keyframe,
            history: SendHistory::new(opts.history),
            opts,
            extradata: info.video.extradata.clone(),
            last_sr: None,
            last_keyframe_request: None,
            report: RtcpReport::default(),
            shared: Arc::new(std::sync::Mutex::new(RtcpReport::default())),
            bytes: 0,
            packets: 0,
            down: None,
            reconnects: 0,
            last_error: None,
            waiting_for_keyframe: false,
        };
        me.send_sender_reports()?;
        // An ICMP error comes back within a round trip on a local network.
        me.socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| me.unreachable(e))?;
        let mut buf = [0u8; 1500];
        match me.socket.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(OutputError::Refused { url });
            }
            Ok(n) => me.handle_rtcp(&buf[..n]),
            Err(_) => {}
        }
        me.socket
            .set_nonblocking(true)
            .map_err(|e| me.unreachable(e))?;
        tracing::info!(target = %me.target.addr, "output_connected");
        Ok(me)
    }

    fn url(&self) -> String {
        format!("rtp://{}", self.target.addr)
    }

    fn unreachable(&self, e: std::io::Error) -> OutputError {
        OutputError::Unreachable {
            url: self.url(),
            reason: e.to_string(),
        }
    }

    fn receiver_gone(&self, e: std::io::Error) -> OutputError {
        let reason = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "the receiver's port is closed (ICMP port unreachable)".to_string()
            }
            _ => format!("the receiver is unreachable ({e})"),
        };
        OutputError::Lost {
            url: self.url(),
            reason,
        }
    }

    /// The receiver is gone (or a probe found it still gone): pause and schedule a probe, or
    /// give up after the configured tries.
    fn go_down(&mut self, err: OutputError) -> Result<(), OutputError> {
        let now = Instant::now();
        let (attempt, since) = match &self.down {
            None => (0, now),
            // An error from media sent before the pause, not an answer to a probe.
            Some(d) if d.probed_at.is_none() => return Ok(()),
            Some(d) => (d.attempt + 1, d.since),
        };
        let tries = self.opts.reconnect.reconnect_tries;
        if tries == 0 {
            return Err(err);
        }
        if attempt >= tries {
            tracing::error!(output = %self.url(), kind = err.kind(), reason = %err, attempts = attempt, "gave_up");
            return Err(OutputError::GaveUp {
                url: self.url(),
                attempts: attempt,
                last: err.to_string(),
            });
        }
        let delay = self.opts.reconnect.backoff(attempt);
        tracing::warn!(
            output = %self.url(),
            kind = err.kind(),
            reason = %err,
            attempt = attempt + 1,
            delay_s = delay.as_secs_f64(),
            "reconnecting"
        );
        self.last_error = Some(err);
        self.down = Some(Down {
            attempt,
            since,
            next_probe: now + delay,
            probed_at: None,
        });
        Ok(())
    }

    /// While down: send the next probe when due; Ok(true) once a probe drew no error.
    fn probe(&mut self) -> Result<bool, OutputError> {
        let Some(down) = &self.down else {
            return Ok(true);
        };
        let now = Instant::now();
        match down.probed_at {
            Some(t) if now.duration_since(t) >= PROBE_WAIT => {
                tracing::info!(
                    output = %self.url(),
                    attempt = down.attempt + 1,
                    downtime_s = down.since.elapsed().as_secs_f64(),
                    "reconnected"
                );
                self.down = None;
                self.reconnects += 1;
                self.waiting_for_keyframe = true;
                Ok(true)
            }
            None if now >= down.next_probe => {
                if let Some(d) = self.down.as_mut() {
                    d.probed_at = Some(now);
                }
                // Only an error after this probe counts: drop one left from earlier datagrams.
                let _ = self.socket.take_error();
                self.send_sender_reports()?;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Packetize and send one encoded packet (RTCP first); `Lost` when the receiver is gone.
    fn write_media(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError> {
        self.poll_rtcp()?;
        if !self.probe()? {
            return Ok(Written::Skipped {
                want_keyframe: false,
            });
        }
        if self.waiting_for_keyframe && pkt.media == MediaKind::Video {
            if !pkt.keyframe {
                return Ok(Written::Skipped {
                    want_keyframe: true,
                });
            }
            self.waiting_for_keyframe = false;
        }
        if self
            .last_sr
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.send_sender_reports()?;
        }
        let max_payload = self.target.mtu.saturating_sub(12).max(64);
        let (stream, payloads) = match pkt.media {
            MediaKind::Video => {
                let data = match pkt.keyframe {
                    true => with_parameter_sets(&pkt.data, &self.extradata),
                    false => None,
                };
                let au = data.as_deref().unwrap_or(&pkt.data);
                (&mut self.video, h264_payloads(au, max_payload))
            }
            MediaKind::Audio => match self.audio.as_mut() {
                Some(a) => (a, vec![pkt.data.to_vec()]),
                None => return Ok(Written::Sent),
            },
        };
        let ts = stream.rtp_ts(pkt.pts_us);
        let n = payloads.len();
        let mut datagrams = Vec::with_capacity(n);
        for (i, p) in payloads.iter().enumerate() {
            let marker = pkt.media == MediaKind::Video && i + 1 == n;
            let rtp = rtp_types::RtpPacketBuilder::<&[u8], &[u8]>::new()
                .payload_type(stream.pt)
                .ssrc(stream.ssrc)
                .sequence_number(stream.seq)
                .timestamp(ts)
                .marker_bit(marker)
                .payload(p.as_slice())
                .write_vec()
                .map_err(|e| OutputError::Write {
                    path: Default::default(),
                    reason: format!("RTP packet: {e:?}"),
                })?;
            stream.packets = stream.packets.wrapping_add(1);
            stream.octets = stream.octets.wrapping_add(p.len() as u32);
            datagrams.push((stream.seq, rtp));
            stream.seq = stream.seq.wrapping_add(1);
        }
        let video = pkt.media == MediaKind::Video;
        for (seq, d) in datagrams {
            self.send(&d)?;
            self.bytes += d.len() as u64;
            if video {
                self.history.push(seq, d);
            }
        }
        self.packets += 1;
        Ok(Written::Sent)
    }

    /// What RTCP reported so far, shared with the stats.
    pub fn report(&self) -> Arc<std::sync::Mutex<RtcpReport>> {
        self.shared.clone()
    }

    fn send(&mut self, datagram: &[u8]) -> Result<(), OutputError> {
        match self.socket.send(datagram) {
            Ok(_) => Ok(()),
            // The receiver went away (ICMP port unreachable on a previous datagram).
            Err(e) if receiver_gone(&e) => Err(self.receiver_gone(e)),
            // A full socket buffer loses the datagram; NACK and keyframes recover.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    fn send_sender_reports(&mut self) -> Result<(), OutputError> {
        let datagram = self.sender_reports(false);
        self.last_sr = Some(Instant::now());
        self.send(&datagram)
    }

    /// One compound RTCP packet: a sender report per stream (NTP time of now on the capture
    /// clock and the RTP timestamp of the same instant), then a BYE for all of them if `bye`.
    fn sender_reports(&self, bye: bool) -> Vec<u8> {
        let now_us = self.clock.now_us();
        let ntp = ntp_of_unix_us(self.clock.wall_us(now_us));
        let streams = || std::iter::once(&self.video).chain(self.audio.as_ref());
        let mut compound = Compound::builder();
        for s in streams() {
            compound = compound.add_packet(
                rtcp_types::SenderReport::builder(s.ssrc)
                    .ntp_timestamp(ntp)
                    .rtp_timestamp(s.rtp_ts(now_us))
                    .packet_count(s.packets)
                    .octet_count(s.octets),
            );
        }
        if bye {
            let sources = streams().fold(Bye::builder(), |b, s| b.add_source(s.ssrc));
            compound = compound.add_packet(sources);
        }
        let mut buf = vec![0u8; compound.calculate_size().unwrap_or(0)];
        match compound.write_into(&mut buf) {
            Ok(n) => buf.truncate(n),
            Err(_) => buf.clear(),
        }
        buf
    }

    /// Read every RTCP datagram waiting on the socket.
    fn poll_rtcp(&mut self) -> Result<(), OutputError> {
        let mut buf = [0u8; 1500];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => self.handle_rtcp(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if receiver_gone(&e) => return Err(self.receiver_gone(e)),
                Err(_) => return Ok(()),
            }
        }
    }

    /// Feed one RTCP datagram from the receiver (also what the socket loop calls).
    pub fn handle_rtcp(&mut self, data: &[u8]) {
        self.read_rtcp(data);
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = self.report.clone();
    }

    fn read_rtcp(&mut self, data: &[u8]) {
        let Ok(compound) = Compound::parse(data) else {
            self.report.malformed += 1;
            return;
        };
        let mut nacked = Vec::new();
        let mut wants_keyframe = false;
        for packet in compound {
            let Ok(packet) = packet else {
                self.report.malformed += 1;
                return;
            };
            match packet {
                Packet::Rr(rr) => self.read_report_blocks(rr.report_blocks()),
                Packet::Sr(sr) => self.read_report_blocks(sr.report_blocks()),
                Packet::PayloadFeedback(fb)
                    if fb.media_ssrc() == self.video.ssrc || fb.media_ssrc() == 0 =>
                {
                    if fb.parse_fci::<Pli>().is_ok() {
                        self.report.plis += 1;
                        wants_keyframe = true;
                    } else if let Ok(fir) = fb.parse_fci::<Fir>() {
                        if fir.entries().any(|e| e.ssrc() == self.video.ssrc) {
                            self.report.firs += 1;
                            wants_keyframe = true;
                        }
                    }
                }
                Packet::TransportFeedback(fb) if fb.media_ssrc() == self.video.ssrc => {
                    if let Ok(nack) = fb.parse_fci::<Nack>() {
                        self.report.nacks += 1;
                        nacked.extend(nack.entries());
                    }
                }
                _ => {}
            }
        }
        for seq in nacked {
            if let Some(p) = self.history.get(seq).map(<[u8]>::to_vec) {
                if self.send(&p).is_ok() {
                    self.report.retransmitted += 1;
                }
            }
        }
        if wants_keyframe {
            let now = Instant::now();
            let allowed = self
                .last_keyframe_request
                .is_none_or(|t| now.duration_since(t) >= self.opts.keyframe_interval);
            if allowed {
                self.last_keyframe_request = Some(now);
                self.report.keyframes_requested += 1;
                tracing::info!(output = %self.url(), reason = "rtcp", "keyframe_requested");
                self.keyframe.store(true, Ordering::SeqCst);
            }
        }
    }

    fn read_report_blocks<'a>(
        &mut self,
        blocks: impl Iterator<Item = rtcp_types::ReportBlock<'a>>,
    ) {
        for b in blocks {
            if b.ssrc() != self.video.ssrc {
                continue;
            }
            self.report.loss = Some(b.fraction_lost() as f64 / 256.0);
            self.report.receiver_reports += 1;
            self.report.jitter_ms = Some(b.interarrival_jitter() as f64 / 90.0);
            let (lsr, dlsr) = (
                b.last_sender_report_timestamp(),
                b.delay_since_last_sender_report_timestamp(),
            );
            if lsr != 0 {
                let now = (ntp_of_unix_us(self.clock.wall_us(self.clock.now_us())) >> 16) as u32;
                let rtt = now.wrapping_sub(lsr).wrapping_sub(dlsr);
                // Middle 32 bits of NTP: 1/65536 s units.
                self.report.rtt_ms = Some(rtt as f64 * 1000.0 / 65536.0);
            }
        }
    }
}

impl Output for RtpOutput {
    fn name(&self) -> String {
        self.url()
    }

    fn write(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError> {
        match self.write_media(pkt) {
            // UDP has no connection to lose: the receiver may come back on the same port.
            Err(e @ OutputError::Lost { .. }) => {
                self.go_down(e)?;
                Ok(Written::Skipped {
                    want_keyframe: false,
                })
            }
            r => r,
        }
    }

    fn rtcp(&self) -> Option<Arc<std::sync::Mutex<RtcpReport>>> {
        Some(self.report())
    }

    fn link(&self) -> Option<LinkReport> {
        Some(LinkReport {
            reconnecting: self.down.is_some(),
            reconnects: self.reconnects,
            last_error: self.last_error.as_ref().map(ErrorReport::from),
        })
    }

    fn finish(self: Box<Self>, _clean: bool) -> Result<OutputSummary, OutputError> {
        // RFC 3550 §6.3.7: say goodbye, so receivers end the stream now instead of timing out
        // (ffmpeg's RTP demuxer ends its input on it). Best effort: the receiver may be gone.
        let _ = self.socket.send(&self.sender_reports(true));
        tracing::debug!(output = %self.url(), "rtcp_bye_sent");
        Ok(OutputSummary {
            name: self.url(),
            bytes: self.bytes,
            packets: self.packets,
            warning: None,
        })
    }
}

/// RFC 6184 payloads of one access unit, each at most `max` bytes: NAL units that fit go alone
/// (consecutive SPS/PPS together in one STAP-A), bigger ones as FU-A fragments. The last payload
/// of the access unit carries the marker bit.
pub fn h264_payloads(au: &[u8], max: usize) -> Vec<Vec<u8>> {
    let max = max.max(16);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut stap: Vec<&[u8]> = Vec::new();
    let flush_stap = |stap: &mut Vec<&[u8]>, out: &mut Vec<Vec<u8>>| {
        match stap.len() {
            0 => {}
            1 => out.push(stap[0].to_vec()),
            _ => {
                let nri = stap.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                let mut p = vec![nri | 24];
                for n in stap.iter() {
                    p.extend_from_slice(&(n.len() as u16).to_be_bytes());
                    p.extend_from_slice(n);
                }
                out.push(p);
            }
        }
        stap.clear();
    };
    for nal in nal_units(au).filter(|n| !n.is_empty()) {
        let kind = nal[0] & 0x1f;
        // Access unit delimiters carry nothing a receiver needs.
        if kind == 9 {
            continue;
        }
        if kind == 7 || kind == 8 {
            let size: usize = 1 + stap.iter().map(|n| 2 + n.len()).sum::<usize>() + 2 + nal.len();
            if size > max {
                flush_stap(&mut stap, &mut out);
            }
            stap.push(nal);
            continue;
        }
        flush_stap(&mut stap, &mut out);
        if nal.len() <= max {
            out.push(nal.to_vec());
            continue;
        }
        // FU-A: indicator (F|NRI|28), header (S|E|R|type), then a slice of the payload.
        let indicator = (nal[0] & 0xe0) | 28;
        let body = &nal[1..];
        let chunk = max - 2;
        let n = body.len().div_ceil(chunk);
        for (i, part) in body.chunks(chunk).enumerate() {
            let mut header = kind;
            if i == 0 {
                header |= 0x80;
            }
            if i + 1 == n {
                header |= 0x40;
            }
            let mut p = Vec::with_capacity(part.len() + 2);
            p.push(indicator);
            p.push(header);
            p.extend_from_slice(part);
            out.push(p);
        }
    }
    flush_stap(&mut stap, &mut out);
    out
}

/// Sent packets kept for retransmission on NACK, bounded by count.
pub struct SendHistory {
    packets: VecDeque<(u16, Vec<u8>)>,
    max: usize,
}

impl SendHistory {
    pub fn new(max: usize) -> Self {
        Self {
            packets: VecDeque::with_capacity(max),
            max,
        }
    }

    pub fn push(&mut self, seq: u16, packet: Vec<u8>) {
        if self.packets.len() == self.max {
            self.packets.pop_front();
        }
        self.packets.push_back((seq, packet));
    }

    pub fn get(&self, seq: u16) -> Option<&[u8]> {
        // Sequence numbers are consecutive: index from the newest.
        let (newest, _) = self.packets.back()?;
        let back = newest.wrapping_sub(seq) as usize;
        let i = self.packets.len().checked_sub(back + 1)?;
        let (s, p) = &self.packets[i];
        (*s == seq).then_some(p.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of `h264_payloads`, written from RFC 6184 for the test.
    fn depayload(payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Vec<u8> = Vec::new();
        for p in payloads {
            match p[0] & 0x1f {
                24 => {
                    let mut i = 1;
                    while i + 2 <= p.len() {
                        let n = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                        nals.push(p[i + 2..i + 2 + n].to_vec());
                        i += 2 + n;
                    }
                }
                28 => {
                    if p[1] & 0x80 != 0 {
                        fu = vec![(p[0] & 0xe0) | (p[1] & 0x1f)];
                    }
                    fu.extend_from_slice(&p[2..]);
                    if p[1] & 0x40 != 0 {
                        nals.push(std::mem::take(&mut fu));
                    }
                }
                _ => nals.push(p.clone()),
            }
        }
        nals
    }

    #[test]
    fn urls_and_session_json_parse_and_bad_ones_are_refused() {
        let t = RtpTarget::parse_url(
            "rtp://127.0.0.1:5004?video_pt=102&video_ssrc=1111&audio_pt=100&audio_ssrc=2222",
        )
        .unwrap();
        assert_eq!(t.addr, "127.0.0.1:5004".parse().unwrap());
        assert_eq!(
            (t.video_pt, t.video_ssrc, t.audio),
            (102, 1111, Some((100, 2222)))
        );
        let j = RtpTarget::parse_json(r#"{"rtp":{"ip":"127.0.0.1","port":5004},"video":{"payload_type":102,"ssrc":1111},"audio":{"payload_type":100,"ssrc":2222}}"#).unwrap();
        assert_eq!(j, t);
        assert_eq!(t.mtu, DEFAULT_MTU);
        let m = RtpTarget::parse_url("rtp://[::1]:5004?video_pt=96&video_ssrc=1&mtu=500").unwrap();
        assert_eq!((m.mtu, m.audio), (500, None));
        let j = RtpTarget::parse_json(
            r#"{"rtp":{"ip":"::1","port":5004,"mtu":500},"video":{"payload_type":96,"ssrc":1}}"#,
        )
        .unwrap();
        assert_eq!(j, m);
        assert_eq!(j.clone().with_mtu(9000).unwrap().mtu, 9000);
        assert!(j.with_mtu(100).is_err());
        for bad in [
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1&mtu=255",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1&mtu=9001",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1&mtu=big",
            "rtp://127.0.0.1:5004",
            "rtp://host.example:5004?video_pt=1&video_ssrc=1",
            "rtp://127.0.0.1:0?video_pt=1&video_ssrc=1",
            "rtp://127.0.0.1:5004?video_pt=128&video_ssrc=1",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=-1",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1&audio_pt=97",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1&audio_pt=96&audio_ssrc=2",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1&x=1",
        ] {
            assert!(RtpTarget::parse_url(bad).is_err(), "{bad}");
        }
        for bad in [
            "",
            "{",
            "[]",
            r#"{"rtp":{"ip":"x","port":1}}"#,
            r#"{"rtp":{"ip":"127.0.0.1","port":70000},"video":{"payload_type":1,"ssrc":1}}"#,
            r#"{"rtp":{"ip":"127.0.0.1","port":1,"mtu":"1200"},"video":{"payload_type":1,"ssrc":1}}"#,
            r#"{"rtp":{"ip":"127.0.0.1","port":1,"mtu":20},"video":{"payload_type":1,"ssrc":1}}"#,
        ] {
            assert!(RtpTarget::parse_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payloads_round_trip_with_stap_a_and_fu_a_within_the_mtu() {
        let sps = vec![0x67, 0x42, 0xc0, 0x1f, 1, 2, 3];
        let pps = vec![0x68, 0xce, 0x3c, 0x80];
        let idr: Vec<u8> = std::iter::once(0x65u8)
            .chain((0..5000).map(|i| (i % 251) as u8 | 1))
            .collect();
        let small = vec![0x41, 0x9a, 1, 2, 3];
        let mut au = Vec::new();
        for n in [&sps, &pps, &idr, &small] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(n);
        }
        let p = h264_payloads(&au, 1200);
        assert!(p.iter().all(|x| x.len() <= 1200));
        assert_eq!(p[0][0] & 0x1f, 24, "SPS+PPS in one STAP-A");
        assert_eq!(p[1][0] & 0x1f, 28, "the IDR is fragmented");
        assert_eq!(depayload(&p), vec![sps, pps, idr, small]);
    }

    #[test]
    fn history_finds_recent_packets_across_wraparound() {
        let mut h = SendHistory::new(4);
        for s in [65533u16, 65534, 65535, 0, 1] {
            h.push(s, vec![s as u8]);
        }
        assert_eq!(h.get(1), Some(&[1u8][..]));
        assert_eq!(h.get(65535), Some(&[255u8][..]));
        assert_eq!(h.get(65534), Some(&[254u8][..]));
        assert_eq!(h.get(65533), None, "evicted");
        assert_eq!(h.get(2), None, "not sent yet");
    }
}
