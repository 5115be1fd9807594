//! Signed-URL verification, differential against a straightforward reference: whatever the
//! query string, `KeySet::verify` never accepts a token whose MAC is wrong (recomputed here
//! with the hmac crate directly over the documented input), never accepts an expired one or a
//! client outside the signed prefix, and accepts every URL that `sign` produced for the client
//! while it is valid. The input is either a raw query string or the recipe for a signed URL
//! with one byte changed.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgeplane_signing::{sign, KeySet, SigningKey};
use hmac::{KeyInit, Mac};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fn keys() -> KeySet {
    KeySet {
        keys: vec![
            SigningKey {
                id: "k1".into(),
                secret: [7; 32],
                not_after: NOW + 86_400,
            },
            SigningKey {
                id: "old-key".into(),
                secret: [9; 32],
                not_after: NOW - 1,
            },
        ],
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let (&mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let client_v6 = mode & 2 != 0;
    let client = if client_v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, u16::from(mode)))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, mode))
    };
    let object = "title7-720p-seg00042.m4s";
    if mode & 1 == 0 {
        // A raw query string.
        let Ok(query) = std::str::from_utf8(rest) else {
            return;
        };
        let verdict = keys.verify(object, Some(query), client, NOW);
        if verdict.is_ok() {
            assert!(
                reference_accepts(&keys, object, query, client),
                "accepted {query:?}"
            );
        }
        return;
    }
    // A URL signed for this client, then (maybe) one byte of it changed.
    let (exp_delta, flip) = match rest {
        [a, b, c, ..] => (i64::from(*a as i8) * 1000, Some((usize::from(*b), *c))),
        [a, ..] => (i64::from(*a as i8) * 1000, None),
        [] => (3600, None),
    };
    let exp = NOW.saturating_add_signed(exp_delta);
    let prefix = if client_v6 {
        IpNet::new(client, 48).unwrap().trunc()
    } else {
        IpNet::new(client, 24).unwrap().trunc()
    };
    let mut query = sign(&keys.keys[0], object, exp, prefix).into_bytes();
    if let Some((at, byte)) = flip {
        let at = at % query.len();
        query[at] = byte;
    }
    let Ok(query) = String::from_utf8(query) else {
        return;
    };
    let verdict = keys.verify(object, Some(&query), client, NOW);
    let reference = reference_accepts(&keys, object, &query, client);
    assert_eq!(verdict.is_ok(), reference, "{query:?}: {verdict:?}");
});

/// The whole rule, written plainly: four parameters in order, a known key still valid, not
/// expired, the client inside the canonical prefix, and HMAC-SHA256 over
/// `edgeplane-url-v1\n<object>\n<exp>\n<prefix as written>` equal to the signature.
fn reference_accepts(keys: &KeySet, object: &str, query: &str, client: IpAddr) -> bool {
    let parts: Vec<&str> = query.split('&').collect();
    let [exp, pfx, kid, sig] = parts.as_slice() else {
        return false;
    };
    let (Some(exp), Some(pfx), Some(kid), Some(sig)) = (
        exp.strip_prefix("exp="),
        pfx.strip_prefix("pfx="),
        kid.strip_prefix("kid="),
        sig.strip_prefix("sig="),
    ) else {
        return false;
    };
    if exp.is_empty() || exp.len() > 20 || !exp.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(exp_n) = exp.parse::<u64>() else {
        return false;
    };
    let Ok(prefix) = pfx.parse::<IpNet>() else {
        return false;
    };
    if prefix.trunc() != prefix {
        return false;
    }
    let Some(key) = keys.keys.iter().find(|k| k.id == kid) else {
        return false;
    };
    if NOW > exp_n || NOW > key.not_after {
        return false;
    }
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    if !prefix.contains(&client) {
        return false;
    }
    let Ok(mac) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key.secret).unwrap();
    // The decimal form of the parsed number: leading zeros in `exp` are not part of the MAC.
    m.update(format!("edgeplane-url-v1\n{object}\n{exp_n}\n{pfx}").as_bytes());
    m.verify_slice(&mac).is_ok()
}
