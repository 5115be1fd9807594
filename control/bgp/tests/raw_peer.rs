//! Against a raw test peer: a TCP socket in the test speaking BGP bytes by hand, on loopback.
//! Malformed messages, max-prefix, hold timer, OPEN errors. No root needed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use edgeplane_bgp::wire::{self, build, LocalOpen};
use edgeplane_bgp::{spawn, ImportPolicy, PeerConfig, SessionState, Speaker, SpeakerConfig};
use edgeplane_test_support::bird::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PEER_AS: u32 = 65002;

/// Starts a speaker whose only (active) peer is a listener on 127.0.0.1.
async fn setup(hold_time: u16, grace_secs: u64, policy: ImportPolicy) -> (Speaker, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut p = PeerConfig::new(
        "raw",
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        PEER_AS,
        65001,
        "10.0.0.1".parse().unwrap(),
    );
    p.port = port;
    p.hold_time = hold_time;
    p.policy = policy;
    let cfg = SpeakerConfig {
        peers: vec![p],
        listen: None,
        grace_secs,
        connect_retry_secs: 1,
    };
    (spawn(cfg).unwrap(), listener)
}

struct Raw {
    s: TcpStream,
}

impl Raw {
    /// Reads one message; `None` on EOF.
    async fn read(&mut self) -> Option<Vec<u8>> {
        let mut m = vec![0u8; 19];
        if self.s.read_exact(&mut m).await.is_err() {
            return None;
        }
        let len = u16::from_be_bytes([m[16], m[17]]) as usize;
        m.resize(len, 0);
        self.s.read_exact(&mut m[19..]).await.ok()?;
        Some(m)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads until a NOTIFICATION; returns (code, subcode, data). Skips KEEPALIVEs.
    async fn notification(&mut self) -> (u8, u8, Vec<u8>) {
        loop {
            let m = self
                .read()
                .await
                .expect("connection closed before a NOTIFICATION");
            match m[18] {
                4 => continue,
                3 => return (m[19], m[20], m[21..].to_vec()),
                t => panic!("unexpected message type {t}"),
            }
        }
    }

    /// After a NOTIFICATION the speaker closes the connection.
    async fn expect_closed(&mut self) {
        while let Some(m) = self.read().await {
            assert_eq!(m[18], 4, "only KEEPALIVEs may follow, got type {}", m[18]);
        }
    }
}

/// Accepts the speaker's connection and reads its OPEN.
async fn accept(listener: &TcpListener) -> Raw {
    let (s, _) = within(20, listener.accept()).await.unwrap();
    let mut raw = Raw { s };
    let open = raw.read().await.unwrap();
    assert_eq!(open[18], 1, "first message must be OPEN");
    raw
}

fn open(asn: u32, hold_time: u16) -> Vec<u8> {
    wire::encode_open(&LocalOpen {
        asn,
        hold_time,
        router_id: "10.0.0.2".parse().unwrap(),
    })
}

/// Accepts and brings the session to Established.
async fn establish(listener: &TcpListener, hold_time: u16) -> Raw {
    let mut raw = accept(listener).await;
    raw.send(&open(PEER_AS, hold_time)).await;
    let ka = raw.read().await.unwrap();
    assert_eq!(ka[18], 4, "OPEN must be answered with KEEPALIVE");
    raw.send(&wire::encode_keepalive()).await;
    raw
}

fn attrs_with_path(path: &[u8]) -> Vec<u8> {
    [
        build::attr(0x40, 1, &[0]),
        build::attr(0x40, 2, path),
        build::attr(0x40, 3, &[10, 0, 0, 2]),
    ]
    .concat()
}

#[tokio::test]
async fn malformed_updates_get_the_right_notification_and_the_set_survives_until_grace() {
    let (speaker, listener) = setup(9, 3, ImportPolicy::default()).await;
    let mut served = speaker.served();
    let prefixes = [net("198.51.100.0/24"), net("203.0.113.0/24")];
    let good_path = [2, 1, 0, 0, 0xfd, 0xea];
    let nlri = build::nlri(&net("100.64.0.0/10"));
    let mut bad_marker = wire::encode_keepalive();
    bad_marker[0] = 0;
    let mut bad_type = wire::encode_keepalive();
    bad_type[18] = 7;
    let cases: Vec<(&str, Vec<u8>, (u8, u8))> = vec![
        (
            "AS_PATH segment type 9",
            build::update(&[], &attrs_with_path(&[9, 1, 0, 0, 0, 1]), &nlri),
            (3, 11),
        ),
        (
            "NLRI prefix length 33",
            build::update(&[], &attrs_with_path(&good_path), &[33, 1, 2, 3, 4, 5]),
            (3, 10),
        ),
        (
            "ORIGIN flagged optional",
            build::update(
                &[],
                &[
                    build::attr(0xc0, 1, &[0]),
                    build::attr(0x40, 2, &good_path),
                    build::attr(0x40, 3, &[10, 0, 0, 2]),
                ]
                .concat(),
                &nlri,
            ),
            (3, 4),
        ),
        (
            "NEXT_HOP missing",
            build::update(
                &[],
                &[build::attr(0x40, 1, &[0]), build::attr(0x40, 2, &good_path)].concat(),
                &nlri,
            ),
            (3, 3),
        ),
        (
            "attribute length past the list",
            build::update(&[], &[0x40, 1, 9, 0], &nlri),
            (3, 1),
        ),
        ("marker not all ones", bad_marker, (1, 1)),
        ("unknown message type", bad_type, (1, 3)),
    ];
    within(50, async {
        for (what, bad, want) in cases {
            let mut raw = establish(&listener, 9).await;
            raw.send(&build::announce_v4(&prefixes, PEER_AS, [127, 0, 0, 1], &[]))
                .await;
            wait_served(&mut served, "announced", |s| s.len() == 2).await;
            wait_until("established", || {
                speaker.status()[0].state == SessionState::Established
            })
            .await;
            raw.send(&bad).await;
            let (code, sub, _) = raw.notification().await;
            assert_eq!((code, sub), want, "{what}");
            raw.expect_closed().await;
            wait_until("session reset", || {
                speaker.status()[0].state != SessionState::Established
            })
            .await;
            // Set intact: the prefixes are in grace.
            assert_eq!(served.borrow().len(), 2, "{what}");
            let st = speaker.status()[0].clone();
            assert_eq!(st.in_grace, 2, "{what}: {st:?}");
            assert!(
                st.last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains(&format!("({code}/{sub})")),
                "{st:?}"
            );
        }
        // Stop answering: the grace time runs out and the prefixes are withdrawn.
        drop(listener);
        wait_served(&mut served, "withdrawn after grace", |s| s.is_empty()).await;
        // No crash: the peer task keeps redialing.
        wait_until("redialing", || {
            matches!(
                speaker.status()[0].state,
                SessionState::Connect | SessionState::Idle
            )
        })
        .await;
    })
    .await;
    speaker.shutdown().await;
}

#[tokio::test]
async fn max_prefix_sends_cease_keeps_grace_and_reconnects_after_hold_down() {
    let policy = ImportPolicy {
        max_prefixes: Some(2),
        max_prefix_restart_secs: 2,
        ..Default::default()
    };
    let (speaker, listener) = setup(9, 30, policy).await;
    let mut served = speaker.served();
    within(40, async {
        let mut raw = establish(&listener, 9).await;
        let ps = [
            net("198.51.100.0/24"),
            net("203.0.113.0/24"),
            net("100.64.0.0/10"),
        ];
        raw.send(&build::announce_v4(&ps, PEER_AS, [127, 0, 0, 1], &[]))
            .await;
        let (code, sub, data) = raw.notification().await;
        // Cease / Maximum Number of Prefixes Reached; data: AFI 1, SAFI 1, limit 2.
        assert_eq!((code, sub, data), (6, 1, vec![0, 1, 1, 0, 0, 0, 2]));
        raw.expect_closed().await;
        let down_at = Instant::now();
        wait_until("session down", || {
            speaker.status()[0].state != SessionState::Established
        })
        .await;
        let st = speaker.status()[0].clone();
        assert_eq!(st.in_grace, 2, "at most the limit goes into grace: {st:?}");
        assert_eq!(served.borrow().len(), 2);
        assert!(st
            .last_error
            .unwrap()
            .contains("Maximum Number of Prefixes"));
        // Reconnects after the idle hold-down (2 s), not the 1 s connect-retry.
        let mut raw = establish(&listener, 9).await;
        assert!(
            down_at.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            down_at.elapsed()
        );
        // The new session re-announces one prefix and sends End-of-RIB for both families:
        // the rest of the grace set goes at once, without waiting for the 30 s grace.
        raw.send(&build::announce_v4(
            &[net("100.64.0.0/10")],
            PEER_AS,
            [127, 0, 0, 1],
            &[],
        ))
        .await;
        raw.send(&build::update(&[], &[], &[])).await;
        raw.send(&build::update(&[], &build::attr(0x80, 15, &[0, 2, 1]), &[]))
            .await;
        let set = wait_served(&mut served, "End-of-RIB clears grace", |s| s.len() == 1).await;
        assert!(set.contains(&net("100.64.0.0/10")));
    })
    .await;
    speaker.shutdown().await;
}

#[tokio::test]
async fn hold_timer_expiry_and_keepalives() {
    let (speaker, listener) = setup(3, 1, ImportPolicy::default()).await;
    within(20, async {
        let mut raw = establish(&listener, 3).await;
        // Hold time 3 s: we get KEEPALIVEs every second, then Hold Timer Expired.
        let start = Instant::now();
        let mut keepalives = 0;
        let notification = loop {
            let m = raw.read().await.expect("closed without NOTIFICATION");
            match m[18] {
                4 => keepalives += 1,
                3 => break (m[19], m[20]),
                t => panic!("type {t}"),
            }
        };
        assert_eq!(notification, (4, 0));
        assert!(keepalives >= 1, "{keepalives}");
        assert!(start.elapsed() >= Duration::from_secs(2));
        raw.expect_closed().await;
    })
    .await;
    speaker.shutdown().await;
}

#[tokio::test]
async fn bad_opens_are_refused_with_open_errors() {
    let (speaker, listener) = setup(9, 1, ImportPolicy::default()).await;
    within(30, async {
        let mut raw = accept(&listener).await;
        raw.send(&open(65099, 9)).await;
        let (code, sub, data) = raw.notification().await;
        assert_eq!((code, sub, data), (2, 2, 65099u16.to_be_bytes().to_vec()));
        raw.expect_closed().await;
        let mut raw = accept(&listener).await;
        raw.send(&open(PEER_AS, 2)).await;
        let (code, sub, _) = raw.notification().await;
        assert_eq!((code, sub), (2, 6), "Unacceptable Hold Time");
        raw.expect_closed().await;
        // And the shutdown path: Cease / Administrative Shutdown on a live session.
        let mut raw = establish(&listener, 9).await;
        wait_until("established", || {
            speaker.status()[0].state == SessionState::Established
        })
        .await;
        let stop = tokio::spawn(speaker.shutdown());
        assert_eq!(raw.notification().await, (6, 2, vec![]));
        stop.await.unwrap();
    })
    .await;
}
