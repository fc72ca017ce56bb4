//! Property-based fuzzing (proptest) of everything a remote peer can send castline's WebRTC
//! side: signaling messages, SDP offers and answers, trickled candidates, and (for the ffmpeg
//! source) the H.264 byte stream. The property: no panic, a typed error or a valid result, and
//! the hub still serves afterwards.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use castline::capture::ffmpeg_process::{stream_info_of, AuAssembler};
use castline::pipeline::clock::MediaClock;
use castline::server::signaling::{parse_client_message, MessageError, MAX_MESSAGE_BYTES};
use castline::webrtc::{self, Hub, HubConfig};
use proptest::prelude::*;

const OFFER: &str = include_str!("data/chromium-offer.sdp");

fn hub() -> (Hub, castline::webrtc::hub::HubThread) {
    webrtc::init_crypto();
    Hub::start(
        HubConfig::default(),
        Arc::new(AtomicBool::new(false)),
        MediaClock::new(),
    )
    .unwrap()
}

/// Mutations of a real Chromium offer: drop, duplicate or corrupt lines, truncate, flip bytes.
fn mutated_offer() -> impl Strategy<Value = String> {
    let lines: Vec<String> = OFFER.lines().map(String::from).collect();
    let n = lines.len();
    proptest::collection::vec((0..n, 0u8..5, any::<u8>(), 0usize..200), 1..8).prop_map(
        move |edits| {
            let mut l = lines.clone();
            for (i, op, byte, pos) in edits {
                let i = i.min(l.len().saturating_sub(1));
                if l.is_empty() {
                    break;
                }
                match op {
                    0 => {
                        l.remove(i);
                    }
                    1 => {
                        let d = l[i].clone();
                        l.insert(i, d);
                    }
                    2 => {
                        let mut b = l[i].clone().into_bytes();
                        if !b.is_empty() {
                            let p = pos % b.len();
                            b[p] = byte;
                        }
                        l[i] = String::from_utf8_lossy(&b).into_owned();
                    }
                    3 => {
                        let p = pos.min(l[i].len());
                        let cut_at = (0..=p)
                            .rev()
                            .find(|&k| l[i].is_char_boundary(k))
                            .unwrap_or(0);
                        l[i].truncate(cut_at);
                    }
                    _ => l[i] = format!("a=rtpmap:{byte} H264/{pos}"),
                }
            }
            l.join("\r\n")
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn signaling_parser_never_panics(s in ".{0,300}") {
        let _ = parse_client_message(&s);
    }

    #[test]
    fn signaling_parser_handles_json_shaped_input(
        t in prop_oneof!["join", "offer", "answer", "leave", "ice_candidate", ".{0,12}"],
        k in prop_oneof!["sdp", "candidate", "sdpMid", "sdpMLineIndex", "type", ".{0,8}"],
        v in prop_oneof![Just("null".to_string()), Just("1".to_string()), "\"[^\"\\\\]{0,40}\"", Just("{}".to_string()), Just("[]".to_string())],
    ) {
        let msg = format!(r#"{{"type":"{t}","{k}":{v}}}"#);
        let _ = parse_client_message(&msg);
    }
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let s = "x".repeat(MAX_MESSAGE_BYTES + 1);
    assert!(matches!(
        parse_client_message(&s),
        Err(MessageError::TooLarge(_))
    ));
}

#[test]
fn the_real_offer_is_answered() {
    let (hub, thread) = hub();
    let (id, answer) = hub.accept_offer(OFFER, "ws").unwrap();
    assert!(
        answer.contains("m=video") && answer.contains("H264"),
        "{answer}"
    );
    assert!(answer.contains("opus"), "{answer}");
    hub.remove(id);
    hub.shutdown();
    thread.join();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_offers_get_an_answer_or_an_error_and_the_hub_survives(offer in mutated_offer()) {
        thread_local! {
            static HUB: (Hub, castline::webrtc::hub::HubThread) = hub();
        }
        HUB.with(|(hub, _)| {
            if let Ok((id, _)) = hub.accept_offer(&offer, "ws") {
                hub.remove(id);
            }
            prop_assert!(hub.is_alive());
            // A trickled candidate made from a line of the offer.
            if let Some(c) = offer.lines().find(|l| l.contains("candidate")) {
                if let Ok((id, _)) = hub.accept_offer(OFFER, "ws") {
                    let _ = hub.add_remote_candidate(id, c);
                    hub.remove(id);
                }
            }
            prop_assert!(hub.is_alive());
            Ok(())
        })?;
    }

    #[test]
    fn answers_to_our_offer_never_panic(answer in mutated_offer()) {
        thread_local! {
            static HUB: (Hub, castline::webrtc::hub::HubThread) = hub();
        }
        HUB.with(|(hub, _)| {
            let (id, _) = hub.create_offer("whip", true).unwrap();
            let _ = hub.accept_answer(id, &answer);
            hub.remove(id);
            prop_assert!(hub.is_alive());
            Ok(())
        })?;
    }

    #[test]
    fn candidates_never_panic(c in ".{0,120}", n in any::<u16>()) {
        thread_local! {
            static HUB: (Hub, castline::webrtc::hub::HubThread) = hub();
        }
        HUB.with(|(hub, _)| {
            if let Ok((id, _)) = hub.accept_offer(OFFER, "ws") {
                let _ = hub.add_remote_candidate(id, &c);
                let _ = hub.add_remote_candidate(id, &format!("candidate:1 1 udp {n} 127.0.0.1 {n} typ host {c}"));
                hub.remove(id);
            }
            prop_assert!(hub.is_alive());
            Ok(())
        })?;
    }

    #[test]
    fn annex_b_grouping_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..64), 0..32)) {
        let mut a = AuAssembler::default();
        let mut out = Vec::new();
        for c in &chunks {
            let _ = a.push(c, &mut out);
        }
        a.finish(&mut out);
        for (au, _) in &out {
            let _ = stream_info_of(au, 30, 1_000_000);
        }
    }
}
