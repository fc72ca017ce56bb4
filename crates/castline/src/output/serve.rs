//! `serve://ADDR`: the built-in viewer server. Browsers join through the viewer page's
//! WebSocket or WHEP and all share this output's packets (one encode, many viewers).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{Output, OutputSummary, Written};
use crate::encode::{EncodedPacket, MediaInfo, MediaKind};
use crate::error::OutputError;
use crate::pipeline::clock::MediaClock;
use crate::server::ViewerServer;
use crate::webrtc::{self, hub::HubThread, Hub, HubConfig};

/// Where the viewer server listens and who may watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Access token; generated at start when None.
    pub token: Option<String>,
    pub max_viewers: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            max_viewers: 32,
        }
    }
}

pub struct ServeOutput {
    hub: Hub,
    hub_thread: Option<HubThread>,
    server: Option<ViewerServer>,
    extradata: Vec<u8>,
    bytes: u64,
    packets: u64,
}

impl ServeOutput {
    pub fn start(
        opts: &ServeOptions,
        info: &MediaInfo,
        clock: MediaClock,
        keyframe: Arc<AtomicBool>,
        adapt: Option<webrtc::hub::PeerAdapt>,
    ) -> Result<Self, OutputError> {
        webrtc::init_crypto();
        let cfg = HubConfig {
            bind_ip: opts.listen.ip(),
            ice_lite: true,
            max_peers: opts.max_viewers,
            name: "serve".into(),
            adapt,
            ..HubConfig::default()
        };
        let (hub, hub_thread) =
            Hub::start(cfg, keyframe, clock).map_err(|e| OutputError::Bind {
                addr: opts.listen.to_string(),
                reason: format!("UDP: {e}"),
            })?;
        let token = opts.token.clone().unwrap_or_else(webrtc::random_token);
        let server = match ViewerServer::start(opts.listen, token, hub.clone()) {
            Ok(s) => s,
            Err(e) => {
                hub.shutdown();
                hub_thread.join();
                return Err(OutputError::Bind {
                    addr: e.addr.to_string(),
                    reason: e.reason,
                });
            }
        };
        for a in hub.local_addrs() {
            tracing::info!(media = %a, "webrtc_media_socket");
        }
        Ok(Self {
            hub,
            hub_thread: Some(hub_thread),
            server: Some(server),
            extradata: info.video.extradata.clone(),
            bytes: 0,
            packets: 0,
        })
    }
}

impl Output for ServeOutput {
    fn name(&self) -> String {
        match &self.server {
            Some(s) => format!("serve://{}", s.addr()),
            None => "serve".into(),
        }
    }

    fn write(&mut self, pkt: &EncodedPacket) -> Result<Written, OutputError> {
        let pkt = match (pkt.media, pkt.keyframe) {
            (MediaKind::Video, true) => {
                match webrtc::with_parameter_sets(&pkt.data, &self.extradata) {
                    Some(data) => Arc::new(EncodedPacket {
                        data: data.into(),
                        ..pkt.clone()
                    }),
                    None => Arc::new(pkt.clone()),
                }
            }
            _ => Arc::new(pkt.clone()),
        };
        self.bytes += pkt.data.len() as u64;
        self.packets += 1;
        self.hub.push_media(pkt).map_err(|e| OutputError::Lost {
            url: self.name(),
            reason: e.to_string(),
        })?;
        Ok(Written::Sent)
    }

    fn finish(mut self: Box<Self>, _clean: bool) -> Result<OutputSummary, OutputError> {
        let name = self.name();
        if let Some(s) = self.server.take() {
            s.stop();
        }
        self.hub.shutdown();
        if let Some(t) = self.hub_thread.take() {
            t.join();
        }
        Ok(OutputSummary {
            name,
            bytes: self.bytes,
            packets: self.packets,
            warning: None,
        })
    }

    fn endpoint(&self) -> Option<String> {
        self.server.as_ref().map(|s| s.viewer_url())
    }

    fn hub(&self) -> Option<Hub> {
        Some(self.hub.clone())
    }

    fn demand(&self) -> Option<Arc<crate::adapt::TierDemand>> {
        Some(self.hub.demand())
    }
}
