//! Who may be served: signed URLs (`[signing]`) and the served prefixes without XDP
//! (`[access] prefixes_file`).
//!
//! Both read a file the agent writes (atomically: temporary file, then rename) and re-read it on
//! reload (SIGHUP, `POST /reload`). Both fail closed: a keys file that is missing or invalid
//! while signing is on refuses every object request with 403; a prefixes file that is configured
//! but missing or invalid lets no client connect. Neither stops the process: the agent can fix
//! the file and reload.
//!
//! The request path only loads an `Arc` ([`ArcSwap`]) and runs pure checks: an HMAC for a
//! signature, a binary search for a peer address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use edgeplane_signing::{KeySet, Reject};

use crate::config::Config;
use edgeplane_xdp::Prefix;

/// The prefixes file: `{"prefixes": ["203.0.113.0/24", "2001:db8::/32"]}`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct PrefixesFile {
    /// Client networks that may connect.
    pub prefixes: Vec<Prefix>,
}

/// A set of prefixes as sorted, merged, inclusive address ranges, so a lookup is one binary
/// search. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) match IPv4 prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    /// Prefixes as listed (before merging), for the gauge.
    listed: usize,
}

impl PrefixSet {
    /// The set of addresses inside any of `prefixes`.
    pub fn new(prefixes: &[Prefix]) -> PrefixSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for p in prefixes {
            let len = u32::from(p.prefix_len());
            match p.addr() {
                IpAddr::V4(a) => {
                    let first = u32::from(a);
                    let last = first | u32::MAX.checked_shr(len).unwrap_or(0);
                    v4.push((first, last));
                }
                IpAddr::V6(a) => {
                    let first = u128::from(a);
                    let last = first | u128::MAX.checked_shr(len).unwrap_or(0);
                    v6.push((first, last));
                }
            }
        }
        PrefixSet {
            v4: merge(v4),
            v6: merge(v6),
            listed: prefixes.len(),
        }
    }

    /// Whether `ip` is inside the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// How many prefixes were listed.
    pub fn len(&self) -> usize {
        self.listed
    }

    /// Whether no prefix was listed (no client may connect).
    pub fn is_empty(&self) -> bool {
        self.listed == 0
    }
}

fn merge<T: Copy + Ord + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            // Overlapping or adjacent: extend.
            Some(prev) if prev.1.succ().is_none_or(|next| first <= next) => {
                if last > prev.1 {
                    prev.1 = last;
                }
            }
            _ => out.push((first, last)),
        }
    }
    out
}

fn find<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x.
    let i = ranges.partition_point(|&(first, _)| first <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_like {
    /// `x + 1`, or `None` at the top of the address space.
    pub(super) trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

/// Unmaps `::ffff:a.b.c.d` so IPv4 clients on dual-stack sockets match IPv4 prefixes.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Reads a prefixes file.
pub fn load_prefixes_file(path: &Path) -> Result<Vec<Prefix>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let file: PrefixesFile = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a prefixes file: {e}", path.display()))?;
    Ok(file.prefixes)
}

/// Reads a signing keys file (the JSON form of [`KeySet`]).
pub fn load_keys_file(path: &Path) -> Result<KeySet, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a signing keys file: {e}", path.display()))
}

/// What a reload of the access files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessReload {
    /// `None` with signing off; else the keys loaded, or why none are (all refused).
    pub keys: Option<Result<usize, String>>,
    /// `None` without `access.prefixes_file`; else the prefixes loaded, or why none are (no
    /// client may connect).
    pub prefixes: Option<Result<usize, String>>,
}

impl AccessReload {
    /// Whether every configured file loaded.
    pub fn ok(&self) -> bool {
        !matches!(self.keys, Some(Err(_))) && !matches!(self.prefixes, Some(Err(_)))
    }
}

