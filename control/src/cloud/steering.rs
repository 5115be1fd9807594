//! Steering: for (client, title), where the player should fetch from, best first, each URL
//! signed. Pure: the fleet, catalog, keys and time come in; the origin's presigned URLs come from
//! a closure (the caller presigns them beforehand, since that is asynchronous).
//!
//! The ranking:
//! 1. **Embedded** appliances whose served prefixes contain the client (longest matching prefix
//!    first), that are in steering (registered, reported within the silence limit, healthy),
//!    hold every object of the title (per their last health report), and are under their load
//!    cap (`serving_bps < max_bps`).
//! 2. **IX** appliances that are in steering, hold the title and are under their cap.
//! 3. The **origin**, always, last.
//!
//! Within a group, ties go to the less loaded appliance (`serving_bps / max_bps`), then the
//! smaller id. The answer holds at most `max_locations` locations, the origin included.

use std::cmp::Ordering;
use std::net::IpAddr;

use edgeplane_signing::{client_prefix, sign, KeySet};

use crate::cloud::config::{HealthConfig, SigningConfig};
use crate::cloud::fleet::ApplianceRecord;
use edgeplane_api::{Catalog, Location, LocationKind, Role, SteeredObject, Steering, Title};

/// The knobs steering needs.
#[derive(Clone, Debug)]
pub struct SteerParams<'a> {
    /// Health rules (silence limit).
    pub health: &'a HealthConfig,
    /// URL lifetime and client prefix lengths.
    pub signing: &'a SigningConfig,
    /// Most locations, origin included (at least 1).
    pub max_locations: usize,
}

/// Why steering could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SteerError {
    /// The catalog has no such title.
    #[error("unknown title {0:?}")]
    UnknownTitle(String),
    /// No signing key is valid now (cannot happen with rotation running).
    #[error("no valid signing key")]
    NoKey,
}

/// Unmaps `::ffff:a.b.c.d` so IPv4 clients on dual-stack sockets match IPv4 prefixes.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The title's object ids, every rendition.
fn title_objects(title: &Title) -> impl Iterator<Item = &str> {
    title
        .renditions
        .iter()
        .flat_map(|r| r.objects.iter().map(|o| o.id.as_str()))
}

/// Load ratio for tie-breaking; a cap of 0 sorts as fully loaded.
fn load_ratio(a: &ApplianceRecord) -> f64 {
    let (serving, cap) = a.load();
    if cap == 0 {
        f64::INFINITY
    } else {
        serving as f64 / cap as f64
    }
}

/// The appliances steering would use for `client` and `title`, best first (origin excluded),
/// with their kind. Not truncated.
pub fn rank_appliances<'a>(
    fleet: &'a [ApplianceRecord],
    title: &Title,
    client: IpAddr,
    now: u64,
    health: &HealthConfig,
) -> Vec<(&'a ApplianceRecord, LocationKind)> {
    let client = canonical(client);
    let usable = |a: &ApplianceRecord| {
        a.in_steering(now, health) && a.under_cap() && a.holds(title_objects(title))
    };
    let mut embedded: Vec<(u8, &ApplianceRecord)> = Vec::new();
    let mut ix: Vec<&ApplianceRecord> = Vec::new();
    for a in fleet {
        let Some(reg) = &a.registration else { continue };
        if !usable(a) || a.base_url().is_none() {
            continue;
        }
        match reg.role {
            Role::Embedded => {
                let longest = a
                    .prefixes()
                    .iter()
                    .filter(|p| p.contains(&client))
                    .map(|p| p.prefix_len())
                    .max();
                if let Some(len) = longest {
                    embedded.push((len, a));
                }
            }
            Role::Ix => ix.push(a),
        }
    }
    let by_load = |x: &ApplianceRecord, y: &ApplianceRecord| {
        load_ratio(x)
            .partial_cmp(&load_ratio(y))
            .unwrap_or(Ordering::Equal)
            .then_with(|| x.id.cmp(&y.id))
    };
    embedded.sort_by(|(lx, x), (ly, y)| ly.cmp(lx).then_with(|| by_load(x, y)));
    ix.sort_by(|x, y| by_load(x, y));
    embedded
        .into_iter()
        .map(|(_, a)| (a, LocationKind::Embedded))
        .chain(ix.into_iter().map(|a| (a, LocationKind::Ix)))
        .collect()
}

