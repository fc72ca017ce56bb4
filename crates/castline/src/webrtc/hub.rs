//! The peer hub: one thread that owns the UDP sockets and every WebRTC peer (a str0m `Rtc`),
//! fed by commands (new peer, answer, remote candidate, media packet, removal) over a channel.
//!
//! str0m is sans-IO: the hub reads datagrams and hands them to the peer that accepts them, writes
//! what peers transmit, and drives their timers. Encoded packets arrive from the output thread;
//! each is written to every connected peer (one encode, many viewers). A peer sees video only
//! from a keyframe on; keyframe requests (new viewer, PLI/FIR) go to the encoder through a
//! [`KeyframeGate`] that rate-limits them across peers.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::adapt::tier::{self, TierChooser};
use crate::adapt::{Feedback, RateConfig, RateController, TierDemand};
use crate::encode::{EncodedPacket, MediaKind as PacketKind};
use crate::pipeline::clock::MediaClock;

/// Why the hub refused a request (reported to the HTTP/WebSocket client).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("malformed SDP: {0}")]
    BadSdp(String),
    #[error("the SDP offer cannot be answered: {0}")]
    Negotiation(String),
    #[error("unknown peer {0}")]
    UnknownPeer(u64),
    #[error("too many peers (limit {0})")]
    Full(usize),
    #[error("malformed ICE candidate: {0}")]
    BadCandidate(String),
    #[error("the WebRTC hub has stopped")]
    Stopped,
}

pub type PeerId = u64;

/// Rate-limits keyframe requests from every peer into one flag the encoder reads. A request
/// inside the interval is remembered and fired when the interval ends, so a viewer that joins
/// right after another still gets its keyframe promptly.
pub struct KeyframeGate {
    flag: Arc<AtomicBool>,
    min_interval: Duration,
    last: Option<Instant>,
    pending: bool,
    /// Requests that reached the encoder (for stats).
    pub sent: u64,
}

impl KeyframeGate {
    pub fn new(flag: Arc<AtomicBool>, min_interval: Duration) -> Self {
        Self {
            flag,
            min_interval,
            last: None,
            pending: false,
            sent: 0,
        }
    }

    pub fn request(&mut self, now: Instant, reason: &str, peer: PeerId) {
        tracing::info!(reason, peer, "keyframe_requested");
        self.pending = true;
        self.poll(now);
    }

    /// Fire a pending request if the interval allows; returns when to call again.
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        match self.last {
            Some(l) if now < l + self.min_interval => Some(l + self.min_interval),
            _ => {
                self.flag.store(true, Ordering::SeqCst);
                self.last = Some(now);
                self.pending = false;
                self.sent += 1;
                None
            }
        }
    }
}

/// How the hub's peers negotiate.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where the UDP sockets bind: one address, or unspecified for every local IPv4 address.
    pub bind_ip: IpAddr,
    /// ICE-lite answerer (a server with known addresses) or full ICE (WHIP client).
    pub ice_lite: bool,
    pub max_peers: usize,
    /// Peers that do not connect within this time are dropped.
    pub connect_timeout: Duration,
    /// A connected peer that sends nothing (no STUN, no RTCP) for this long is gone: a killed
    /// browser or a crashed SFU never says goodbye, and an ICE-lite agent sends no checks.
    pub silence_timeout: Duration,
    /// Minimum spacing of keyframe requests sent to the encoder.
    pub keyframe_interval: Duration,
    /// Name used in logs.
    pub name: String,
    /// Adaptive quality: each peer's rate controller, fed by str0m's TWCC estimate (and REMB).
    /// None: every peer takes the main encode whatever its path.
    pub adapt: Option<PeerAdapt>,
    /// Offers made by this hub list only this H.264 profile-level-id (packetization mode 1):
    /// what the encoder really sends. Some SFUs (LiveKit) take the first H.264 format of their
    /// answer as the track's codec, and a sender that then uses another payload type is seen as
    /// a codec change. None: str0m's full list.
    pub offer_h264: Option<u32>,
}

/// How the hub's peers adapt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerAdapt {
    /// Bounds of a peer's target (the max is the main encode's bitrate).
    pub rate: RateConfig,
    /// The estimate a new peer starts from.
    pub start_bps: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            ice_lite: true,
            max_peers: 64,
            connect_timeout: Duration::from_secs(20),
            silence_timeout: Duration::from_secs(10),
            keyframe_interval: Duration::from_millis(500),
            name: "webrtc".into(),
            adapt: None,
            offer_h264: None,
        }
    }
}

