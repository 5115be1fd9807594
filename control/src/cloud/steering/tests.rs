use std::collections::HashMap;

use super::*;
use edgeplane_api::{HealthReport, ObjectInfo, Registration, Rendition, Title};
use edgeplane_signing::SigningKey;

const NOW: u64 = 1_800_000_000;

fn health() -> HealthConfig {
    HealthConfig {
        interval_secs: 5,
        missed_limit: 3,
    }
}

fn signing() -> SigningConfig {
    SigningConfig {
        url_ttl_secs: 600,
        ..SigningConfig::default()
    }
}

fn title(t: &str, renditions: &[(&str, u64)], segments: u64) -> Title {
    Title {
        id: t.into(),
        renditions: renditions
            .iter()
            .map(|(r, bitrate)| Rendition {
                name: r.to_string(),
                bitrate: *bitrate,
                objects: (0..segments)
                    .map(|s| ObjectInfo {
                        id: format!("{t}-{r}-{s:04}.m4s"),
                        size: 10,
                        sha256: "0".repeat(64),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn catalog() -> Catalog {
    let r = [("240p", 400_000), ("720p", 3_000_000)];
    Catalog {
        titles: vec![title("t0001", &r, 2), title("t0002", &r, 2)],
    }
}

fn objects_of(cat: &Catalog, t: &str) -> Vec<String> {
    let title = cat.titles.iter().find(|x| x.id == t).unwrap();
    title
        .renditions
        .iter()
        .flat_map(|r| r.objects.iter().map(|o| o.id.clone()))
        .collect()
}

/// An appliance in steering at `site` with `t0001` held, serving 0 of 1 Gb/s.
fn app_at(id: &str, role: Role, site: &str, prefixes: &[&str]) -> ApplianceRecord {
    let mut a = ApplianceRecord {
        id: id.into(),
        secret: "s".into(),
        peer: None,
        registration: Some(Registration {
            role,
            site: site.into(),
            urls: vec![format!("http://{id}.example:8080")],
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            tiers: vec![],
            max_bps: 1_000_000_000,
            version: "0".into(),
        }),
        health: None,
        held: Default::default(),
        held_version: 0,
    };
    a.set_health(
        HealthReport {
            healthy: true,
            objects: objects_of(&catalog(), "t0001"),
            ..Default::default()
        },
        NOW - 1,
    );
    a
}

fn app(id: &str, role: Role, prefixes: &[&str]) -> ApplianceRecord {
    app_at(id, role, "site", prefixes)
}

fn keys() -> KeySet {
    KeySet {
        keys: vec![SigningKey {
            id: "k1".into(),
            secret: [5; 32],
            not_after: NOW + 10_000,
        }],
    }
}

/// One steering call with a fresh cache (catalog version 1).
fn run(fleet: &[ApplianceRecord], client: &str, title: &str, max: usize) -> Steering {
    run_with(
        &mut SteerCache::default(),
        fleet,
        &catalog(),
        client,
        title,
        max,
    )
}

fn run_with(
    cache: &mut SteerCache,
    fleet: &[ApplianceRecord],
    cat: &Catalog,
    client: &str,
    title: &str,
    max: usize,
) -> Steering {
    run_as(cache, fleet, cat, client, title, max, true)
}

/// [`run_with`] for a new viewer or for one already playing (`new_viewer`).
fn run_as(
    cache: &mut SteerCache,
    fleet: &[ApplianceRecord],
    cat: &Catalog,
    client: &str,
    title: &str,
    max: usize,
    new_viewer: bool,
) -> Steering {
    let h = health();
    let s = signing();
    let params = SteerParams {
        health: &h,
        signing: &s,
        max_locations: max,
        viewer_bps: 0,
        origin_base: "http://control.example/v1/origin",
        new_viewer,
    };
    steer(
        cache,
        fleet,
        cat,
        1,
        &keys(),
        &params,
        client.parse().unwrap(),
        title,
        NOW,
    )
    .unwrap()
}

fn order(s: &Steering) -> Vec<String> {
    s.locations
        .iter()
        .map(|l| match (&l.appliance, l.kind) {
            (Some(a), _) => a.clone(),
            (None, LocationKind::Origin) => "origin".into(),
            (None, _) => "?".into(),
        })
        .collect()
}

#[test]
fn embedded_then_ix_then_origin_with_one_title_token() {
    let fleet = [
        app("ix1", Role::Ix, &[]),
        app("emb1", Role::Embedded, &["198.51.100.0/22"]),
    ];
    let s = run(&fleet, "198.51.101.7", "t0001", 3);
    assert_eq!(order(&s), ["emb1", "ix1", "origin"]);
    assert_eq!(
        s.locations.iter().map(|l| l.kind).collect::<Vec<_>>(),
        [
            LocationKind::Embedded,
            LocationKind::Ix,
            LocationKind::Origin
        ]
    );
    assert_eq!(s.expires, NOW + 600);
    assert_eq!(s.id_prefix, "t0001-");
    assert!(
        s.token.starts_with("t0001-~1800000600~198.51.101.0_24~k1~"),
        "{}",
        s.token
    );
    assert_eq!(
        s.locations[0].base_url,
        format!("http://emb1.example:8080/tok/{}/", s.token)
    );
    assert_eq!(
        s.locations[2].base_url,
        format!("http://control.example/v1/origin/tok/{}/", s.token)
    );
    assert_eq!(s.locations[0].site.as_deref(), Some("site"));
    // Every object of the title, through the templates, verifies at every location.
    let client: IpAddr = "198.51.101.7".parse().unwrap();
    let ids: Vec<String> = s.renditions.iter().flat_map(|r| r.object_ids()).collect();
    assert_eq!(ids, objects_of(&catalog(), "t0001"));
    assert_eq!(
        s.renditions[1].template.as_deref(),
        Some("t0001-720p-$Number%04d$.m4s")
    );
    for id in &ids {
        let url = s.locations[1].url(id);
        let (_, rest) = url.split_once("/tok/").unwrap();
        let (token, obj) = rest.split_once('/').unwrap();
        assert_eq!(obj, id);
        assert_eq!(keys().verify_title(id, token, client, NOW), Ok(()));
        // Bound to the client's /24, and to the title.
        assert!(keys()
            .verify_title(id, token, "198.51.102.7".parse().unwrap(), NOW)
            .is_err());
        assert!(keys()
            .verify_title("t0002-240p-0000.m4s", token, client, NOW)
            .is_err());
    }
}

#[test]
fn client_outside_every_prefix_goes_to_ix() {
    let fleet = [
        app("emb1", Role::Embedded, &["198.51.100.0/24"]),
        app("ix1", Role::Ix, &[]),
    ];
    assert_eq!(
        order(&run(&fleet, "203.0.113.5", "t0001", 3)),
        ["ix1", "origin"]
    );
    // IPv4-mapped IPv6 clients match IPv4 prefixes.
    let s = run(&fleet, "::ffff:198.51.100.9", "t0001", 3);
    assert_eq!(order(&s), ["emb1", "ix1", "origin"]);
    assert!(s.token.contains("~198.51.100.0_24~"));
}

#[test]
fn longest_prefix_first() {
    let mut fleet = vec![
        app("wide", Role::Embedded, &["10.0.0.0/8"]),
        app("narrow", Role::Embedded, &["10.1.0.0/16", "192.0.2.0/24"]),
        app("mid-b", Role::Embedded, &["10.0.0.0/12"]),
        app("mid-a", Role::Embedded, &["10.0.0.0/12"]),
    ];
    let s = run(&fleet, "10.1.2.3", "t0001", 10);
    assert_eq!(order(&s)[0], "narrow");
    assert_eq!(order(&s)[3..], ["wide", "origin"]);
    // Reported prefixes win over registered ones.
    fleet[0].health.as_mut().unwrap().0.prefixes = vec!["10.1.2.0/24".parse().unwrap()];
    let s = run(&fleet, "10.1.2.3", "t0001", 10);
    assert_eq!(order(&s)[0], "wide");
    // IPv6.
    let fleet = [
        app("v6", Role::Embedded, &["2001:db8::/32"]),
        app("ix", Role::Ix, &[]),
    ];
    let s = run(&fleet, "2001:db8:7:1::5", "t0001", 3);
    assert_eq!(order(&s), ["v6", "ix", "origin"]);
    assert!(s.token.contains("~2001:db8:7::_48~"), "{}", s.token);
}

#[test]
fn exclusions() {
    let base = || {
        vec![
            app("emb", Role::Embedded, &["198.51.100.0/24"]),
            app("ix", Role::Ix, &[]),
        ]
    };
    let c = "198.51.100.1";
    // Silent past missed_limit × interval (15 s): out; exactly at the limit: in.
    let mut f = base();
    f[0].health.as_mut().unwrap().1 = NOW - 15;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["emb", "ix", "origin"]);
    f[0].health.as_mut().unwrap().1 = NOW - 16;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["ix", "origin"]);
    // Reported unhealthy.
    let mut f = base();
    f[0].health.as_mut().unwrap().0.healthy = false;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["ix", "origin"]);
    assert_eq!(
        f[0].out_reason(NOW, &health()).as_deref(),
        Some("reported unhealthy")
    );
    // Draining (healthy otherwise).
    let mut f = base();
    f[0].health.as_mut().unwrap().0.draining = true;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["ix", "origin"]);
    assert_eq!(f[0].out_reason(NOW, &health()).as_deref(), Some("draining"));
    // At its load cap, or without room for one more viewer (3 Mb/s, the top bitrate).
    let mut f = base();
    f[1].health.as_mut().unwrap().0.serving_bps = 1_000_000_000;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["emb", "origin"]);
    f[1].health.as_mut().unwrap().0.serving_bps = 997_000_001;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["emb", "origin"]);
    f[1].health.as_mut().unwrap().0.serving_bps = 997_000_000;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["emb", "ix", "origin"]);
    // Missing one object of the title.
    let mut f = base();
    f[0].held.remove("t0001-720p-0001.m4s");
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["ix", "origin"]);
    // Holding another title only.
    assert_eq!(order(&run(&base(), c, "t0002", 3)), ["origin"]);
    // Never registered, or registered but never reported.
    let mut f = base();
    f[0].registration = None;
    f[1].health = None;
    assert_eq!(order(&run(&f, c, "t0001", 3)), ["origin"]);
}

