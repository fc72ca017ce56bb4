//! `castline publish rtp://…` against a loopback receiver built from rtp-types/rtcp-types (the
//! default tier of issue 6): packetization read back and decoded with ffprobe, PLI → IDR within
//! 200 ms, NACK → retransmission, malformed RTCP ignored.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use rtcp_types::{Nack, PayloadFeedback, Pli, RtcpPacketWriterExt, TransportFeedback};

struct Rtp {
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
    at: Instant,
}

fn parse(buf: &[u8]) -> Option<Rtp> {
    // RTCP (payload types 200–206 with the marker bit folded in) is not media.
    if buf.len() > 1 && (200..=206).contains(&buf[1]) {
        return None;
    }
    let p = rtp_types::RtpPacket::parse(buf).ok()?;
    // Audio (when present) is checked by its own test.
    if p.ssrc() == 2222 {
        return None;
    }
    assert_eq!(p.payload_type(), 96);
    assert_eq!(p.ssrc(), 1111);
    Some(Rtp {
        seq: p.sequence_number(),
        ts: p.timestamp(),
        marker: p.marker_bit(),
        payload: p.payload().to_vec(),
        at: Instant::now(),
    })
}

/// Whether an RTP payload starts an IDR NAL unit (single, STAP-A or FU-A start).
fn starts_idr(p: &[u8]) -> bool {
    match p[0] & 0x1f {
        5 => true,
        28 => p.len() > 1 && p[1] & 0x80 != 0 && p[1] & 0x1f == 5,
        _ => false,
    }
}

/// Annex B from RFC 6184 payloads.
fn depayload(packets: &[Rtp]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        let d = &p.payload;
        match d[0] & 0x1f {
            24 => {
                let mut i = 1;
                while i + 2 <= d.len() {
                    let n = u16::from_be_bytes([d[i], d[i + 1]]) as usize;
                    out.extend_from_slice(&[0, 0, 0, 1]);
                    out.extend_from_slice(&d[i + 2..i + 2 + n]);
                    i += 2 + n;
                }
            }
            28 => {
                if d[1] & 0x80 != 0 {
                    out.extend_from_slice(&[0, 0, 0, 1, (d[0] & 0xe0) | (d[1] & 0x1f)]);
                }
                out.extend_from_slice(&d[2..]);
            }
            _ => {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(d);
            }
        }
    }
    out
}

/// `castline publish rtp://127.0.0.1:PORT?video_pt=96&video_ssrc=1111[QUERY]` of testsrc
/// without audio, plus `args`.
fn publish_video(port: u16, query: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = castline();
    cmd.args([
        "publish",
        &format!("rtp://127.0.0.1:{port}?video_pt=96&video_ssrc=1111{query}"),
        "--source",
        "testsrc",
        "--audio",
        "none",
    ])
    .args(args);
    cmd
}