/// State of one peer, as shown in the JSON stats.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerReport {
    pub id: PeerId,
    /// "whep", "ws" (signaling channel) or "whip".
    pub via: &'static str,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    /// Fraction of our packets the peer reported lost (0..1).
    pub loss: Option<f64>,
    pub bitrate_kbps: f64,
    pub bytes_sent: u64,
    pub nacks: u64,
    pub plis: u64,
    pub firs: u64,
    pub video_packets: u64,
    pub audio_packets: u64,
    /// The video bitrate this peer's rate controller asks for, kbit/s (null: adaptation off).
    pub target_kbps: Option<f64>,
    /// The path estimate (TWCC, else REMB), kbit/s.
    pub estimate_kbps: Option<f64>,
    /// The encode tier the peer receives (0 = main, 1 = low).
    pub tier: u8,
}

/// Events a peer's owner (signaling session, WHIP client) can wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Connected(PeerId),
    /// Disconnected, timed out, removed or failed.
    Closed(PeerId, String),
}

enum Command {
    AcceptOffer {
        sdp: String,
        via: &'static str,
        reply: Sender<Result<(PeerId, String), HubError>>,
    },
    CreateOffer {
        via: &'static str,
        audio: bool,
        reply: Sender<Result<(PeerId, String), HubError>>,
    },
    AcceptAnswer {
        peer: PeerId,
        sdp: String,
        reply: Sender<Result<(), HubError>>,
    },
    RemoteCandidate {
        peer: PeerId,
        candidate: String,
        reply: Sender<Result<(), HubError>>,
    },
    Remove(PeerId),
    Media(Arc<EncodedPacket>),
    Subscribe(Sender<PeerEvent>),
    Shutdown,
}

/// The handle the HTTP server, signaling sessions and outputs use. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    tx: Sender<Command>,
    waker: Arc<UnixDatagram>,
    reports: Arc<Mutex<Vec<PeerReport>>>,
    alive: Arc<AtomicBool>,
    keyframes_sent: Arc<AtomicU64>,
    local_addrs: Arc<Vec<SocketAddr>>,
    demand: Arc<TierDemand>,
}

/// The hub's thread; joined when the hub stops.
pub struct HubThread(Option<JoinHandle<()>>);

impl HubThread {
    pub fn join(mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Hub {
    /// Bind the UDP sockets and start the hub thread.
    pub fn start(
        cfg: HubConfig,
        keyframe: Arc<AtomicBool>,
        clock: MediaClock,
    ) -> std::io::Result<(Hub, HubThread)> {
        let ips = if cfg.bind_ip.is_unspecified() {
            super::local_ipv4_addrs()
        } else {
            vec![cfg.bind_ip]
        };
        let mut sockets = Vec::new();
        for ip in ips {
            let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
            s.set_nonblocking(true)?;
            sockets.push(s);
        }
        if sockets.is_empty() {
            return Err(std::io::Error::new(
                ErrorKind::AddrNotAvailable,
                "no local IPv4 address to bind",
            ));
        }
        let local_addrs: Vec<SocketAddr> =
            sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
        let (wake_tx, wake_rx) = UnixDatagram::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let keyframes_sent = Arc::new(AtomicU64::new(0));
        let demand = Arc::new(if cfg.adapt.is_some() {
            TierDemand::default()
        } else {
            TierDemand::fixed()
        });
        let mut core = HubCore {
            demand: demand.clone(),
            gate: KeyframeGate::new(keyframe, cfg.keyframe_interval),
            cfg,
            clock,
            sockets,
            local_addrs: local_addrs.clone(),
            peers: HashMap::new(),
            next_id: 1,
            subscribers: Vec::new(),
            reports: reports.clone(),
            keyframes_sent: keyframes_sent.clone(),
            last_report: Instant::now(),
        };
        let alive2 = alive.clone();
        let thread = std::thread::Builder::new()
            .name("castline-webrtc".into())
            .spawn(move || {
                core.run(&rx, &wake_rx);
                alive2.store(false, Ordering::SeqCst);
            })?;
        Ok((
            Hub {
                tx,
                waker: Arc::new(wake_tx),
                reports,
                alive,
                keyframes_sent,
                local_addrs: Arc::new(local_addrs),
                demand,
            },
            HubThread(Some(thread)),
        ))
    }

    fn send(&self, cmd: Command) -> Result<(), HubError> {
        self.tx.send(cmd).map_err(|_| HubError::Stopped)?;
        // A full wake socket already holds a wake-up; nothing is lost.
        let _ = self.waker.send(&[1]);
        Ok(())
    }

    fn call<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, HubError>>) -> Command,
    ) -> Result<T, HubError> {
        let (reply, rx) = mpsc::channel();
        self.send(make(reply))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| HubError::Stopped)?
    }

    /// Answer a remote offer (WHEP, signaling channel): a new receive-only peer.
    pub fn accept_offer(&self, sdp: &str, via: &'static str) -> Result<(PeerId, String), HubError> {
        let sdp = sdp.to_string();
        self.call(|reply| Command::AcceptOffer { sdp, via, reply })
    }

    /// Create a send-only offer (WHIP client).
    pub fn create_offer(
        &self,
        via: &'static str,
        audio: bool,
    ) -> Result<(PeerId, String), HubError> {
        self.call(|reply| Command::CreateOffer { via, audio, reply })
    }

    pub fn accept_answer(&self, peer: PeerId, sdp: &str) -> Result<(), HubError> {
        let sdp = sdp.to_string();
        self.call(|reply| Command::AcceptAnswer { peer, sdp, reply })
    }

    /// A trickled candidate (`candidate:…` line, with or without the `a=` prefix).
    pub fn add_remote_candidate(&self, peer: PeerId, candidate: &str) -> Result<(), HubError> {
        let candidate = candidate.to_string();
        self.call(|reply| Command::RemoteCandidate {
            peer,
            candidate,
            reply,
        })
    }

    pub fn remove(&self, peer: PeerId) {
        let _ = self.send(Command::Remove(peer));
    }

    pub fn push_media(&self, pkt: Arc<EncodedPacket>) -> Result<(), HubError> {
        self.send(Command::Media(pkt))
    }

    /// Peer connect/close events from now on.
    pub fn subscribe(&self) -> Receiver<PeerEvent> {
        let (tx, rx) = mpsc::channel();
        let _ = self.send(Command::Subscribe(tx));
        rx
    }

    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    pub fn peers(&self) -> Vec<PeerReport> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keyframe requests the hub passed to the encoder.
    pub fn keyframes_requested(&self) -> u64 {
        self.keyframes_sent.load(Ordering::Relaxed)
    }

    /// What this hub's peers ask of the encode tiers.
    pub fn demand(&self) -> Arc<TierDemand> {
        self.demand.clone()
    }

    /// The UDP addresses media flows through (ICE host candidates).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }
}

