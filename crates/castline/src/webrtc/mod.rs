//! WebRTC through str0m: the peer [`hub`] shared by the viewer server (`server/`) and the WHIP
//! client (`output/whip.rs`), and the small helpers both need.

pub mod hub;

use std::net::IpAddr;
use std::sync::Once;

pub use hub::{Hub, HubConfig, HubError, PeerEvent, PeerId, PeerReport};

/// str0m needs a process-wide crypto provider (aws-lc-rs, the one backend that builds here).
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}

/// Every IPv4 address of the machine's interfaces that are up, loopback included (a peer in a
/// network namespace may only be reachable through one of them).
pub fn local_ipv4_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            if up && !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes());
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

/// A random token for viewer/publisher access: 128 bits from the kernel, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // getrandom cannot fail for 16 bytes on a booted kernel; fall back to time + pid anyway.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b[..16].copy_from_slice(&(t ^ (std::process::id() as u128) << 64).to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compare secrets in time independent of where they differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prefix a keyframe with the parameter sets when it does not carry them: a WebRTC receiver
/// joins mid-stream and never sees the container's extradata. `extradata` is Annex B (as
/// libx264 writes it with global headers).
pub fn with_parameter_sets(keyframe: &[u8], extradata: &[u8]) -> Option<Vec<u8>> {
    if extradata.is_empty() || has_sps(keyframe) {
        return None;
    }
    let mut v = Vec::with_capacity(extradata.len() + keyframe.len());
    v.extend_from_slice(extradata);
    v.extend_from_slice(keyframe);
    Some(v)
}

/// A packet as a WebRTC peer needs it: video keyframes carry the parameter sets.
pub fn packet_for_peers(
    pkt: &crate::encode::EncodedPacket,
    extradata: &[u8],
) -> std::sync::Arc<crate::encode::EncodedPacket> {
    let data = match (pkt.media, pkt.keyframe) {
        (crate::encode::MediaKind::Video, true) => with_parameter_sets(&pkt.data, extradata)
            .map(std::sync::Arc::<[u8]>::from)
            .unwrap_or_else(|| pkt.data.clone()),
        _ => pkt.data.clone(),
    };
    std::sync::Arc::new(crate::encode::EncodedPacket {
        data,
        ..pkt.clone()
    })
}

/// The SPS and PPS NAL units of an Annex-B access unit, as Annex-B (4-byte start codes); None
/// when it has no SPS.
pub fn parameter_sets(au: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for n in nal_units(au) {
        if n.first().is_some_and(|h| matches!(h & 0x1f, 7 | 8)) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(n);
        }
    }
    has_sps(au).then_some(out)
}

/// Whether an Annex-B access unit contains an SPS NAL unit.
pub fn has_sps(au: &[u8]) -> bool {
    nal_units(au).any(|n| n.first().is_some_and(|h| h & 0x1f == 7))
}

/// The NAL units of an Annex-B byte stream (start codes removed).
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let n = starts.len();
    (0..n).map(move |k| {
        let begin = starts[k];
        let mut end = if k + 1 < n {
            starts[k + 1] - 3
        } else {
            data.len()
        };
        // A four-byte start code leaves its leading zero on the previous unit.
        while end > begin && k + 1 < n && data[end - 1] == 0 {
            end -= 1;
        }
        &data[begin..end]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nal_units_split_on_three_and_four_byte_start_codes() {
        let d = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let v: Vec<&[u8]> = nal_units(&d).collect();
        assert_eq!(
            v,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
        assert!(has_sps(&d));
        assert!(!has_sps(&d[9..]));
    }

    #[test]
    fn parameter_sets_prefix_only_when_missing() {
        let extra = [0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2];
        let idr = [0, 0, 0, 1, 0x65, 9];
        let with = with_parameter_sets(&idr, &extra).unwrap();
        assert!(has_sps(&with) && with.ends_with(&idr));
        assert!(with_parameter_sets(&with, &extra).is_none());
    }

    #[test]
    fn tokens_are_random_and_compared_exactly() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(token_matches(&a, &a.clone()));
        assert!(!token_matches(&a, &b));
        assert!(!token_matches(&a, &a[..31]));
    }
}