/// The access state shared by every executor: signing keys and served prefixes, each swapped
/// whole on reload.
#[derive(Debug)]
pub struct Access {
    signing: AtomicBool,
    keys_file: ArcSwap<PathBuf>,
    keys: ArcSwap<KeySet>,
    /// Whether `prefixes_file` is set (checked on every accept, without a lock).
    filtering: AtomicBool,
    prefixes_file: ArcSwap<Option<PathBuf>>,
    prefixes: ArcSwap<PrefixSet>,
}

impl Access {
    /// Loads the files `config` names (logging, never failing: see the module docs).
    pub fn new(config: &Config) -> Access {
        let access = Access {
            signing: AtomicBool::new(config.signing.enabled),
            keys_file: ArcSwap::from_pointee(config.signing.keys_file.clone()),
            keys: ArcSwap::from_pointee(KeySet::default()),
            filtering: AtomicBool::new(config.access.prefixes_file.is_some()),
            prefixes_file: ArcSwap::from_pointee(config.access.prefixes_file.clone()),
            prefixes: ArcSwap::from_pointee(PrefixSet::default()),
        };
        if !access.signing() {
            tracing::warn!(
                "signed URLs are off (signing.enabled = false): any client that can connect may fetch any object"
            );
        }
        access.reload();
        access
    }

    /// Takes the signing switch, keys file and prefixes file from a reloaded config; the
    /// caller then calls [`Access::reload`] to read the files.
    pub fn reconfigure(&self, config: &Config) {
        let was = self.signing();
        self.signing
            .store(config.signing.enabled, Ordering::Relaxed);
        if was && !config.signing.enabled {
            tracing::warn!(
                "signed URLs turned off by reload (signing.enabled = false): any client that can connect may fetch any object"
            );
        }
        self.keys_file
            .store(Arc::new(config.signing.keys_file.clone()));
        self.prefixes_file
            .store(Arc::new(config.access.prefixes_file.clone()));
        self.filtering
            .store(config.access.prefixes_file.is_some(), Ordering::Relaxed);
    }

    /// Re-reads the keys and prefixes files. A file that cannot be used leaves an empty set in
    /// place (everything refused), with an error line naming it.
    pub fn reload(&self) -> AccessReload {
        let keys_file = self.keys_file.load_full();
        let keys_file = &*keys_file;
        let keys = self.signing().then(|| match load_keys_file(keys_file) {
            Ok(set) => {
                let n = set.keys.len();
                if n == 0 {
                    tracing::warn!(path = %keys_file.display(), "signing keys file holds no keys: every object request is refused with 403");
                } else {
                    tracing::info!(path = %keys_file.display(), keys = n, "signing keys loaded");
                }
                self.keys.store(Arc::new(set));
                Ok(n)
            }
            Err(e) => {
                tracing::warn!("signing keys not loaded ({e}): every object request is refused with 403 until the file is fixed and the data plane reloaded");
                self.keys.store(Arc::new(KeySet::default()));
                Err(e)
            }
        });
        let prefixes_file = self.prefixes_file.load_full();
        let prefixes = prefixes_file.as_ref().as_ref().map(|path| match load_prefixes_file(path) {
            Ok(list) => {
                let set = PrefixSet::new(&list);
                tracing::info!(path = %path.display(), prefixes = set.len(), "served prefixes loaded");
                self.prefixes.store(Arc::new(set));
                Ok(list.len())
            }
            Err(e) => {
                tracing::error!("served prefixes not loaded ({e}): no client may connect until the file is fixed and the data plane reloaded");
                self.prefixes.store(Arc::new(PrefixSet::default()));
                Err(e)
            }
        });
        AccessReload { keys, prefixes }
    }

    /// Whether a connection from `peer` may be served.
    pub fn allows(&self, peer: IpAddr) -> bool {
        !self.filtering.load(Ordering::Relaxed) || self.prefixes.load().contains(peer)
    }

    /// Checks a request's signature (`Ok` when signing is off): the per-title `token` of the
    /// `/tok/<token>/<id>` form when present (the query is then ignored), else the per-object
    /// signature in the query.
    pub fn verify(
        &self,
        object: &str,
        query: Option<&str>,
        token: Option<&str>,
        peer: IpAddr,
        now: u64,
    ) -> Result<(), Reject> {
        if !self.signing() {
            return Ok(());
        }
        let keys = self.keys.load();
        match token {
            Some(token) => keys.verify_title(object, token, peer, now),
            None => keys.verify(object, query, peer, now),
        }
    }