struct Peer {
    rtc: Rtc,
    via: &'static str,
    created: Instant,
    /// Last datagram from the peer.
    last_rx: Instant,
    connected: bool,
    video: Option<(Mid, Pt)>,
    audio: Option<(Mid, Pt)>,
    /// Video is held back until a keyframe: a decoder cannot start elsewhere.
    wants_keyframe: bool,
    pending_offer: Option<SdpPendingOffer>,
    report: PeerReport,
    /// Time, bytes sent and video bytes written of the previous stats event (for the bitrate
    /// and the overhead).
    last_peer_stats: Option<(Instant, u64, u64)>,
    /// Video payload written to this peer so far.
    video_bytes: u64,
    /// None with adaptation off.
    rate: Option<RateController>,
    /// Whether TWCC feedback drives the estimate (else RTCP loss does, with REMB).
    twcc: bool,
    tier: TierChooser,
    /// When ICE+DTLS connected: the first seconds' estimate says more about the join (a
    /// keyframe burst, the estimator's start) than about the path.
    connected_at: Option<Instant>,
    /// When str0m was last asked for an allocation probe (while on the low tier).
    last_probe: Option<Instant>,
}

struct HubCore {
    cfg: HubConfig,
    clock: MediaClock,
    sockets: Vec<UdpSocket>,
    local_addrs: Vec<SocketAddr>,
    peers: HashMap<PeerId, Peer>,
    next_id: PeerId,
    gate: KeyframeGate,
    subscribers: Vec<Sender<PeerEvent>>,
    reports: Arc<Mutex<Vec<PeerReport>>>,
    keyframes_sent: Arc<AtomicU64>,
    last_report: Instant,
    demand: Arc<TierDemand>,
}

/// Largest datagram we read (ICE/DTLS/SRTP from browsers stay well under it).
const MAX_DATAGRAM: usize = 2048;