#[test]
fn max_locations_counts_the_origin() {
    let fleet = [
        app("e1", Role::Embedded, &["10.0.0.0/8"]),
        app("e2", Role::Embedded, &["10.0.0.0/16"]),
        app("ix", Role::Ix, &[]),
    ];
    assert_eq!(
        order(&run(&fleet, "10.0.0.1", "t0001", 2)),
        ["e2", "origin"]
    );
    assert_eq!(order(&run(&fleet, "10.0.0.1", "t0001", 1)), ["origin"]);
    let s = run(&fleet, "10.0.0.1", "t0001", 9);
    assert_eq!(order(&s), ["e2", "e1", "ix", "origin"]);
}

#[test]
fn unknown_title_and_no_key() {
    let h = health();
    let s = signing();
    let params = SteerParams {
        health: &h,
        signing: &s,
        max_locations: 3,
        viewer_bps: 0,
        origin_base: "http://c/v1/origin",
        new_viewer: true,
    };
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let mut cache = SteerCache::default();
    let e = steer(
        &mut cache,
        &[],
        &catalog(),
        1,
        &keys(),
        &params,
        ip,
        "nope",
        NOW,
    );
    assert_eq!(e.unwrap_err(), SteerError::UnknownTitle("nope".into()));
    let e = steer(
        &mut cache,
        &[],
        &catalog(),
        1,
        &keys(),
        &params,
        ip,
        "t0001",
        NOW + 20_000,
    );
    assert_eq!(e.unwrap_err(), SteerError::NoKey);
}

