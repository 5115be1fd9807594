//! Speaker and peer configuration, with serde (TOML-friendly, unknown fields denied) and
//! validation that names the offending field.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Who opens the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// We dial the peer at `address:port`, retrying with backoff.
    #[default]
    Active,
    /// The peer dials us on [`SpeakerConfig::listen`]; we never dial.
    Passive,
}

/// Import policy applied to every prefix a peer announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportPolicy {
    /// Most prefixes accepted from this peer (after the other filters). When an UPDATE would
    /// take the peer past it, the session is closed with NOTIFICATION Cease / Maximum Number of
    /// Prefixes Reached (RFC 4486 subcode 1), the peer's prefixes go into grace handling, and the
    /// peer is not reconnected (nor accepted) for `max_prefix_restart_secs`.
    pub max_prefixes: Option<u32>,
    /// Idle hold-down after a max-prefix teardown, in seconds.
    pub max_prefix_restart_secs: u64,
    /// Accepted IPv4 prefix lengths.
    pub v4_len: RangeInclusive<u8>,
    /// Accepted IPv6 prefix lengths.
    pub v6_len: RangeInclusive<u8>,
    /// When set, accept only routes carrying at least one of these standard communities
    /// (`[asn, value]` pairs).
    pub communities: Option<Vec<(u16, u16)>>,
}

impl Default for ImportPolicy {
    fn default() -> Self {
        Self {
            max_prefixes: None,
            max_prefix_restart_secs: 300,
            v4_len: 0..=32,
            v6_len: 0..=128,
            communities: None,
        }
    }
}

impl ImportPolicy {
    /// Whether a prefix announced with these communities is accepted (the max-prefix limit is
    /// applied separately, on the count of accepted prefixes).
    pub fn accepts(&self, prefix: &IpNet, communities: &[(u16, u16)]) -> bool {
        let len_ok = match prefix {
            IpNet::V4(p) => self.v4_len.contains(&p.prefix_len()),
            IpNet::V6(p) => self.v6_len.contains(&p.prefix_len()),
        };
        len_ok
            && self
                .communities
                .as_ref()
                .is_none_or(|want| communities.iter().any(|c| want.contains(c)))
    }

    /// The max-prefix hold-down as a duration.
    pub fn max_prefix_restart(&self) -> Duration {
        Duration::from_secs(self.max_prefix_restart_secs)
    }
}

fn default_port() -> u16 {
    179
}

fn default_hold_time() -> u16 {
    90
}

/// One BGP neighbor (one of the site's routers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Name shown in status and logs.
    pub name: String,
    /// The router's address. Passive peers are matched on the source address of the
    /// incoming connection.
    pub address: IpAddr,
    /// TCP port dialed in active mode.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The router's AS; an OPEN with another AS is refused (Bad Peer AS).
    pub peer_as: u32,
    /// Our AS (AS_TRANS goes in the OPEN's 16-bit field when it is above 65535).
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds: 0 (no keepalives) or at least 3. The session uses the
    /// smaller of ours and the peer's; keepalives go out every third of it.
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Active (we dial) or passive (the router dials).
    #[serde(default)]
    pub mode: Mode,
    /// Import policy.
    #[serde(default)]
    pub policy: ImportPolicy,
}

impl PeerConfig {
    /// A peer with the defaults: port 179, hold time 90 s, active, accept-all policy.
    pub fn new(
        name: impl Into<String>,
        address: IpAddr,
        peer_as: u32,
        local_as: u32,
        router_id: Ipv4Addr,
    ) -> Self {
        Self {
            name: name.into(),
            address,
            port: default_port(),
            peer_as,
            local_as,
            router_id,
            hold_time: default_hold_time(),
            mode: Mode::Active,
            policy: ImportPolicy::default(),
        }
    }
}

fn default_grace() -> u64 {
    300
}

fn default_connect_retry() -> u64 {
    5
}

/// The whole speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakerConfig {
    /// The routers.
    pub peers: Vec<PeerConfig>,
    /// Where to accept connections from passive peers (usually `[::]:179` or a site address
    /// on port 179). Required when any peer is passive.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// How long a lost session's prefixes stay served before they are withdrawn, in seconds.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// Base of the reconnect backoff for active peers, in seconds; doubles on every failed
    /// attempt up to 32 times this (at most 10 minutes), back to the base once a session is up.
    #[serde(default = "default_connect_retry")]
    pub connect_retry_secs: u64,
}

impl SpeakerConfig {
    /// The grace time.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }

    /// The backoff base.
    pub fn connect_retry(&self) -> Duration {
        Duration::from_secs(self.connect_retry_secs)
    }