impl HubCore {
    fn run(&mut self, rx: &Receiver<Command>, waker: &UnixDatagram) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            // Commands first: media must go out as soon as it arrives.
            loop {
                match rx.try_recv() {
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.close_all("hub stopped");
                        return;
                    }
                    Ok(cmd) => self.handle(cmd),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            let mut next = now + Duration::from_millis(100);
            if let Some(t) = self.gate.poll(now) {
                next = next.min(t);
            }
            self.keyframes_sent.store(self.gate.sent, Ordering::Relaxed);
            let ids: Vec<PeerId> = self.peers.keys().copied().collect();
            for id in ids {
                if let Some(t) = self.drive(id) {
                    next = next.min(t);
                }
            }
            self.expire(now);
            if now.duration_since(self.last_report) >= Duration::from_millis(500) {
                self.publish_reports(now);
            }
            let wait = next.saturating_duration_since(Instant::now());
            self.wait_io(waker, wait, &mut buf);
            let now = Instant::now();
            for p in self.peers.values_mut() {
                if p.rtc.is_alive() {
                    let _ = p.rtc.handle_input(Input::Timeout(now));
                }
            }
        }
    }

    /// Sleep until a socket is readable, a command arrives or `wait` passes; then hand every
    /// waiting datagram to its peer.
    fn wait_io(&mut self, waker: &UnixDatagram, wait: Duration, buf: &mut [u8]) {
        let mut fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        fds.push(libc::pollfd {
            fd: waker.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // Rounded up: str0m's pacer often asks to wake in under a millisecond, and a 0 ms poll
        // for that would spin the thread until then (16 % of a core on an idle stream).
        let ms = wait.as_micros().div_ceil(1000).min(1000) as i32;
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return;
        }
        let mut sink = [0u8; 64];
        while waker.recv(&mut sink).is_ok() {}
        for (i, fd) in fds.iter().take(self.sockets.len()).enumerate() {
            if fd.revents == 0 {
                continue;
            }
            // Bounded so one busy socket cannot starve the command queue.
            for _ in 0..256 {
                let (n, source) = match self.sockets[i].recv_from(buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // ICMP errors from a vanished peer surface here; they are not ours to fail on.
                    Err(_) => continue,
                };
                let destination = self.local_addrs[i];
                let Ok(contents) = buf[..n].try_into() else {
                    continue;
                };
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination,
                        contents,
                    },
                );
                if let Some(p) = self.peers.values_mut().find(|p| p.rtc.accepts(&input)) {
                    p.last_rx = Instant::now();
                    if let Err(e) = p.rtc.handle_input(input) {
                        tracing::debug!(error = %e, "peer input rejected");
                        p.rtc.disconnect();
                    }
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::AcceptOffer { sdp, via, reply } => {
                let _ = reply.send(self.accept_offer(&sdp, via));
            }
            Command::CreateOffer { via, audio, reply } => {
                let _ = reply.send(self.create_offer(via, audio));
            }
            Command::AcceptAnswer { peer, sdp, reply } => {
                let _ = reply.send(self.accept_answer(peer, &sdp));
            }
            Command::RemoteCandidate {
                peer,
                candidate,
                reply,
            } => {
                let r = match self.peers.get_mut(&peer) {
                    None => Err(HubError::UnknownPeer(peer)),
                    Some(p) => {
                        let line = candidate.trim();
                        let line = line.strip_prefix("a=").unwrap_or(line);
                        match Candidate::from_sdp_string(line) {
                            Ok(c) => {
                                p.rtc.add_remote_candidate(c);
                                Ok(())
                            }
                            Err(e) => Err(HubError::BadCandidate(e.to_string())),
                        }
                    }
                };
                let _ = reply.send(r);
            }
            Command::Remove(id) => {
                if let Some(mut p) = self.peers.remove(&id) {
                    p.rtc.disconnect();
                    self.closed(id, p.via, "removed");
                }
            }
            Command::Media(pkt) => self.write_media(&pkt),
            Command::Subscribe(tx) => self.subscribers.push(tx),
            Command::Shutdown => {}
        }
    }

    fn new_rtc(&self, offer: bool) -> Rtc {
        let mut cfg = RtcConfig::new().clear_codecs();
        match self.cfg.offer_h264 {
            Some(profile) if offer => {
                cfg.codec_config()
                    .add_h264(108.into(), Some(109.into()), true, profile)
            }
            _ => cfg = cfg.enable_h264(true),
        }
        let mut rtc = cfg
            .enable_opus(true, false)
            .set_ice_lite(self.cfg.ice_lite)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .enable_bwe(
                self.cfg
                    .adapt
                    .map(|a| str0m::bwe::Bitrate::bps(a.start_bps)),
            )
            .build(Instant::now());
        for a in &self.local_addrs {
            if let Ok(c) = Candidate::host(*a, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        rtc
    }

    fn add_peer(&mut self, mut rtc: Rtc, via: &'static str) -> PeerId {
        // Arms str0m's readiness so the first poll reports the negotiated tracks.
        let _ = rtc.handle_input(Input::Timeout(Instant::now()));
        let id = self.next_id;
        self.next_id += 1;
        let peer = Peer {
            rtc,
            via,
            created: Instant::now(),
            last_rx: Instant::now(),
            connected: false,
            video: None,
            audio: None,
            wants_keyframe: true,
            pending_offer: None,
            report: PeerReport {
                id,
                via,
                connected: false,
                rtt_ms: None,
                loss: None,
                bitrate_kbps: 0.0,
                bytes_sent: 0,
                nacks: 0,
                plis: 0,
                firs: 0,
                video_packets: 0,
                audio_packets: 0,
                target_kbps: self.cfg.adapt.map(|a| kbps(a.rate.max_bps)),
                estimate_kbps: None,
                tier: tier::MAIN,
            },
            last_peer_stats: None,
            video_bytes: 0,
            rate: self.cfg.adapt.map(|a| RateController::new(a.rate)),
            twcc: false,
            tier: TierChooser::default(),
            connected_at: None,
            last_probe: None,
        };
        self.peers.insert(id, peer);
        tracing::info!(hub = %self.cfg.name, peer = id, via, "peer_added");
        id
    }

    fn accept_offer(&mut self, sdp: &str, via: &'static str) -> Result<(PeerId, String), HubError> {
        if self.peers.len() >= self.cfg.max_peers {
            return Err(HubError::Full(self.cfg.max_peers));
        }
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| HubError::BadSdp(e.to_string()))?;
        let mut rtc = self.new_rtc(false);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| HubError::Negotiation(e.to_string()))?;
        let answer = answer.to_sdp_string();
        let id = self.add_peer(rtc, via);
        if let Some(p) = self.peers.get_mut(&id) {
            tracks_from_sdp(p, &answer);
        }
        self.keep_if_usable(id, "the offer has no receivable H.264 video or Opus audio")?;
        Ok((id, answer))
    }

    fn create_offer(
        &mut self,
        via: &'static str,
        audio: bool,
    ) -> Result<(PeerId, String), HubError> {
        let mut rtc = self.new_rtc(true);
        let mut api = rtc.sdp_api();
        let stream = Some("castline".to_string());
        api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            stream.clone(),
            Some("video".into()),
            None,
        );
        if audio {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                stream,
                Some("audio".into()),
                None,
            );
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| HubError::Negotiation("nothing to offer".into()))?;
        let id = self.add_peer(rtc, via);
        if let Some(p) = self.peers.get_mut(&id) {
            p.pending_offer = Some(pending);
        }
        Ok((id, offer.to_sdp_string()))
    }

    fn accept_answer(&mut self, id: PeerId, sdp: &str) -> Result<(), HubError> {
        let p = self.peers.get_mut(&id).ok_or(HubError::UnknownPeer(id))?;
        let pending = p
            .pending_offer
            .take()
            .ok_or_else(|| HubError::Negotiation("no offer is waiting for an answer".into()))?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| HubError::BadSdp(e.to_string()))?;
        p.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| HubError::Negotiation(e.to_string()))?;
        tracks_from_sdp(p, sdp);
        self.keep_if_usable(id, "the answer accepts neither H.264 video nor Opus audio")
    }

    /// A peer without a track we can send is dropped with `why`.
    fn keep_if_usable(&mut self, id: PeerId, why: &str) -> Result<(), HubError> {
        let usable = self
            .peers
            .get(&id)
            .is_some_and(|p| p.video.is_some() || p.audio.is_some());
        if !usable {
            self.peers.remove(&id);
            return Err(HubError::Negotiation(why.into()));
        }
        Ok(())
    }

    /// Run a peer's output until it only has a timeout left; returns that timeout.
    fn drive(&mut self, id: PeerId) -> Option<Instant> {
        let mut events = Vec::new();
        let timeout = {
            let p = self.peers.get_mut(&id)?;
            loop {
                if !p.rtc.is_alive() {
                    break None;
                }
                match p.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break Some(t),
                    Ok(Output::Transmit(t)) => transmit(&self.sockets, &self.local_addrs, &t),
                    Ok(Output::Event(e)) => events.push(e),
                    Err(e) => {
                        tracing::warn!(peer = id, error = %e, "peer failed");
                        p.rtc.disconnect();
                        break None;
                    }
                }
            }
        };
        for e in events {
            self.on_event(id, e);
        }
        let alive = self.peers.get(&id).is_some_and(|p| p.rtc.is_alive());
        if !alive {
            if let Some(p) = self.peers.remove(&id) {
                self.closed(id, p.via, "disconnected");
            }
            return None;
        }
        timeout
    }

    fn on_event(&mut self, id: PeerId, e: Event) {
        tracing::trace!(peer = id, event = ?e, "peer_event");
        let now = Instant::now();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        match e {
            Event::Connected => {
                p.connected = true;
                p.connected_at = Some(now);
                p.report.connected = true;
                tracing::info!(hub = %self.cfg.name, peer = id, via = p.via, "peer_connected");
                p.wants_keyframe = true;
                if let Some(a) = self.cfg.adapt {
                    p.rtc.bwe().set_bitrate(
                        str0m::bwe::Bitrate::bps(a.rate.min_bps),
                        str0m::bwe::Bitrate::bps(desired_bps(&a)),
                    );
                }
                let wants_video = p.video.is_some();
                for s in &self.subscribers {
                    let _ = s.send(PeerEvent::Connected(id));
                }
                if wants_video {
                    self.gate.request(now, "new_peer", id);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                p.rtc.disconnect();
            }
            Event::KeyframeRequest(req) => {
                let kind = format!("{:?}", req.kind).to_ascii_lowercase();
                self.gate.request(now, &kind, id);
            }
            Event::EgressBitrateEstimate(kind) => {
                let fb = match kind {
                    str0m::bwe::BweKind::Twcc { estimate, .. } => {
                        p.twcc = true;
                        Feedback::Estimate {
                            bps: estimate.as_u64(),
                        }
                    }
                    str0m::bwe::BweKind::Remb { estimate, .. } => Feedback::Remb {
                        bps: estimate.as_u64(),
                    },
                    _ => return,
                };
                self.on_feedback(id, now, fb);
            }
            Event::PeerStats(s) => {
                p.report.rtt_ms = s.rtt.map(|d| d.as_secs_f64() * 1000.0);
                p.report.loss = s.egress_loss_fraction.map(f64::from);
                // Receiver reports' loss caps the rate too (GCC takes the lower of its delay-
                // and loss-based estimates; str0m's TWCC estimate reacts to loss more slowly).
                let loss = s.egress_loss_fraction;
                let mut overhead = None;
                let mut sent_bps = None;
                if let Some((t, b, v)) = p.last_peer_stats {
                    let dt = s.timestamp.saturating_duration_since(t).as_secs_f64();
                    if dt > 0.0 {
                        let sent = s.bytes_tx.saturating_sub(b) as f64 * 8.0 / dt;
                        let video = p.video_bytes.saturating_sub(v) as f64 * 8.0 / dt;
                        p.report.bitrate_kbps = (sent / 1000.0).round();
                        sent_bps = Some(sent as u64);
                        overhead = Some((sent - video).max(0.0) as u64);
                    }
                }
                p.last_peer_stats = Some((s.timestamp, s.bytes_tx, p.video_bytes));
                p.report.bytes_sent = s.bytes_tx;
                if let Some(bps) = overhead {
                    self.on_feedback(id, now, Feedback::Overhead { bps });
                }
                if let Some(l) = loss {
                    let fraction = l as f64;
                    self.on_feedback(id, now, Feedback::Loss { fraction, sent_bps });
                }
            }
            Event::MediaEgressStats(s) => {
                // Cumulative per track: keep the video track's feedback counters.
                if p.video.is_some_and(|(m, _)| m == s.mid) {
                    p.report.nacks = s.nacks;
                    p.report.plis = s.plis;
                    p.report.firs = s.firs;
                }
                if let Some(rtt) = s.rtt {
                    p.report.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
                if let Some(l) = s.loss {
                    p.report.loss = Some(f64::from(l));
                }
            }
            _ => {}
        }
    }

    /// Feed a peer's rate controller, then re-evaluate its tier.
    fn on_feedback(&mut self, id: PeerId, now: Instant, fb: Feedback) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(rate) = &mut p.rate else {
            return;
        };
        rate.on_feedback(now, fb);
        p.report.target_kbps = Some(kbps(rate.target_bps()));
        p.report.estimate_kbps = rate.estimate_bps().map(kbps);
        self.choose_tier(id, now);
    }

    /// Move a peer to the tier its target allows (at that tier's next keyframe, asked for now).
    /// Called on feedback and every report interval, so a steady estimate still moves it.
    fn choose_tier(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let (Some(rate), Some(adapt), true) = (&p.rate, self.cfg.adapt, p.video.is_some()) else {
            return;
        };
        let target = rate.target_bps();
        let main_rate = self.demand.main_rate(rate.config().max_bps);
        let reason = rate.limited_by().unwrap_or(crate::adapt::Reason::Bandwidth);
        let joining = p
            .connected_at
            .is_none_or(|t| now.duration_since(t) < JOIN_GRACE);
        if joining && reason != crate::adapt::Reason::Loss {
            return;
        }
        let lossy = rate.loss_within(now, Duration::from_secs(2));
        if let Some(want) = p.tier.update(now, target, main_rate, lossy) {
            let (reason, target_kbps) = (reason.as_str(), target / 1000);
            if want == tier::LOW {
                tracing::warn!(hub = %self.cfg.name, peer = id, reason, tier = "low", target_kbps, "degraded");
            } else {
                tracing::info!(hub = %self.cfg.name, peer = id, reason, tier = "main", target_kbps, "recovered");
            }
            self.gate.request(now, "tier_switch", id);
        }
        // On the low tier the estimate climbs only at GCC's additive rate (what the low tier
        // sends is all it learns from). Once the loss has stopped, an allocation probe (asked for
        // by raising the desired rate above the estimate) tells sooner whether the path carries
        // the main tier again, as libwebrtc probes after a large drop.
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let quiet = p
            .rate
            .as_ref()
            .is_some_and(|r| !r.loss_within(now, PROBE_AFTER_LOSS));
        let due = p
            .last_probe
            .is_none_or(|t| now.duration_since(t) >= PROBE_INTERVAL);
        if p.tier.switch.needs(tier::LOW) && quiet && due {
            p.last_probe = Some(now);
            let min = str0m::bwe::Bitrate::bps(adapt.rate.min_bps);
            let mut bwe = p.rtc.bwe();
            bwe.set_bitrate(min, str0m::bwe::Bitrate::bps(target));
            bwe.set_bitrate(min, str0m::bwe::Bitrate::bps(desired_bps(&adapt)));
        }
        self.update_demand();
    }

    /// Tell the encode stage what this hub's peers need: how many take the main tier, and the
    /// lowest target of those on the low one.
    fn update_demand(&self) {
        if self.cfg.adapt.is_none() {
            return;
        }
        let (main, low) =
            tier::summarize(self.peers.values().filter(|p| p.video.is_some()).map(|p| {
                let rate = p.rate.as_ref();
                (
                    &p.tier.switch,
                    rate.map(|r| r.target_bps()).unwrap_or(u64::MAX),
                    rate.and_then(|r| r.limited_by()),
                )
            }));
        self.demand.set(main, low);
        let peers = || self.peers.values().filter_map(|p| p.rate.as_ref());
        self.demand.set_rates(
            peers().map(|r| r.target_bps()).min(),
            peers().filter_map(|r| r.estimate_bps()).min(),
        );
    }

    fn write_media(&mut self, pkt: &EncodedPacket) {
        let video = pkt.media == PacketKind::Video;
        let mut need_keyframe = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if !p.connected || !p.rtc.is_alive() {
                continue;
            }
            let track = if video { p.video } else { p.audio };
            let Some((mid, pt)) = track else {
                continue;
            };
            if video {
                let switching = p.tier.switch.pending == Some(pkt.layer) && pkt.keyframe;
                let down = switching && pkt.layer > p.tier.switch.current;
                if !p.tier.switch.accept(pkt.layer, pkt.keyframe) {
                    continue;
                }
                if switching {
                    p.report.tier = pkt.layer;
                    tracing::info!(peer = id, tier = pkt.layer, "tier_switched");
                }
                if down {
                    // The old tier's packets are worth nothing once the new keyframe goes out:
                    // resending them on request would clog the very path that is congested.
                    // A fresh resend history (str0m's defaults) forgets them.
                    if let Some(tx) = p.rtc.direct_api().stream_tx_by_mid(mid, None) {
                        tx.set_rtx_cache(1024, Duration::from_secs(3), Some(0.15));
                    }
                }
                if p.wants_keyframe && !pkt.keyframe {
                    continue;
                }
                p.wants_keyframe = false;
            }
            let (rtp_time, data) = if video {
                (
                    str0m::media::MediaTime::from_90khz((pkt.pts_us.max(0) as u64) * 9 / 100),
                    pkt.data.clone(),
                )
            } else {
                (
                    str0m::media::MediaTime::new(
                        (pkt.pts_us.max(0) as u64) * 48 / 1000,
                        str0m::media::Frequency::FORTY_EIGHT_KHZ,
                    ),
                    pkt.data.clone(),
                )
            };
            let Some(w) = p.rtc.writer(mid) else {
                continue;
            };
            let wallclock = self.clock.instant_at(pkt.pts_us);
            match w.write(pt, wallclock, rtp_time, data) {
                Ok(()) => {
                    if video {
                        p.video_bytes += pkt.data.len() as u64;
                        p.report.video_packets += 1;
                    } else {
                        p.report.audio_packets += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = id, error = %e, "media write failed");
                    if video {
                        p.wants_keyframe = true;
                        need_keyframe.push(*id);
                    }
                }
            }
        }
        let now = Instant::now();
        for id in need_keyframe {
            self.gate.request(now, "write_failed", id);
        }
    }

    fn expire(&mut self, now: Instant) {
        let stale: Vec<(PeerId, &'static str)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| {
                if !p.connected && now.duration_since(p.created) > self.cfg.connect_timeout {
                    Some((*id, "ICE did not connect in time"))
                } else if p.connected && now.duration_since(p.last_rx) > self.cfg.silence_timeout {
                    Some((*id, "peer went silent"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in stale {
            if let Some(mut p) = self.peers.remove(&id) {
                p.rtc.disconnect();
                self.closed(id, p.via, why);
            }
        }
    }

    fn closed(&mut self, id: PeerId, via: &'static str, why: &str) {
        tracing::info!(hub = %self.cfg.name, peer = id, via, reason = why, "peer_closed");
        self.subscribers
            .retain(|s| s.send(PeerEvent::Closed(id, why.to_string())).is_ok());
        self.publish_reports(Instant::now());
    }

    fn close_all(&mut self, why: &str) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            if let Some(mut p) = self.peers.remove(&id) {
                p.rtc.disconnect();
                // Flush the DTLS close alert and the like.
                while let Ok(Output::Transmit(t)) = p.rtc.poll_output() {
                    transmit(&self.sockets, &self.local_addrs, &t);
                }
                self.closed(id, p.via, why);
            }
        }
    }

    fn publish_reports(&mut self, now: Instant) {
        self.last_report = now;
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.choose_tier(id, now);
        }
        self.update_demand();
        let mut out: Vec<PeerReport> = self.peers.values().map(|p| p.report.clone()).collect();
        out.sort_by_key(|r| r.id);
        *self.reports.lock().unwrap_or_else(|p| p.into_inner()) = out;
    }
}