#[test]
fn h264_over_rtp_decodes_and_answers_pli_nack_and_ignores_garbage() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    let mut child = Proc(spawn_castline(&mut publish_video(
        port,
        "&mtu=600",
        &["--size", "320x240", "--keyint", "10", "--duration", "6"],
    )));
    let mut packets: Vec<Rtp> = Vec::new();
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    let mut pli_at = None;
    let mut nacked = None;
    let mut retransmitted = false;
    while t0.elapsed() < Duration::from_secs(8) {
        let Ok((n, from)) = rx.recv_from(&mut buf) else {
            if matches!(child.0.try_wait(), Ok(Some(_))) && !packets.is_empty() {
                break;
            }
            continue;
        };
        let peer = from;
        let Some(p) = parse(&buf[..n]) else { continue };
        if nacked == Some(p.seq) && packets.iter().any(|q| q.seq == p.seq) {
            retransmitted = true;
            continue;
        }
        packets.push(p);
        let elapsed = t0.elapsed();
        if pli_at.is_none() && elapsed > Duration::from_secs(3) {
            let fb = PayloadFeedback::builder_owned(Pli::builder())
                .sender_ssrc(1)
                .media_ssrc(1111);
            let mut out = vec![0u8; 64];
            let n = fb.write_into(&mut out).unwrap();
            rx.send_to(&out[..n], peer).unwrap();
            // Garbage RTCP right after: counted and ignored.
            rx.send_to(&[0x80, 201, 0xff, 0xff, 1, 2], peer).unwrap();
            pli_at = Some(Instant::now());
        }
        if nacked.is_none() && elapsed > Duration::from_secs(4) {
            let seq = packets[packets.len() - 5].seq;
            let fb = TransportFeedback::builder_owned(Nack::builder().add_rtp_sequence(seq))
                .sender_ssrc(1)
                .media_ssrc(1111);
            let mut out = vec![0u8; 64];
            let n = fb.write_into(&mut out).unwrap();
            rx.send_to(&out[..n], peer).unwrap();
            nacked = Some(seq);
        }
    }
    let status = child.0.wait().unwrap();
    assert!(status.success());
    // Sequence numbers consecutive, 90 kHz timestamps, one marker per frame.
    for w in packets.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
    }
    let frames = packets.iter().filter(|p| p.marker).count();
    assert!((170..=185).contains(&frames), "{frames} frames in 6 s");
    let marks: Vec<&Rtp> = packets.iter().filter(|p| p.marker).collect();
    for w in marks.windows(2) {
        let d = w[1].ts.wrapping_sub(w[0].ts);
        assert!((2900..=3100).contains(&d), "timestamp step {d}");
    }
    // The URL's mtu=600 bounds every datagram; keyframes needed FU-A fragments for it.
    assert!(packets.iter().all(|p| p.payload.len() + 12 <= 600));
    assert!(packets.iter().any(|p| p.payload[0] & 0x1f == 28));
    // The PLI got an IDR within 200 ms (keyint is 10 s, so no scheduled one).
    let pli = pli_at.expect("PLI sent");
    let idr = packets
        .iter()
        .find(|p| p.at > pli && starts_idr(&p.payload))
        .expect("an IDR after the PLI");
    let delay = idr.at.duration_since(pli);
    assert!(
        delay <= Duration::from_millis(200),
        "IDR {delay:?} after the PLI"
    );
    assert!(retransmitted, "NACKed packet not retransmitted");
    // What arrived decodes.
    let dir = tmpdir("rtp-basic");
    let file = dir.join("rx.h264");
    std::fs::write(&file, depayload(&packets)).unwrap();
    let p = probe(&file);
    assert_eq!((p.codec.as_str(), p.width, p.height), ("h264", 320, 240));
    let (_, errors) = decode(&file, "gray");
    assert!(errors.is_empty(), "{errors}");
}