    /// Whether signed URLs are checked.
    pub fn signing(&self) -> bool {
        self.signing.load(Ordering::Relaxed)
    }

    /// Signing keys loaded now.
    pub fn keys_loaded(&self) -> usize {
        self.keys.load().keys.len()
    }

    /// Served prefixes loaded now; `None` without `access.prefixes_file`.
    pub fn prefixes_loaded(&self) -> Option<usize> {
        self.filtering
            .load(Ordering::Relaxed)
            .then(|| self.prefixes.load().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(list: &[&str]) -> PrefixSet {
        let v: Vec<Prefix> = list.iter().map(|s| s.parse().unwrap()).collect();
        PrefixSet::new(&v)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_v4_v6_and_mapped() {
        let s = set(&[
            "203.0.113.0/24",
            "10.0.0.0/8",
            "2001:db8::/32",
            "192.0.2.7/32",
        ]);
        assert_eq!(s.len(), 4);
        for yes in [
            "203.0.113.0",
            "203.0.113.255",
            "10.255.255.255",
            "192.0.2.7",
            "::ffff:203.0.113.9",
            "2001:db8::1",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in [
            "203.0.114.0",
            "203.0.112.255",
            "11.0.0.0",
            "192.0.2.6",
            "192.0.2.8",
            "::ffff:11.0.0.1",
            "2001:db9::",
            "::1",
            "127.0.0.1",
        ] {
            assert!(!s.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn merges_overlapping_and_adjacent() {
        let s = set(&["10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/24", "10.1.0.0/16"]);
        assert_eq!(
            s.v4,
            vec![(0x0a00_0000, 0x0a00_00ff), (0x0a01_0000, 0x0a01_ffff)]
        );
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("0.0.0.0")));
        assert!(all.contains(ip("ffff::1")));
        assert_eq!(all.v4, vec![(0, u32::MAX)]);
        let none = set(&[]);
        assert!(none.is_empty() && !none.contains(ip("127.0.0.1")));
    }

    proptest! {
        #[test]
        fn agrees_with_a_linear_scan(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..20),
            probes in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let list: Vec<Prefix> = nets
                .iter()
                .map(|&(a, len)| {
                    let masked = if len == 0 { 0 } else { a & (u32::MAX << (32 - u32::from(len))) };
                    Prefix::new(IpAddr::V4(masked.into()), len).unwrap()
                })
                .collect();
            let s = PrefixSet::new(&list);
            for p in probes {
                let addr = IpAddr::V4(p.into());
                let want = list.iter().any(|n| n.contains(addr));
                prop_assert_eq!(s.contains(addr), want, "{}", addr);
            }
        }
    }

    #[test]
    fn files_load_or_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prefixes.json");
        std::fs::write(&p, r#"{"prefixes": ["203.0.113.0/24", "2001:db8::/32"]}"#).unwrap();
        assert_eq!(load_prefixes_file(&p).unwrap().len(), 2);
        std::fs::write(&p, r#"{"prefixes": ["203.0.113.1/24"]}"#).unwrap();
        let e = load_prefixes_file(&p).unwrap_err();
        assert!(
            e.contains("prefixes.json") && e.contains("host bits"),
            "{e}"
        );
        let e = load_prefixes_file(&dir.path().join("gone.json")).unwrap_err();
        assert!(e.contains("gone.json") && e.contains("cannot read"), "{e}");
        let k = dir.path().join("keys.json");
        std::fs::write(&k, "{\"keys\": []}").unwrap();
        assert!(load_keys_file(&k).unwrap().keys.is_empty());
        std::fs::write(&k, "{\"keys\": [{\"id\": \"a\"}]}").unwrap();
        assert!(load_keys_file(&k).unwrap_err().contains("keys.json"));
    }
}
