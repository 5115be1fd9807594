//! Against real routers: BIRD 2 and GoBGP in network namespaces the tests create, peering with
//! the speaker (in the root namespace, in this process) over a veth. Needs root, `bird`/`birdc`
//! (Debian bird2) and `gobgpd`/`gobgp` (Debian gobgpd); fails, never skips, without them.

use std::net::{IpAddr, SocketAddr};

use edgeplane_bgp::{
    render_status, spawn, ImportPolicy, Mode, PeerConfig, SessionState, SpeakerConfig,
};
use edgeplane_test_support::bird::*;

const LOCAL_AS: u32 = 65001;

fn peer(ns: &Netns, name: &str, peer_as: u32) -> PeerConfig {
    let mut p = PeerConfig::new(name, IpAddr::V4(ns.ns_ip), peer_as, LOCAL_AS, ns.host_ip);
    p.hold_time = 9;
    p
}

fn speaker_cfg(peers: Vec<PeerConfig>, grace_secs: u64) -> SpeakerConfig {
    SpeakerConfig {
        peers,
        listen: None,
        grace_secs,
        connect_retry_secs: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_announce_and_withdraw_v4_and_v6() {
    require(&["bird", "birdc"]);
    let ns = Netns::new();
    let v4 = ["198.51.100.0/24", "203.0.113.0/24", "203.0.113.128/25"];
    let v6 = ["2001:db8:100::/48", "2001:db8:200::/48"];
    // BIRD waits for us to dial (we are the active side).
    // Our AS does not fit in 16 bits: AS_TRANS in the OPEN, the real one in the capability.
    let local_as = 4_200_000_001;
    let bird = Bird::start(
        &ns,
        &bird_conf(&ns, 65002, local_as, &v4, &v6, "passive on;"),
    );
    let mut p = peer(&ns, "bird", 65002);
    p.local_as = local_as;
    p.policy = ImportPolicy {
        v4_len: 8..=24,
        ..Default::default()
    };
    let speaker = spawn(speaker_cfg(vec![p], 30)).unwrap();
    let mut served = speaker.served();
    within(40, async {
        let set = wait_served(&mut served, "v4 and v6 announced", |s| s.len() == 4).await;
        let want: Vec<_> = [
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8:100::/48",
            "2001:db8:200::/48",
        ]
        .map(net)
        .into();
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            want.iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        let st = &speaker.status()[0];
        assert_eq!(st.state, SessionState::Established);
        // The /25 is received but rejected by the length policy.
        assert_eq!((st.received, st.accepted), (5, 4));
        let table = render_status(&speaker.status());
        assert!(
            table.contains("bird") && table.contains("Established"),
            "{table}"
        );

        // Withdraw one IPv4 and one IPv6 prefix.
        bird.reconfigure(&bird_conf(
            &ns,
            65002,
            local_as,
            &["198.51.100.0/24", "203.0.113.128/25"],
            &["2001:db8:100::/48"],
            "passive on;",
        ));
        let set = wait_served(&mut served, "withdrawals", |s| s.len() == 2).await;
        assert!(set.contains(&net("198.51.100.0/24")) && set.contains(&net("2001:db8:100::/48")));
        let st = &speaker.status()[0];
        assert_eq!((st.received, st.accepted), (3, 2));
        assert_eq!(st.state, SessionState::Established);
    })
    .await;
    speaker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_stopped_prefixes_kept_for_grace_then_withdrawn_passive_mode() {
    require(&["bird", "birdc"]);
    let ns = Netns::new();
    // Passive: we listen on the veth address (ephemeral port), BIRD dials us there.
    let mut p = peer(&ns, "bird", 65002);
    p.mode = Mode::Passive;
    let mut cfg = speaker_cfg(vec![p], 2);
    cfg.listen = Some(SocketAddr::new(IpAddr::V4(ns.host_ip), 0));
    let speaker = spawn(cfg).unwrap();
    let port = speaker.listen_addr().unwrap().port();
    assert_eq!(speaker.status()[0].state, SessionState::Active);
    let extra = format!("neighbor port {port};");
    let conf = bird_conf(
        &ns,
        65002,
        LOCAL_AS,
        &["198.51.100.0/24"],
        &["2001:db8:100::/48"],
        "",
    );
    // `neighbor port` must follow the neighbor line: splice it in.
    let conf = conf.replace("  hold time 9;", &format!("  {extra}\n  hold time 9;"));
    let mut bird = Bird::start(&ns, &conf);
    let mut served = speaker.served();
    within(40, async {
        wait_served(&mut served, "prefixes from BIRD", |s| s.len() == 2).await;
        bird.kill();
        wait_until("session down", || {
            speaker.status()[0].state != SessionState::Established
        })
        .await;
        // Right after the loss the prefixes are still served, in grace.
        let st = speaker.status()[0].clone();
        assert_eq!(served.borrow().len(), 2, "{st:?}");
        assert_eq!((st.accepted, st.in_grace), (0, 2));
        assert!(st.grace_remaining_secs.is_some());
        assert!(st.last_error.is_some());
        let lost_at = std::time::Instant::now();
        wait_served(&mut served, "withdrawn after grace", |s| s.is_empty()).await;
        // Grace is 2 s; allow for the 200 ms tick and scheduling, never exact.
        assert!(lost_at.elapsed() >= std::time::Duration::from_millis(1000));
        assert_eq!(speaker.status()[0].in_grace, 0);
        assert_eq!(speaker.status()[0].state, SessionState::Active);
    })
    .await;
    speaker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_and_gobgp_served_set_is_the_union() {
    require(&["bird", "birdc", "gobgpd", "gobgp"]);
    let (ns_b, ns_g) = (Netns::new(), Netns::new());
    let _bird = Bird::start(
        &ns_b,
        &bird_conf(
            &ns_b,
            65002,
            LOCAL_AS,
            &["198.51.100.0/24", "203.0.113.0/24"],
            &[],
            "passive on;",
        ),
    );
    let gobgp = Gobgp::start(&ns_g, 4_200_000_003, LOCAL_AS);
    // A 4-octet peer AS: GoBGP puts AS_TRANS in its OPEN's 16-bit field.
    let peers = vec![
        peer(&ns_b, "bird", 65002),
        peer(&ns_g, "gobgp", 4_200_000_003),
    ];
    let speaker = spawn(speaker_cfg(peers, 30)).unwrap();
    let mut served = speaker.served();
    within(50, async {
        wait_served(&mut served, "BIRD's prefixes", |s| s.len() == 2).await;
        gobgp.cli(&["global", "rib", "add", "-a", "ipv4", "203.0.113.0/24"]);
        gobgp.cli(&["global", "rib", "add", "-a", "ipv4", "100.64.0.0/22"]);
        gobgp.cli(&[
            "global",
            "rib",
            "add",
            "-a",
            "ipv6",
            "2001:db8:300::/48",
            "nexthop",
            "2001:db8::3",
        ]);
        let set = wait_served(&mut served, "union of BIRD and GoBGP", |s| s.len() == 4).await;
        for p in [
            "198.51.100.0/24",
            "203.0.113.0/24",
            "100.64.0.0/22",
            "2001:db8:300::/48",
        ] {
            assert!(set.contains(&net(p)), "{p} missing from {set:?}");
        }
        let st = speaker.status();
        assert_eq!(st[1].state, SessionState::Established);
        assert_eq!(st[1].accepted, 3);
        // GoBGP withdraws the prefix BIRD also announces: still served (from BIRD).
        gobgp.cli(&["global", "rib", "del", "-a", "ipv4", "203.0.113.0/24"]);
        gobgp.cli(&["global", "rib", "del", "-a", "ipv6", "2001:db8:300::/48"]);
        let set = wait_served(&mut served, "GoBGP withdrawals", |s| s.len() == 3).await;
        assert!(set.contains(&net("203.0.113.0/24")));
        wait_until("GoBGP count", || speaker.status()[1].accepted == 1).await;
    })
    .await;
    speaker.shutdown().await;
}
