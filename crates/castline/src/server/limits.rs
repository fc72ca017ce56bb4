//! What `serve` lets a client hold, and the admission decision at accept time (sans-IO).
//!
//! `serve` faces browsers on a LAN, so a misbehaving or hostile client must not starve the
//! viewers: every connection holds a thread, so connections are capped in total and per address;
//! a request head must arrive within a deadline (slowloris), an idle keep-alive socket is
//! closed, heads and bodies are bounded. [`Admission`] is the bookkeeping: addresses in,
//! decisions out, no sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Limits of the viewer server. The defaults suit a LAN with tens of viewers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at once (HTTP and WebSocket together; each holds a thread).
    pub max_connections: usize,
    /// Open connections from one IP address (a NAT hides a few viewers behind one).
    pub max_per_ip: usize,
    /// Open WebSocket signaling channels at once.
    pub max_websockets: usize,
    /// A request head (request line and headers) must be complete this long after the
    /// connection opened or the previous response went out.
    pub header_timeout: Duration,
    /// A keep-alive connection with no new request for this long is closed.
    pub idle_timeout: Duration,
    /// A request body must be complete this long after its head.
    pub body_timeout: Duration,
    /// Largest request head (431 beyond).
    pub max_header_bytes: usize,
    /// Largest request body: SDP offers and trickle fragments (413 beyond).
    pub max_body_bytes: usize,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: usize,
    /// A WebSocket that sends nothing (not even a pong to our ping) for this long is closed.
    pub websocket_idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_per_ip: 32,
            max_websockets: 64,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            max_requests_per_connection: 1000,
            websocket_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a connection was refused at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `max_connections`.
    Full,
    /// This address holds `max_per_ip`.
    PerIpFull,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "server_full",
            Self::PerIpFull => "address_full",
        }
    }
}

/// Open connections per address, against the limits.
#[derive(Debug, Default)]
pub struct Admission {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    refused: u64,
}

impl Admission {
    /// Admit a connection from `ip`, or say why not. Every admitted connection must be
    /// [`release`](Self::release)d exactly once.
    pub fn admit(&mut self, ip: IpAddr, limits: &ServerLimits) -> Result<(), Refusal> {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if self.total >= limits.max_connections {
            Some(Refusal::Full)
        } else if from_ip >= limits.max_per_ip {
            Some(Refusal::PerIpFull)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.refused += 1;
            return Err(r);
        }
        self.total += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// A connection from `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total
    }

    /// Connections refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_address_and_in_total_and_frees_on_release() {
        let limits = ServerLimits {
            max_connections: 5,
            max_per_ip: 3,
            ..Default::default()
        };
        let mut a = Admission::default();
        for _ in 0..3 {
            a.admit(ip("10.0.0.1"), &limits).unwrap();
        }
        assert_eq!(
            a.admit(ip("10.0.0.1"), &limits),
            Err(Refusal::PerIpFull),
            "a fourth from the same address"
        );
        a.admit(ip("10.0.0.2"), &limits).unwrap();
        a.admit(ip("10.0.0.3"), &limits).unwrap();
        assert_eq!(a.admit(ip("10.0.0.4"), &limits), Err(Refusal::Full));
        assert_eq!(a.open(), 5);
        assert_eq!(a.refused(), 2);
        a.release(ip("10.0.0.1"));
        a.admit(ip("10.0.0.4"), &limits).unwrap();
        for addr in ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
            a.release(ip(addr));
        }
        assert_eq!(a.open(), 0);
        assert!(a.per_ip.is_empty(), "no address kept once all closed");
        // A release that was never admitted changes nothing.
        a.release(ip("10.9.9.9"));
        assert_eq!(a.open(), 0);
    }
}