/// Send a datagram from the socket bound to its source address. A full socket buffer loses it;
/// NACKs and keyframe requests recover.
fn transmit(sockets: &[UdpSocket], addrs: &[SocketAddr], t: &str0m::net::Transmit) {
    if let Some(s) = addrs
        .iter()
        .position(|a| *a == t.source)
        .and_then(|i| sockets.get(i))
    {
        let _ = s.send_to(&t.contents, t.destination);
    }
}

/// Find the negotiated tracks: every `a=mid:` of the SDP that str0m knows as a media.
fn tracks_from_sdp(p: &mut Peer, sdp: &str) {
    for line in sdp.lines() {
        if let Some(m) = line.trim().strip_prefix("a=mid:") {
            let mid = Mid::from(m);
            if let Some(media) = p.rtc.media(mid) {
                let (kind, dir) = (media.kind(), media.direction());
                add_track(p, mid, kind, dir);
            }
        }
    }
}

/// Remember a negotiated send track and its payload type (H.264 video, Opus audio).
fn add_track(p: &mut Peer, mid: Mid, kind: MediaKind, direction: Direction) {
    if !matches!(direction, Direction::SendOnly | Direction::SendRecv) {
        return;
    }
    let Some(w) = p.rtc.writer(mid) else {
        return;
    };
    let want = match kind {
        MediaKind::Video => Codec::H264,
        MediaKind::Audio => Codec::Opus,
    };
    // For H.264, prefer packetization-mode 1 (FU-A; mode 0 cannot carry big NAL units), then
    // constrained baseline (42e0xx: what SFUs such as LiveKit register, and every H.264 decoder
    // takes), then any baseline.
    let rank = |pp: &&str0m::format::PayloadParams| {
        let f = pp.spec().format;
        let mode1 = f.packetization_mode == Some(1);
        let constrained = f.profile_level_id.is_some_and(|id| id >> 8 == 0x42e0);
        let baseline = f.profile_level_id.is_some_and(|id| id >> 16 == 0x42);
        (mode1 as u8) * 4 + (constrained as u8) * 2 + baseline as u8
    };
    let Some(pt) = w
        .payload_params()
        .filter(|pp| pp.spec().codec == want)
        .max_by_key(rank)
        .map(|pp| pp.pt())
    else {
        return;
    };
    match kind {
        MediaKind::Video if p.video.is_none() => p.video = Some((mid, pt)),
        MediaKind::Audio if p.audio.is_none() => p.audio = Some((mid, pt)),
        _ => {}
    }
}

fn kbps(bps: u64) -> f64 {
    (bps as f64 / 100.0).round() / 10.0
}

/// While a peer is on the low tier and has reported no loss for `PROBE_AFTER_LOSS`, str0m
/// probes for the main tier's rate this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(4);
const PROBE_AFTER_LOSS: Duration = Duration::from_secs(3);

/// For this long after a peer connects only loss (not the delay-based estimate) moves it to the
/// low tier. A browser that just started starves the machine for a second or two, the delay
/// estimate dips with it, and the target then lags the recovering estimate by the probe padding
/// counted as overhead: measured in CI, a 4 s grace let an uncapped viewer drop a tier 8 s in.
const JOIN_GRACE: Duration = Duration::from_secs(8);

/// What a peer's estimator probes up to: a little over what the main tier needs, so a peer on
/// the low tier finds out when its path carries the main tier again.
fn desired_bps(a: &PeerAdapt) -> u64 {
    (a.rate.max_bps as f64 / crate::adapt::rate::ESTIMATE_SHARE * 1.15) as u64
}