/// The steering answer. `origin_url(object id)` gives the origin's presigned URL.
#[allow(clippy::too_many_arguments)]
pub fn steer(
    fleet: &[ApplianceRecord],
    catalog: &Catalog,
    keys: &KeySet,
    params: &SteerParams<'_>,
    client: IpAddr,
    title_id: &str,
    now: u64,
    origin_url: &dyn Fn(&str) -> String,
) -> Result<Steering, SteerError> {
    let title = catalog
        .titles
        .iter()
        .find(|t| t.id == title_id)
        .ok_or_else(|| SteerError::UnknownTitle(title_id.to_owned()))?;
    let key = keys.signing_key(now).ok_or(SteerError::NoKey)?;
    let mut ranked = rank_appliances(fleet, title, client, now, params.health);
    ranked.truncate(params.max_locations.max(1) - 1);
    let expires = now + params.signing.url_ttl_secs;
    let prefix = client_prefix(
        canonical(client),
        params.signing.v4_prefix_len,
        params.signing.v6_prefix_len,
    );
    let mut locations: Vec<Location> = ranked
        .iter()
        .map(|(a, kind)| Location {
            kind: *kind,
            appliance: Some(a.id.clone()),
        })
        .collect();
    locations.push(Location {
        kind: LocationKind::Origin,
        appliance: None,
    });
    let mut objects = Vec::new();
    for rendition in &title.renditions {
        for obj in &rendition.objects {
            let mut urls: Vec<String> = ranked
                .iter()
                .map(|(a, _)| {
                    // rank_appliances keeps only appliances with a base URL.
                    let base = a.base_url().unwrap_or_default();
                    format!("{base}/{}?{}", obj.id, sign(key, &obj.id, expires, prefix))
                })
                .collect();
            urls.push(origin_url(&obj.id));
            objects.push(SteeredObject {
                object: obj.clone(),
                rendition: rendition.name.clone(),
                urls,
            });
        }
    }
    Ok(Steering {
        title: title.id.clone(),
        client,
        locations,
        expires,
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_api::{HealthReport, ObjectInfo, Registration, Rendition};
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

    fn catalog() -> Catalog {
        let title = |t: &str| Title {
            id: t.into(),
            renditions: ["240p", "720p"]
                .iter()
                .map(|r| Rendition {
                    name: r.to_string(),
                    bitrate: 1,
                    objects: (0..2)
                        .map(|s| ObjectInfo {
                            id: format!("{t}-{r}-{s:04}.m4s"),
                            size: 10,
                            sha256: "0".repeat(64),
                        })
                        .collect(),
                })
                .collect(),
        };
        Catalog {
            titles: vec![title("t0001"), title("t0002")],
        }
    }

    fn objects_of(t: &str) -> Vec<String> {
        let cat = catalog();
        let title = cat.titles.iter().find(|x| x.id == t).unwrap();
        title_objects(title).map(String::from).collect()
    }

    /// An appliance in steering with `t0001` held, serving 0 of 1 Gb/s.
    fn app(id: &str, role: Role, prefixes: &[&str]) -> ApplianceRecord {
        let mut a = ApplianceRecord {
            id: id.into(),
            secret: "s".into(),
            peer: None,
            registration: Some(Registration {
                role,
                site: "site".into(),
                urls: vec![format!("http://{id}.example:8080")],
                prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
                tiers: vec![],
                max_bps: 1_000_000_000,
                version: "0".into(),
            }),
            health: None,
            held: Default::default(),
        };
        a.set_health(
            HealthReport {
                healthy: true,
                objects: objects_of("t0001"),
                ..Default::default()
            },
            NOW - 1,
        );
        a
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

    fn run(fleet: &[ApplianceRecord], client: &str, title: &str, max: usize) -> Steering {
        let h = health();
        let s = signing();
        let params = SteerParams {
            health: &h,
            signing: &s,
            max_locations: max,
        };
        steer(
            fleet,
            &catalog(),
            &keys(),
            &params,
            client.parse().unwrap(),
            title,
            NOW,
            &|o| format!("http://origin/bucket/{o}?presigned"),
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
    fn embedded_then_ix_then_origin_with_signed_urls() {
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
        assert_eq!(s.objects.len(), 4);
        let client: IpAddr = "198.51.101.7".parse().unwrap();
        for o in &s.objects {
            assert_eq!(o.urls.len(), 3);
            for (i, base) in ["http://emb1.example:8080", "http://ix1.example:8080"]
                .iter()
                .enumerate()
            {
                let (path, query) = o.urls[i].split_once('?').unwrap();
                assert_eq!(path, format!("{base}/{}", o.object.id));
                assert!(query.contains("pfx=198.51.101.0/24"), "{query}");
                assert_eq!(
                    keys().verify(&o.object.id, Some(query), client, NOW),
                    Ok(())
                );
                // Bound to the client's /24.
                assert!(keys()
                    .verify(
                        &o.object.id,
                        Some(query),
                        "198.51.102.7".parse().unwrap(),
                        NOW
                    )
                    .is_err());
            }
            assert_eq!(
                o.urls[2],
                format!("http://origin/bucket/{}?presigned", o.object.id)
            );
        }
        assert_eq!(s.objects[0].rendition, "240p");
        assert_eq!(s.objects[2].rendition, "720p");
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
        assert!(s.objects[0].urls[0].contains("pfx=198.51.100.0/24"));
    }

    #[test]
    fn longest_prefix_first_then_least_loaded() {
        let mut fleet = vec![
            app("wide", Role::Embedded, &["10.0.0.0/8"]),
            app("narrow", Role::Embedded, &["10.1.0.0/16", "192.0.2.0/24"]),
            app("mid-b", Role::Embedded, &["10.0.0.0/12"]),
            app("mid-a", Role::Embedded, &["10.0.0.0/12"]),
        ];
        let s = run(&fleet, "10.1.2.3", "t0001", 10);
        assert_eq!(order(&s), ["narrow", "mid-a", "mid-b", "wide", "origin"]);
        // Load breaks ties within the same prefix length.
        fleet[3].health.as_mut().unwrap().0.serving_bps = 500_000_000;
        let s = run(&fleet, "10.1.2.3", "t0001", 10);
        assert_eq!(order(&s), ["narrow", "mid-b", "mid-a", "wide", "origin"]);
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
        assert!(s.objects[0].urls[0].contains("pfx=2001:db8:7::/48"));
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
        // At or over its load cap.
        let mut f = base();
        f[1].health.as_mut().unwrap().0.serving_bps = 1_000_000_000;
        assert_eq!(order(&run(&f, c, "t0001", 3)), ["emb", "origin"]);
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
        assert_eq!(
            f[1].out_reason(NOW, &health()).as_deref(),
            Some("no health report yet")
        );
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
        assert!(s.objects.iter().all(|o| o.urls.len() == 4));
    }

    #[test]
    fn unknown_title_and_no_key() {
        let h = health();
        let s = signing();
        let params = SteerParams {
            health: &h,
            signing: &s,
            max_locations: 3,
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let e = steer(&[], &catalog(), &keys(), &params, ip, "nope", NOW, &|o| {
            o.into()
        });
        assert_eq!(e.unwrap_err(), SteerError::UnknownTitle("nope".into()));
        let e = steer(
            &[],
            &catalog(),
            &keys(),
            &params,
            ip,
            "t0001",
            NOW + 20_000,
            &|o| o.into(),
        );
        assert_eq!(e.unwrap_err(), SteerError::NoKey);
    }
}