/// The receiver's port closes mid-stream (ICMP port unreachable) and opens again: castline
/// pauses, probes with sender reports on the reconnect backoff, and resumes at a keyframe.
#[test]
fn receiver_restart_on_the_same_port_resumes_at_a_keyframe() {
    let mut rx = Some(UdpSocket::bind("127.0.0.1:0").unwrap());
    let port = rx.as_ref().unwrap().local_addr().unwrap().port();
    let child = spawn_castline(&mut publish_video(
        port,
        "",
        &[
            "--size",
            "320x240",
            "--keyint",
            "30",
            "--duration",
            "9",
            "--stats",
            "json",
            "--reconnect-delay",
            "0.5",
        ],
    ));
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut reopened_at = None;
    while t0.elapsed() < Duration::from_secs(11) {
        let elapsed = t0.elapsed();
        if rx.is_some() && reopened_at.is_none() && elapsed > Duration::from_secs(2) {
            rx = None; // closed: castline's next datagrams draw ICMP port unreachable
        }
        if rx.is_none() && elapsed > Duration::from_secs(4) {
            let s = UdpSocket::bind(("127.0.0.1", port)).expect("rebind the receiver port");
            s.set_read_timeout(Some(ms(100))).unwrap();
            rx = Some(s);
            reopened_at = Some(Instant::now());
        }
        let Some(sock) = &rx else {
            std::thread::sleep(ms(20));
            continue;
        };
        sock.set_read_timeout(Some(ms(100))).unwrap();
        let Ok(n) = sock.recv(&mut buf) else {
            if elapsed > Duration::from_secs(10) {
                break;
            }
            continue;
        };
        if let Some(p) = parse(&buf[..n]) {
            match reopened_at {
                None => before.push(p),
                Some(_) => after.push(p),
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(before.len() > 30, "{} packets before", before.len());
    let reopened = reopened_at.expect("receiver reopened");
    let first = after
        .first()
        .expect("no packets after the receiver came back");
    assert!(
        first.at.duration_since(reopened) < Duration::from_secs(3),
        "resumed {:?} after the port reopened",
        first.at.duration_since(reopened)
    );
    // Resumed at a keyframe (SPS/PPS STAP-A, then the IDR of the same picture), although the
    // keyframe interval is 30 s.
    assert_eq!(
        first.payload[0] & 0x1f,
        24,
        "first packet is not the parameter sets"
    );
    assert!(after
        .iter()
        .take_while(|p| p.ts == first.ts)
        .any(|p| starts_idr(&p.payload)));
    let seconds_after = after.iter().filter(|p| p.marker).count();
    assert!(
        seconds_after > 60,
        "{seconds_after} frames after the restart"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("reconnecting") && l.contains("connection_lost")),
        "{err}"
    );
    assert!(err.contains("reconnected"), "{err}");
    let stats = json_stats(&err);
    assert!(
        stats
            .iter()
            .any(|s| s["outputs"][0]["state"] == "reconnecting"),
        "no stats line while reconnecting"
    );
    assert_eq!(stats.last().unwrap()["outputs"][0]["reconnects"], 1);
    // The frames that arrived after the restart decode on their own.
    let dir = tmpdir("rtp-restart");
    let file = dir.join("after.h264");
    std::fs::write(&file, depayload(&after)).unwrap();
    let (_, errors) = decode(&file, "gray");
    assert!(errors.is_empty(), "{errors}");
}

/// A receiver that never comes back: castline gives up after the configured tries, exit 1.
#[test]
fn receiver_gone_for_good_gives_up_after_the_tries() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    let child = spawn_castline(&mut publish_video(
        port,
        "",
        &[
            "--duration",
            "20",
            "--reconnect-delay",
            "0.2",
            "--reconnect-multiplier",
            "1",
            "--reconnect-tries",
            "3",
        ],
    ));
    std::thread::sleep(Duration::from_secs(2));
    drop(rx);
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        err.contains("gave up on") && err.contains("after 3 reconnection attempts"),
        "{err}"
    );
}