/// Rendezvous: one (title, client network) keeps its appliance; many networks spread over
/// every equally good appliance.
#[test]
fn equally_good_appliances_share_viewers() {
    let fleet: Vec<ApplianceRecord> = (0..8)
        .map(|i| app(&format!("e{i}"), Role::Embedded, &["10.0.0.0/8"]))
        .collect();
    let first = |cache: &mut SteerCache, client: &str| {
        order(&run_with(cache, &fleet, &catalog(), client, "t0001", 2))[0].clone()
    };
    let mut cache = SteerCache::default();
    let a = first(&mut cache, "10.0.7.1");
    // A few answers to the same network add little load: the same appliance.
    for host in 2..6 {
        assert_eq!(first(&mut cache, &format!("10.0.7.{host}")), a);
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut cache = SteerCache::default();
    for n in 0..800 {
        let client = format!("10.{}.{}.1", n / 256, n % 256);
        *counts.entry(first(&mut cache, &client)).or_default() += 1;
    }
    assert_eq!(counts.len(), 8, "{counts:?}");
    assert!(counts.values().all(|&c| c >= 50), "{counts:?}");
}

/// A playing viewer asking again (a content steering reload) gets the same ranking but adds no
/// load: the appliance's report counts it already. A new viewer adds its bitrate.
#[test]
fn a_playing_viewer_asking_again_adds_no_load() {
    let fleet = vec![app("e0", Role::Embedded, &["10.0.0.0/8"])];
    let mut cache = SteerCache::default();
    for _ in 0..3 {
        let s = run_as(
            &mut cache,
            &fleet,
            &catalog(),
            "10.0.7.1",
            "t0001",
            2,
            false,
        );
        assert_eq!(order(&s)[0], "e0");
    }
    assert_eq!((cache.decisions(0), cache.added_bps(0)), (0, 0));
    run_as(&mut cache, &fleet, &catalog(), "10.0.7.1", "t0001", 2, true);
    assert_eq!(cache.decisions(0), 1);
    assert!(cache.added_bps(0) > 0);
}

/// With a fleet stamp, a changed fleet is looked at again when the stamp changes (and, as
/// promised by the caller, only then); without one, at every call.
#[test]
fn a_new_fleet_stamp_brings_fleet_changes_in() {
    let mut fleet = vec![
        app("e0", Role::Embedded, &["10.0.0.0/8"]),
        app("ix0", Role::Ix, &[]),
    ];
    let first = |cache: &mut SteerCache, fleet: &[ApplianceRecord]| {
        order(&run_with(cache, fleet, &catalog(), "10.0.7.1", "t0001", 2))[0].clone()
    };
    let mut cache = SteerCache::default();
    cache.set_fleet_stamp(1);
    assert_eq!(first(&mut cache, &fleet), "e0");
    // e0 reports itself unhealthy: a new report, but the caller has not bumped the stamp yet.
    let mut h = fleet[0].health.as_ref().unwrap().0.clone();
    h.healthy = false;
    h.objects = Vec::new();
    fleet[0].set_health(h, NOW);
    // Health is read per answer; what changes is the index: e0 held nothing now.
    let held_before = first(&mut cache, &fleet);
    assert_eq!(held_before, "ix0", "in_steering is checked per answer");
    // Back to healthy with nothing held: with the old stamp the cached holdings still say
    // it holds t0001; the new stamp brings the report in.
    let mut h = fleet[0].health.as_ref().unwrap().0.clone();
    h.healthy = true;
    fleet[0].set_health(h, NOW);
    assert_eq!(
        first(&mut cache, &fleet),
        "e0",
        "the old stamp: the cache as it was"
    );
    cache.set_fleet_stamp(2);
    assert_eq!(
        first(&mut cache, &fleet),
        "ix0",
        "the new stamp: e0 holds nothing"
    );
    // Without a stamp every call compares the fleet.
    let mut cache = SteerCache::default();
    assert_eq!(first(&mut cache, &fleet), "ix0");
    fleet[0] = app("e0", Role::Embedded, &["10.0.0.0/8"]);
    assert_eq!(first(&mut cache, &fleet), "e0");
}

/// A premiere: many viewers of one title in a short time, health reports only every 5 s (and
/// the load they carry is that of 5 s ago). With the load added since each report counted, no
/// appliance goes over its cap while the fleet has room, and the load spreads.
#[test]
fn a_premiere_spreads_without_passing_any_cap() {
    let viewer_bps = 3_000_000u64; // t0001's top rendition
    let caps = [
        300_000_000u64,
        300_000_000,
        600_000_000,
        150_000_000,
        900_000_000,
        300_000_000,
    ];
    let mut fleet: Vec<ApplianceRecord> = caps
        .iter()
        .enumerate()
        .map(|(i, &cap)| {
            let mut a = app(&format!("ix{i}"), Role::Ix, &[]);
            a.registration.as_mut().unwrap().max_bps = cap;
            a
        })
        .collect();
    let room: u64 = caps.iter().map(|c| c / viewer_bps).sum();
    let mut viewers = vec![0u64; fleet.len()];
    let mut cache = SteerCache::default();
    let cat = catalog();
    let mut origin = 0u64;
    // 1,000 viewers a "second", a report from every appliance every 5 s (staggered).
    let total = room + 50;
    for v in 0..total {
        let second = v / 1000;
        for (i, a) in fleet.iter_mut().enumerate() {
            let due = (second + i as u64).is_multiple_of(5) && v.is_multiple_of(1000);
            if due {
                let mut h = a.health.as_ref().unwrap().0.clone();
                h.serving_bps = viewers[i] * viewer_bps;
                // A new report (a new allocation, as from the wire), a second later each time.
                h.objects = h.objects.clone();
                a.set_health(h, NOW - 1 + second);
            }
        }
        let client = format!("10.{}.{}.7", (v / 256) % 256, v % 256);
        let s = run_with(&mut cache, &fleet, &cat, &client, "t0001", 2);
        match s.locations[0].appliance.as_deref() {
            Some(id) => {
                let i: usize = id[2..].parse().unwrap();
                viewers[i] += 1;
                for (j, n) in viewers.iter().enumerate() {
                    assert!(
                        n * viewer_bps <= caps[j],
                        "viewer {v}: ix{j} over its cap ({n} viewers)"
                    );
                }
            }
            None => {
                origin += 1;
                // The origin only once the fleet is full.
                let used: u64 = viewers.iter().sum();
                assert_eq!(used, room, "viewer {v} sent to the origin with room left");
            }
        }
    }
    assert_eq!(origin, total - room);
    // Every appliance filled to its cap.
    for (j, n) in viewers.iter().enumerate() {
        assert_eq!(n * viewer_bps, caps[j] / viewer_bps * viewer_bps, "ix{j}");
    }
}

#[test]
fn ix_fallbacks_follow_the_site_graph() {
    let sites = vec![
        SiteConfig {
            name: "fra".into(),
            prefixes: vec!["203.0.113.0/24".parse().unwrap()],
            neighbours: [("ams".to_string(), 5), ("par".to_string(), 7)].into(),
        },
        SiteConfig {
            name: "ams".into(),
            prefixes: vec![],
            neighbours: [("lon".to_string(), 4)].into(),
        },
        SiteConfig {
            name: "par".into(),
            prefixes: vec![],
            neighbours: Default::default(),
        },
        SiteConfig {
            name: "lon".into(),
            prefixes: vec!["192.0.2.0/24".parse().unwrap()],
            neighbours: Default::default(),
        },
        SiteConfig {
            name: "syd".into(),
            prefixes: vec!["198.18.0.0/15".parse().unwrap()],
            neighbours: Default::default(),
        },
    ];
    let g = SiteGraph::new(&sites);
    assert_eq!(g.distance("fra", "lon"), Some(9));
    assert_eq!(g.distance("lon", "par"), Some(16));
    assert_eq!(g.distance("par", "par"), Some(0));
    assert_eq!(g.distance("fra", "syd"), None);
    assert_eq!(g.site_of("203.0.113.9".parse().unwrap()), Some("fra"));
    assert_eq!(g.site_of("8.8.8.8".parse().unwrap()), None);

    let mut fleet = vec![
        app_at("ix-lon", Role::Ix, "lon", &[]),
        app_at("ix-par", Role::Ix, "par", &[]),
        app_at("ix-syd", Role::Ix, "syd", &[]),
        app_at("ix-ams", Role::Ix, "ams", &[]),
        app_at("ix-fra", Role::Ix, "fra", &[]),
        // An embedded appliance at fra that lacks the title: its clients are at fra.
        app_at("emb-fra", Role::Embedded, "fra", &["100.64.0.0/10"]),
    ];
    fleet[5].held.clear();
    let steer_from = |fleet: &[ApplianceRecord], client: &str| {
        let mut cache = SteerCache::new(&sites);
        order(&run_with(
            &mut cache,
            fleet,
            &catalog(),
            client,
            "t0001",
            10,
        ))
    };
    // A client of the embedded appliance at fra: fra, ams, par, lon; never syd.
    assert_eq!(
        steer_from(&fleet, "100.64.1.1"),
        ["ix-fra", "ix-ams", "ix-par", "ix-lon", "origin"]
    );
    // A client located by the prefix map: lon first, then ams (4), fra (9), par (16).
    assert_eq!(
        steer_from(&fleet, "192.0.2.1"),
        ["ix-lon", "ix-ams", "ix-fra", "ix-par", "origin"]
    );
    // syd is connected to nothing: only its own IX.
    assert_eq!(steer_from(&fleet, "198.18.1.1"), ["ix-syd", "origin"]);
    // The nearest IX full: the next nearest.
    fleet[4].health.as_mut().unwrap().0.serving_bps = 1_000_000_000;
    assert_eq!(steer_from(&fleet, "100.64.1.1")[0], "ix-ams");
    // A client of no known site: every IX is equally near.
    assert_eq!(steer_from(&fleet, "8.8.8.8").len(), 5);
}

/// A two-hour title (4-second segments, five renditions: 9,000 objects) answers in well under
/// 64 KiB, and its templates expand to exactly the catalog's ids.
#[test]
fn a_two_hour_title_answers_under_64_kib() {
    let renditions = [
        ("240p", 400_000),
        ("360p", 800_000),
        ("480p", 1_500_000),
        ("720p", 3_000_000),
        ("1080p", 6_000_000),
    ];
    let long = title("t0042", &renditions, 7200 / 4);
    let cat = Catalog {
        titles: vec![long.clone()],
    };
    let mut a = app("ix", Role::Ix, &[]);
    a.set_health(
        HealthReport {
            healthy: true,
            objects: objects_of(&cat, "t0042"),
            ..Default::default()
        },
        NOW,
    );
    let s = run_with(
        &mut SteerCache::default(),
        &[a],
        &cat,
        "2001:db8::1",
        "t0042",
        3,
    );
    let body = serde_json::to_vec(&s).unwrap();
    assert!(body.len() < 64 * 1024, "{} bytes", body.len());
    let ids: Vec<String> = s.renditions.iter().flat_map(|r| r.object_ids()).collect();
    assert_eq!(ids.len(), 9000);
    assert_eq!(ids, objects_of(&cat, "t0042"));
}

#[test]
fn templates_or_lists() {
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rendition_template(&ids(&["a-7.ts", "a-8.ts", "a-9.ts", "a-10.ts"])),
        Some(("a-$Number$.ts".into(), 7))
    );
    assert_eq!(
        rendition_template(&ids(&["x-0998", "x-0999", "x-1000"])),
        Some(("x-$Number%04d$".into(), 998))
    );
    assert_eq!(rendition_template(&ids(&["a-1.ts", "a-3.ts"])), None);
    assert_eq!(rendition_template(&ids(&["intro.mp4", "a-2.ts"])), None);
    // Listed when no template fits; the id-prefix is then the longest common prefix.
    let t = Title {
        id: "movie".into(),
        renditions: vec![Rendition {
            name: "hd".into(),
            bitrate: 1,
            objects: ["movie_intro.mp4", "movie_main.mp4"]
                .iter()
                .map(|id| ObjectInfo {
                    id: id.to_string(),
                    size: 1,
                    sha256: "0".repeat(64),
                })
                .collect(),
        }],
    };
    let info = title_info(&t);
    assert_eq!(info.id_prefix.as_deref(), Some("movie_"));
    assert_eq!(info.renditions[0].template, None);
    assert_eq!(
        info.renditions[0].object_ids(),
        ids(&["movie_intro.mp4", "movie_main.mp4"])
    );
}