    /// Checks the configuration. The error names the field, e.g.
    /// `peers[1].hold_time: must be 0 or at least 3 (got 2)`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: String, msg: String| {
            Err(ConfigError {
                field,
                message: msg,
            })
        };
        if self.connect_retry_secs == 0 {
            return err("connect_retry_secs".into(), "must be at least 1".into());
        }
        for (i, p) in self.peers.iter().enumerate() {
            let f = |name: &str| format!("peers[{i}].{name}");
            if p.name.trim().is_empty() {
                return err(f("name"), "must not be empty".into());
            }
            if self.peers[..i].iter().any(|q| q.name == p.name) {
                return err(f("name"), format!("duplicate peer name {:?}", p.name));
            }
            if self.peers[..i].iter().any(|q| q.address == p.address) {
                return err(
                    f("address"),
                    format!("duplicate peer address {}", p.address),
                );
            }
            if p.address.is_unspecified() {
                return err(f("address"), "must be a unicast address".into());
            }
            if p.port == 0 {
                return err(f("port"), "must not be 0".into());
            }
            if p.peer_as == 0 || p.peer_as == u32::from(crate::wire::AS_TRANS) {
                return err(f("peer_as"), format!("{} is not a usable AS", p.peer_as));
            }
            if p.local_as == 0 || p.local_as == u32::from(crate::wire::AS_TRANS) {
                return err(f("local_as"), format!("{} is not a usable AS", p.local_as));
            }
            if p.router_id.is_unspecified() {
                return err(f("router_id"), "must not be 0.0.0.0".into());
            }
            if p.hold_time == 1 || p.hold_time == 2 {
                return err(
                    f("hold_time"),
                    format!("must be 0 or at least 3 (got {})", p.hold_time),
                );
            }
            if p.mode == Mode::Passive && self.listen.is_none() {
                return err(f("mode"), "passive peers need `listen` to be set".into());
            }
            let pol = &p.policy;
            if pol.v4_len.is_empty() || *pol.v4_len.end() > 32 {
                return err(
                    f("policy.v4_len"),
                    format!("{:?} is not within 0..=32", pol.v4_len),
                );
            }
            if pol.v6_len.is_empty() || *pol.v6_len.end() > 128 {
                return err(
                    f("policy.v6_len"),
                    format!("{:?} is not within 0..=128", pol.v6_len),
                );
            }
            if pol.communities.as_ref().is_some_and(Vec::is_empty) {
                return err(
                    f("policy.communities"),
                    "an empty list would reject every route; leave it out to accept all".into(),
                );
            }
        }
        Ok(())
    }
}

/// A configuration error: which field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The field, e.g. `peers[0].hold_time`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerConfig {
        PeerConfig::new(
            "r1",
            "10.0.0.2".parse().unwrap(),
            65002,
            65001,
            "10.0.0.1".parse().unwrap(),
        )
    }

    fn cfg(p: PeerConfig) -> SpeakerConfig {
        SpeakerConfig {
            peers: vec![p],
            listen: None,
            grace_secs: 10,
            connect_retry_secs: 1,
        }
    }

    #[test]
    fn policy_lengths_and_communities() {
        let mut pol = ImportPolicy {
            v4_len: 8..=24,
            v6_len: 19..=48,
            ..Default::default()
        };
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(pol.accepts(&n("198.51.100.0/24"), &[]));
        assert!(!pol.accepts(&n("198.51.100.0/25"), &[]));
        assert!(!pol.accepts(&n("0.0.0.0/0"), &[]));
        assert!(pol.accepts(&n("2001:db8::/32"), &[]));
        assert!(!pol.accepts(&n("2001:db8::/64"), &[]));
        pol.communities = Some(vec![(65002, 100)]);
        assert!(!pol.accepts(&n("198.51.100.0/24"), &[]));
        assert!(!pol.accepts(&n("198.51.100.0/24"), &[(65002, 101)]));
        assert!(pol.accepts(&n("198.51.100.0/24"), &[(1, 1), (65002, 100)]));
    }

    #[test]
    fn validate_names_the_field() {
        assert!(cfg(peer()).validate().is_ok());
        let mut p = peer();
        p.hold_time = 2;
        let e = cfg(p).validate().unwrap_err();
        assert_eq!(e.field, "peers[0].hold_time");
        let mut p = peer();
        p.mode = Mode::Passive;
        assert_eq!(cfg(p).validate().unwrap_err().field, "peers[0].mode");
        let mut p = peer();
        p.policy.v4_len = 8..=33;
        assert_eq!(
            cfg(p).validate().unwrap_err().field,
            "peers[0].policy.v4_len"
        );
        let mut c = cfg(peer());
        c.peers.push(peer());
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "peers[1].name: duplicate peer name \"r1\""
        );
    }

    #[test]
    fn the_readme_toml_example_parses_and_validates() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml").unwrap() + "```toml".len();
        let end = start + readme[start..].find("```").unwrap();
        let c: SpeakerConfig = toml::from_str(&readme[start..end]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.peers[0].local_as, 4_200_000_001);
        assert_eq!(c.peers[0].policy.v6_len, 19..=48);
        assert_eq!(c.peers[0].policy.communities, Some(vec![(64500, 100)]));
    }

    #[test]
    fn serde_roundtrip_and_defaults() {
        let json = r#"{"peers":[{"name":"r1","address":"10.0.0.2","peer_as":65002,"local_as":65001,
            "router_id":"10.0.0.1","policy":{"max_prefixes":1000,"v4_len":{"start":8,"end":24}}}]}"#;
        let c: SpeakerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.grace_secs, 300);
        assert_eq!(c.peers[0].hold_time, 90);
        assert_eq!(c.peers[0].port, 179);
        assert_eq!(c.peers[0].policy.v4_len, 8..=24);
        assert_eq!(c.peers[0].policy.v6_len, 0..=128);
        let back: SpeakerConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let bad = json
            .replace("\"port\"", "\"x\"")
            .replace("\"name\":\"r1\"", "\"name\":\"r1\",\"bogus\":1");
        assert!(serde_json::from_str::<SpeakerConfig>(&bad).is_err());
    }
}