/// A UDP port that is free together with the next one (ffmpeg's SDP demuxer binds RTCP there).
fn free_udp_pair() -> u16 {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port.is_multiple_of(2) && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// ffmpeg's SDP demuxer, a receiver castline shares no code with: it reads the H.264 RTP
/// stream, takes the RTCP sender reports on the same port, and ends its input on castline's
/// closing RTCP BYE, so the file it writes is finalized and holds every frame.
#[test]
fn ffmpeg_reads_the_stream_through_an_sdp_file_and_ends_on_bye() {
    let dir = tmpdir("rtp-sdp");
    let port = free_udp_pair();
    let sdp = dir.join("castline.sdp");
    std::fs::write(
        &sdp,
        format!(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=castline\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 packetization-mode=1\r\na=rtcp-mux\r\n"
        ),
    )
    .unwrap();
    let file = dir.join("rx.mkv");
    let mut ffmpeg = Proc(
        std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error"])
            .args([
                "-protocol_whitelist",
                "file,udp,rtp",
                "-buffer_size",
                "4000000",
            ])
            .arg("-i")
            .arg(&sdp)
            .args(["-c", "copy", "-y"])
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Publish only once ffmpeg holds the port (else castline's start check gets a refusal).
    let t0 = Instant::now();
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ffmpeg never bound {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(&mut publish_video(
        port,
        "",
        &[
            "--size",
            "320x240",
            "--keyint",
            "2",
            "--duration",
            "5",
            "--mtu",
            "900",
        ],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    // No signal: the BYE alone ends ffmpeg's input.
    wait_proc(&mut ffmpeg, Duration::from_secs(15));
    let status = ffmpeg.0.try_wait().unwrap();
    let mut log = String::new();
    if let Some(mut e) = ffmpeg.0.stderr.take() {
        use std::io::Read;
        if status.is_some() {
            let _ = e.read_to_string(&mut log);
        }
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "ffmpeg did not end on the BYE: {status:?} {log}"
    );
    let p = probe(&file);
    assert_eq!((p.codec.as_str(), p.width, p.height), ("h264", 320, 240));
    assert!(
        (147..=150).contains(&p.frames),
        "{} of 150 frames",
        p.frames
    );
    assert!((4.8..=5.2).contains(&p.duration), "duration {}", p.duration);
    let (_, errors) = decode(&file, "gray");
    assert!(errors.is_empty(), "{errors}");
}

/// `castline publish --session -` with system audio from `pulse`, the JSON written to its stdin.
fn publish_session(pulse: &Pulse, session: &str, args: &[&str]) -> std::process::Child {
    use std::io::Write;
    let mut cmd = castline();
    pulse.env(&mut cmd);
    cmd.args([
        "publish",
        "--session",
        "-",
        "--source",
        "testsrc",
        "--audio",
        "system",
    ])
    .args(args)
    .stdin(std::process::Stdio::piped());
    let mut child = spawn_castline(&mut cmd);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(session.as_bytes())
        .unwrap();
    child
}

#[test]
fn session_json_from_stdin_carries_opus_with_sender_reports_and_receiver_reports_reach_the_stats() {
    let pulse = Pulse::start("rtp-audio");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    let session = format!(
        r#"{{"rtp":{{"ip":"127.0.0.1","port":{port}}},"video":{{"payload_type":96,"ssrc":1111}},"audio":{{"payload_type":100,"ssrc":2222}}}}"#
    );
    let mut child = publish_session(
        &pulse,
        &session,
        &["--size", "320x240", "--duration", "5", "--stats", "json"],
    );
    let mut audio_ts = Vec::new();
    // Per SSRC: RTP packets so far and the last one's timestamp.
    let mut sent: std::collections::HashMap<u32, (u32, u32)> = Default::default();
    let mut srs = Vec::new();
    let mut byes = Vec::new();
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    let mut reported = false;
    while t0.elapsed() < Duration::from_secs(7) {
        let Ok((n, from)) = rx.recv_from(&mut buf) else {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            continue;
        };
        if (200..=206).contains(&buf[1]) {
            for packet in rtcp_types::Compound::parse(&buf[..n]).unwrap() {
                match packet.unwrap() {
                    rtcp_types::Packet::Sr(sr) => srs.push((
                        sr.ssrc(),
                        sr.ntp_timestamp(),
                        sr.rtp_timestamp(),
                        sr.packet_count(),
                        sent.get(&sr.ssrc()).copied(),
                        Instant::now(),
                    )),
                    rtcp_types::Packet::Bye(bye) => byes.extend(bye.ssrcs()),
                    other => panic!("unexpected RTCP {other:?}"),
                }
            }
            continue;
        }
        // The default MTU bounds every datagram.
        assert!(n <= 1200, "{n}-byte datagram");
        let p = rtp_types::RtpPacket::parse(&buf[..n]).unwrap();
        let e = sent.entry(p.ssrc()).or_default();
        *e = (e.0 + 1, p.timestamp());
        if p.ssrc() == 2222 {
            assert_eq!(p.payload_type(), 100);
            audio_ts.push(p.timestamp());
        }
        let last_sr = srs.iter().rev().find(|s| s.0 == 1111).map(|s| (s.1, s.5));
        let held = last_sr.map(|(_, at)| at.elapsed());
        if !reported && t0.elapsed() > Duration::from_secs(2) && held > Some(ms(400)) {
            // A receiver report: 25 % lost, jitter 900 (10 ms at 90 kHz), and an SR echo whose
            // delay since that SR is 50 ms short of how long we held it: as if the network
            // took 50 ms for the round trip.
            let (ntp, _) = last_sr.unwrap();
            let dlsr = (held.unwrap() - ms(50)).as_secs_f64() * 65536.0;
            let rr = rtcp_types::ReceiverReport::builder(7).add_report_block(
                rtcp_types::ReportBlock::builder(1111)
                    .fraction_lost(64)
                    .interarrival_jitter(900)
                    .last_sender_report_timestamp((ntp >> 16) as u32)
                    .delay_since_last_sender_report_timestamp(dlsr as u32),
            );
            let mut out = vec![0u8; 64];
            let n = rr.write_into(&mut out).unwrap();
            rx.send_to(&out[..n], from).unwrap();
            reported = true;
        }
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // Opus: 20 ms packets, 960 ticks of the 48 kHz clock apart.
    assert!(audio_ts.len() > 150, "{} audio packets", audio_ts.len());
    for w in audio_ts.windows(2) {
        assert_eq!(w[1].wrapping_sub(w[0]), 960);
    }
    // Sender reports: video and audio in one compound with the same NTP time, packet counts
    // matching what arrived, and each RTP timestamp mapping the last packet's capture time to
    // shortly before the report (what a receiver needs to line audio up with video).
    let video_srs: Vec<_> = srs.iter().filter(|s| s.0 == 1111).collect();
    let audio_srs: Vec<_> = srs.iter().filter(|s| s.0 == 2222).collect();
    assert!(video_srs.len() >= 4, "{srs:?}");
    assert_eq!(video_srs.len(), audio_srs.len(), "{srs:?}");
    for (v, a) in video_srs.iter().zip(&audio_srs) {
        assert_eq!(v.1, a.1, "one NTP time per compound");
        for (sr, rate) in [(v, 90_000.0), (a, 48_000.0)] {
            let Some((count, last_ts)) = sr.4 else {
                continue;
            };
            assert_eq!(sr.3, count, "packet count in {sr:?}");
            let lag = sr.2.wrapping_sub(last_ts) as i32 as f64 / rate;
            assert!(
                (-0.01..0.4).contains(&lag),
                "last packet {lag} s before {sr:?}"
            );
        }
    }
    for w in video_srs.windows(2) {
        let ntp_step = (w[1].1 - w[0].1) as f64 / 2f64.powi(32);
        let rtp_step = w[1].2.wrapping_sub(w[0].2) as f64 / 90_000.0;
        assert!(
            (ntp_step - rtp_step).abs() < 0.002,
            "{ntp_step} vs {rtp_step}"
        );
    }
    byes.sort();
    assert_eq!(byes, [1111, 2222], "BYE for both streams on exit");
    let stats = json_stats(&err);
    let rtcp = stats
        .iter()
        .rev()
        .find_map(|s| s["outputs"][0]["rtcp"].as_object().cloned())
        .expect("rtcp stats");
    assert_eq!(rtcp["loss"].as_f64(), Some(0.25), "{rtcp:?}");
    assert!(
        (rtcp["jitter_ms"].as_f64().unwrap() - 10.0).abs() < 0.01,
        "{rtcp:?}"
    );
    // RTT = now − LSR − DLSR: the 50 ms we claimed, plus up to a packet interval until castline
    // reads it (without the DLSR it would be the ≥ 400 ms we held the SR).
    let rtt = rtcp["rtt_ms"].as_f64().unwrap();
    assert!((45.0..=200.0).contains(&rtt), "rtt {rtt} ms");
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn closed_port_and_malformed_targets_are_clear_errors() {
    // Nothing listens: the ICMP port unreachable for the first RTCP packet fails the start.
    let port = free_port();
    let out = run(castline().args([
        "publish",
        &format!("rtp://127.0.0.1:{port}?video_pt=96&video_ssrc=1"),
        "--source",
        "testsrc",
        "--audio",
        "none",
        "--duration",
        "3",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );
    for bad in [
        "rtp://127.0.0.1:5004",
        "rtp://127.0.0.1:5004?video_pt=300&video_ssrc=1",
        "rtp://nohost:5004?video_pt=96&video_ssrc=1",
    ] {
        let out = run(castline().args(["publish", bad, "--audio", "none"]));
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    for args in [
        &[
            "publish",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1&mtu=100",
        ][..],
        &[
            "publish",
            "rtp://127.0.0.1:5004?video_pt=96&video_ssrc=1",
            "--mtu",
            "10000",
        ],
        &["publish", "http://127.0.0.1:5004/whip", "--mtu", "1000"],
    ] {
        let out = run(castline().args(args).args(["--audio", "none"]));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("mtu"), "{}", stderr(&out));
    }
    let dir = tmpdir("rtp-bad-json");
    let f = dir.join("s.json");
    std::fs::write(&f, "{\"rtp\":{\"ip\":\"127.0.0.1\"}}").unwrap();
    let out = run(castline()
        .args(["publish", "--session"])
        .arg(&f)
        .args(["--audio", "none"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("rtp.port"), "{}", stderr(&out));
}

/// Interop tier: a real mediasoup router with a plain-RTP ingest transport
/// (../shared/interop/mediasoup; skipped with a message when absent).
#[test]
fn publish_into_mediasoup_plain_transport() {
    let interop =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/interop/mediasoup");
    if !interop.join("ingest-server.js").exists() {
        eprintln!("skipped: ../shared/interop not found (mediasoup interop tier)");
        return;
    }
    use std::io::BufRead;
    let setup = std::process::Command::new("bash")
        .arg(interop.join("setup.sh"))
        .output()
        .expect("mediasoup setup");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let dir = String::from_utf8_lossy(&setup.stdout).trim().to_string();
    let tmp = tmpdir("rtp-mediasoup");
    let dump = tmp.join("dump.h264");
    let mut server = std::process::Command::new("node")
        .env("NODE_PATH", format!("{dir}/node_modules"))
        .arg(interop.join("ingest-server.js"))
        .args(["--seconds", "15", "--keyframe-at", "5,10", "--dump-h264"])
        .arg(&dump)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let ready: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready", "{ready}");
    let session = serde_json::json!({
        "rtp": ready["rtp"], "video": ready["video"], "audio": ready["audio"],
    });
    let pulse = Pulse::start("rtp-mediasoup");
    let _tone = pulse.tone(440, "toneA", "speakers");
    let castline = publish_session(
        &pulse,
        &session.to_string(),
        &["--size", "640x360", "--keyint", "30", "--duration", "13"],
    );
    let mut events = Vec::new();
    for line in lines.map_while(Result::ok) {
        eprintln!("mediasoup: {line}");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            let done = v["event"] == "done";
            events.push(v);
            if done {
                break;
            }
        }
    }
    let _ = server.wait();
    let out = castline.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stats: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "stats").collect();
    let last = stats.last().expect("stats from mediasoup");
    assert!(last["video"]["score"].as_f64().unwrap() >= 9.0, "{last}");
    let (p1, p2) = (
        stats[stats.len() / 2]["video"]["packets"].as_u64().unwrap(),
        last["video"]["packets"].as_u64().unwrap(),
    );
    assert!(p2 > p1 && p1 > 0, "video packets {p1} → {p2}");
    assert!(last["audio"]["packets"].as_u64().unwrap() > 100, "{last}");
    // Each keyframe request answered by an IDR within 200 ms (keyint is 30 s).
    let received: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "keyframe_received")
        .collect();
    assert!(received.len() >= 2, "{events:?}");
    for r in &received {
        assert!(r["after_ms"].as_f64().unwrap() <= 200.0, "{r}");
    }
    let p = probe(&dump);
    assert_eq!((p.codec.as_str(), p.width, p.height), ("h264", 640, 360));
    assert!(p.frames >= 330, "{} frames decoded", p.frames);
}
