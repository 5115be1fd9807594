//! Signed URLs: the steering service signs `(object, expiry, client prefix)` with a key the
//! appliance shares; the data plane checks the signature before it touches the disk.
//!
//! A signed URL is the object's URL with four query parameters, in this order:
//!
//! ```text
//! /<object>?exp=<unix seconds>&pfx=<client prefix>&kid=<key id>&sig=<base64url HMAC-SHA256>
//! /<object>/range/<first>-<last>?exp=…&pfx=…&kid=…&sig=…
//! ```
//!
//! The MAC is HMAC-SHA256 under the key named by `kid` over
//! `"edgeplane-url-v1\n<object>\n<exp>\n<pfx>"`. The range is not signed: one URL per object lets
//! a player fetch any range of it. The prefix is the client's network as the steering service
//! saw it (by default its /24 or /48), so a URL handed to one network is refused from another.
//!
//! Verification ([`KeySet::verify`]) is pure: parse, look up the key, check expiry and prefix,
//! then compare the MAC in constant time (`hmac`'s `verify_slice`). The early refusals reveal
//! only what the URL itself says (its expiry and prefix), never anything about the key.
//!
//! **Per-title tokens.** Beside the per-object query form, a token signs a whole title (every
//! object whose id starts with a prefix) for a client network, carried as a path segment so a
//! player resolving relative URLs against `http://appliance/tok/<token>/` fetches
//! `/tok/<token>/<content id>`:
//!
//! ```text
//! /tok/<id-prefix>~<exp>~<client prefix, '/' written as '_'>~<kid>~<sig>/<content id>
//! /tok/<token>/<content id>/range/<first>-<last>
//! ```
//!
//! e.g. `/tok/t0007-~1800000600~203.0.113.0_24~k1~<43 chars>/t0007-720p-0003.m4s`. The MAC is
//! HMAC-SHA256 under the key named by `kid` over
//! `"edgeplane-prefix-token\0<id-prefix>\0<exp>\0<client prefix with '/'>"` (a different domain
//! than the per-object form, so neither signature verifies as the other). [`sign_title`] makes
//! the token, [`KeySet::verify_title`] checks it with the same checks and refusals as
//! [`KeySet::verify`]; an object outside the id-prefix is refused as
//! [`Reject::BadSignature`], as a per-object URL used for another object is.
//!
//! **Rotation.** A [`KeySet`] holds every key that may still verify; each key has a `not_after`
//! after which it no longer verifies. The signer always uses the newest key
//! ([`KeySet::signing_key`]) and keeps the previous one for at least the URL lifetime, so URLs
//! signed just before a rotation stay valid until they expire.

use std::fmt;
use std::net::IpAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Domain separation for the MAC input; bump with any change to the format.
const CONTEXT: &str = "edgeplane-url-v1";

/// Domain separation for the per-title token's MAC input.
const TITLE_CONTEXT: &[u8] = b"edgeplane-prefix-token\0";

/// Separator of the fields of a per-title token.
pub const TITLE_TOKEN_SEP: char = '~';

/// Longest accepted id-prefix of a per-title token (a content id's longest length).
pub const MAX_ID_PREFIX: usize = 200;

/// Longest accepted key id.
pub const MAX_KEY_ID: usize = 64;

/// One shared signing key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// Key id, carried in URLs as `kid` (`[A-Za-z0-9._-]{1,64}`).
    pub id: String,
    /// The secret: 32 random bytes, base64url (no padding) in JSON.
    #[serde(with = "secret_b64")]
    pub secret: [u8; 32],
    /// Unix seconds after which URLs under this key are refused (rotation overlap ends).
    pub not_after: u64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

mod secret_b64 {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signing secret is 32 bytes"))
    }
}

/// The keys an appliance accepts (and the signer signs with), as stored in the keys file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    /// All keys that may still verify, any order.
    pub keys: Vec<SigningKey>,
}

/// Why a URL was refused. The data plane answers every one of these with 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// No `exp`/`pfx`/`kid`/`sig` parameters at all.
    #[error("the URL is not signed")]
    Unsigned,
    /// Parameters present but not in the signed form.
    #[error("malformed signature parameters")]
    Malformed,
    /// `kid` names no key we hold.
    #[error("unknown signing key")]
    UnknownKey,
    /// Past `exp`, or the key is past its `not_after`.
    #[error("the URL has expired")]
    Expired,
    /// The client's address is outside the signed prefix.
    #[error("the client is outside the signed prefix")]
    WrongPrefix,
    /// The MAC does not match.
    #[error("bad signature")]
    BadSignature,
}

impl Reject {
    /// A short label for metrics (`reason="…"`).
    pub fn label(self) -> &'static str {
        match self {
            Reject::Unsigned => "unsigned",
            Reject::Malformed => "malformed",
            Reject::UnknownKey => "unknown_key",
            Reject::Expired => "expired",
            Reject::WrongPrefix => "wrong_prefix",
            Reject::BadSignature => "bad_signature",
        }
    }

    /// Every reason, for pre-registering metric series.
    pub const ALL: [Reject; 6] = [
        Reject::Unsigned,
        Reject::Malformed,
        Reject::UnknownKey,
        Reject::Expired,
        Reject::WrongPrefix,
        Reject::BadSignature,
    ];
}

/// The signature parameters of a URL, borrowed from its query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// Expiry, unix seconds.
    pub exp: u64,
    /// The signed client prefix, exactly as written in the URL (it is part of the MAC input).
    pub prefix_text: &'a str,
    /// The prefix, parsed.
    pub prefix: IpNet,
    /// Key id.
    pub kid: &'a str,
    /// The MAC.
    pub sig: [u8; 32],
}

impl<'a> Token<'a> {
    /// Parses `exp=…&pfx=…&kid=…&sig=…` (the order is fixed; no other parameters).
    pub fn parse(query: &'a str) -> Result<Token<'a>, Reject> {
        if query.is_empty() {
            return Err(Reject::Unsigned);
        }
        let mut parts = query.split('&');
        let mut field = |name: &str| -> Result<&'a str, Reject> {
            let part = parts.next().ok_or(Reject::Malformed)?;
            let (k, v) = part.split_once('=').ok_or(Reject::Malformed)?;
            if k != name || v.is_empty() {
                return Err(Reject::Malformed);
            }
            Ok(v)
        };
        let exp = field("exp")?;
        let pfx = field("pfx")?;
        let kid = field("kid")?;
        let sig = field("sig")?;
        if parts.next().is_some() {
            return Err(Reject::Malformed);
        }
        let exp = parse_exp(exp)?;
        let prefix = canonical_prefix(pfx.parse().map_err(|_| Reject::Malformed)?)?;
        if !valid_key_id(kid) {
            return Err(Reject::Malformed);
        }
        Ok(Token {
            exp,
            prefix_text: pfx,
            prefix,
            kid,
            sig: decode_sig(sig)?,
        })
    }
}

/// A per-title token, borrowed from a URL path segment
/// (`<id-prefix>~<exp>~<client prefix, '/' as '_'>~<kid>~<sig>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TitleToken<'a> {
    /// Every object whose id starts with this is covered.
    pub id_prefix: &'a str,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// The address part of the client prefix as written (before `_`).
    pub prefix_addr: &'a str,
    /// The length part of the client prefix as written (after `_`).
    pub prefix_len: &'a str,
    /// The prefix, parsed.
    pub prefix: IpNet,
    /// Key id.
    pub kid: &'a str,
    /// The MAC.
    pub sig: [u8; 32],
}

impl<'a> TitleToken<'a> {
    /// Parses a token path segment. An empty one is [`Reject::Unsigned`], anything else not in
    /// the form [`Reject::Malformed`].
    pub fn parse(token: &'a str) -> Result<TitleToken<'a>, Reject> {
        if token.is_empty() {
            return Err(Reject::Unsigned);
        }
        let mut parts = token.split(TITLE_TOKEN_SEP);
        let mut field = || {
            parts
                .next()
                .filter(|f| !f.is_empty())
                .ok_or(Reject::Malformed)
        };
        let id_prefix = field()?;
        let exp = field()?;
        let pfx = field()?;
        let kid = field()?;
        let sig = field()?;
        if parts.next().is_some() {
            return Err(Reject::Malformed);
        }
        if !valid_id_prefix(id_prefix) {
            return Err(Reject::Malformed);
        }
        // Without leading zeros: one expiry has one spelling.
        if exp.len() > 1 && exp.starts_with('0') {
            return Err(Reject::Malformed);
        }
        let exp = parse_exp(exp)?;
        let (prefix_addr, prefix_len) = pfx.split_once('_').ok_or(Reject::Malformed)?;
        if prefix_len.is_empty()
            || prefix_len.len() > 3
            || !prefix_len.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Reject::Malformed);
        }
        let addr: IpAddr = prefix_addr.parse().map_err(|_| Reject::Malformed)?;
        let len: u8 = prefix_len.parse().map_err(|_| Reject::Malformed)?;
        let prefix = canonical_prefix(IpNet::new(addr, len).map_err(|_| Reject::Malformed)?)?;
        if !valid_key_id(kid) {
            return Err(Reject::Malformed);
        }
        Ok(TitleToken {
            id_prefix,
            exp,
            prefix_addr,
            prefix_len,
            prefix,
            kid,
            sig: decode_sig(sig)?,
        })
    }
}

/// An expiry: decimal digits only (no sign, no spaces), at most 20 of them.
fn parse_exp(exp: &str) -> Result<u64, Reject> {
    if exp.len() > 20 || !exp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Malformed);
    }
    exp.parse().map_err(|_| Reject::Malformed)
}

/// Only the canonical network form (no host bits), so one prefix has one spelling.
fn canonical_prefix(prefix: IpNet) -> Result<IpNet, Reject> {
    if prefix.trunc() == prefix {
        Ok(prefix)
    } else {
        Err(Reject::Malformed)
    }
}

/// The 32-byte MAC from its 43 base64url characters.
fn decode_sig(sig: &str) -> Result<[u8; 32], Reject> {
    if sig.len() != 43 {
        return Err(Reject::Malformed);
    }
    let mut mac = [0u8; 32];
    let n = URL_SAFE_NO_PAD
        .decode_slice(sig, &mut mac)
        .map_err(|_| Reject::Malformed)?;
    if n != 32 {
        return Err(Reject::Malformed);
    }
    Ok(mac)
}

/// Whether `p` is a usable id-prefix of a per-title token: 1 to [`MAX_ID_PREFIX`] characters of
/// a content id (`[A-Za-z0-9._-]`), not starting with `.`.
pub fn valid_id_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_ID_PREFIX
        && !p.starts_with('.')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The title prefix of a content id: everything up to and including its first `-`
/// (`t0007-720p-0003.m4s` → `t0007-`), or the whole id when it has none.
pub fn title_id_prefix(id: &str) -> &str {
    id.find('-').map_or(id, |i| &id[..=i])
}

/// Whether `id` is a usable key id.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Feeds `v` in decimal without allocating (this runs per request in the data plane).
fn update_decimal(m: &mut HmacSha256, v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = v;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    m.update(&digits[i..]);
}

fn hmac(key: &SigningKey) -> HmacSha256 {
    // Infallible: HMAC takes keys of any length.
    <HmacSha256 as KeyInit>::new_from_slice(&key.secret).expect("HMAC key")
}

fn mac(key: &SigningKey, object: &str, exp: u64, prefix_text: &str) -> HmacSha256 {
    let mut m = hmac(key);
    m.update(CONTEXT.as_bytes());
    m.update(b"\n");
    m.update(object.as_bytes());
    m.update(b"\n");
    update_decimal(&mut m, exp);
    m.update(b"\n");
    m.update(prefix_text.as_bytes());
    m
}

/// The per-title MAC; the prefix is `<addr>/<len>` as written (in the token `/` is `_`).
fn title_mac(
    key: &SigningKey,
    id_prefix: &str,
    exp: u64,
    prefix_addr: &str,
    prefix_len: &str,
) -> HmacSha256 {
    let mut m = hmac(key);
    m.update(TITLE_CONTEXT);
    m.update(id_prefix.as_bytes());
    m.update(b"\0");
    update_decimal(&mut m, exp);
    m.update(b"\0");
    m.update(prefix_addr.as_bytes());
    m.update(b"/");
    m.update(prefix_len.as_bytes());
    m
}

/// The per-title token (a URL path segment) that lets clients in `prefix` fetch every object
/// whose id starts with `id_prefix` until `exp`. `id_prefix` must pass [`valid_id_prefix`]
/// (the caller's content ids do).
pub fn sign_title(key: &SigningKey, id_prefix: &str, exp: u64, prefix: IpNet) -> String {
    debug_assert!(valid_id_prefix(id_prefix), "{id_prefix:?}");
    let prefix = prefix.trunc();
    let addr = prefix.network().to_string();
    let len = prefix.prefix_len().to_string();
    let tag = title_mac(key, id_prefix, exp, &addr, &len)
        .finalize()
        .into_bytes();
    format!(
        "{id_prefix}~{exp}~{addr}_{len}~{}~{}",
        key.id,
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The query string (without `?`) that signs `object` for clients in `prefix` until `exp`.
pub fn sign(key: &SigningKey, object: &str, exp: u64, prefix: IpNet) -> String {
    let prefix = prefix.trunc();
    let text = prefix.to_string();
    let tag = mac(key, object, exp, &text).finalize().into_bytes();
    format!(
        "exp={exp}&pfx={text}&kid={}&sig={}",
        key.id,
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The network a client address signs into: its /`v4_len` or /`v6_len`.
pub fn client_prefix(client: IpAddr, v4_len: u8, v6_len: u8) -> IpNet {
    let len = match client {
        IpAddr::V4(_) => v4_len.min(32),
        IpAddr::V6(_) => v6_len.min(128),
    };
    // In range by the min above.
    IpNet::new(client, len).expect("prefix length").trunc()
}

/// Unmaps `::ffff:a.b.c.d` so IPv4 clients on dual-stack sockets match IPv4 prefixes.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl KeySet {
    /// The key to sign new URLs with: the one valid longest (ties: the greatest id).
    pub fn signing_key(&self, now: u64) -> Option<&SigningKey> {
        self.keys
            .iter()
            .filter(|k| k.not_after > now)
            .max_by(|a, b| a.not_after.cmp(&b.not_after).then(a.id.cmp(&b.id)))
    }

    /// Drops keys past their `not_after`.
    pub fn prune(&mut self, now: u64) {
        self.keys.retain(|k| k.not_after > now);
    }

    /// The checks both URL forms make before their MAC, in this order: the key is known, neither
    /// the URL nor the key has expired, and `client` is inside the signed prefix.
    fn admit(
        &self,
        kid: &str,
        exp: u64,
        prefix: &IpNet,
        client: IpAddr,
        now: u64,
    ) -> Result<&SigningKey, Reject> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(Reject::UnknownKey)?;
        if now > exp || now > key.not_after {
            return Err(Reject::Expired);
        }
        if !prefix.contains(&canonical(client)) {
            return Err(Reject::WrongPrefix);
        }
        Ok(key)
    }

    /// Checks the signature of a request for `object` from `client` at `now` (unix seconds).
    /// `query` is the URL's query string without `?` (`None` when the URL has none).
    pub fn verify(
        &self,
        object: &str,
        query: Option<&str>,
        client: IpAddr,
        now: u64,
    ) -> Result<(), Reject> {
        let token = Token::parse(query.unwrap_or(""))?;
        let key = self.admit(token.kid, token.exp, &token.prefix, client, now)?;
        mac(key, object, token.exp, token.prefix_text)
            .verify_slice(&token.sig)
            .map_err(|_| Reject::BadSignature)
    }

    /// Checks a per-title token (the path segment after `/tok/`) for a request of `object`
    /// from `client` at `now`: the same checks and refusals as [`KeySet::verify`], plus the
    /// object's id must start with the token's id-prefix (else [`Reject::BadSignature`], as for
    /// a per-object URL used for another object).
    pub fn verify_title(
        &self,
        object: &str,
        token: &str,
        client: IpAddr,
        now: u64,
    ) -> Result<(), Reject> {
        let token = TitleToken::parse(token)?;
        let key = self.admit(token.kid, token.exp, &token.prefix, client, now)?;
        if !object.starts_with(token.id_prefix) {
            return Err(Reject::BadSignature);
        }
        title_mac(
            key,
            token.id_prefix,
            token.exp,
            token.prefix_addr,
            token.prefix_len,
        )
        .verify_slice(&token.sig)
        .map_err(|_| Reject::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: &str, byte: u8, not_after: u64) -> SigningKey {
        SigningKey {
            id: id.into(),
            secret: [byte; 32],
            not_after,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn round_trip_v4_and_v6() {
        let keys = KeySet {
            keys: vec![key("k1", 7, NOW + 3600)],
        };
        let k = &keys.keys[0];
        let q = sign(
            k,
            "t1-720p-0001.m4s",
            NOW + 60,
            "203.0.113.0/24".parse().unwrap(),
        );
        assert!(
            q.starts_with("exp=1800000060&pfx=203.0.113.0/24&kid=k1&sig="),
            "{q}"
        );
        assert_eq!(
            keys.verify("t1-720p-0001.m4s", Some(&q), ip("203.0.113.77"), NOW),
            Ok(())
        );
        // An IPv4 client on a dual-stack socket.
        assert_eq!(
            keys.verify("t1-720p-0001.m4s", Some(&q), ip("::ffff:203.0.113.9"), NOW),
            Ok(())
        );
        let q6 = sign(k, "x", NOW + 60, "2001:db8:5::/48".parse().unwrap());
        assert_eq!(
            keys.verify("x", Some(&q6), ip("2001:db8:5::1"), NOW),
            Ok(())
        );
    }

    #[test]
    fn every_refusal() {
        let keys = KeySet {
            keys: vec![key("old", 1, NOW + 10), key("new", 2, NOW + 3600)],
        };
        let new = &keys.keys[1];
        let pfx: IpNet = "198.51.100.0/24".parse().unwrap();
        let good = sign(new, "obj", NOW + 60, pfx);
        let c = ip("198.51.100.5");
        assert_eq!(keys.verify("obj", None, c, NOW), Err(Reject::Unsigned));
        assert_eq!(keys.verify("obj", Some(""), c, NOW), Err(Reject::Unsigned));
        assert_eq!(
            keys.verify("obj", Some("a=b"), c, NOW),
            Err(Reject::Malformed)
        );
        // Another object, another client network, later than exp.
        assert_eq!(
            keys.verify("obj2", Some(&good), c, NOW),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            keys.verify("obj", Some(&good), ip("198.51.101.5"), NOW),
            Err(Reject::WrongPrefix)
        );
        assert_eq!(
            keys.verify("obj", Some(&good), c, NOW + 61),
            Err(Reject::Expired)
        );
        // Tampered expiry, prefix, key id.
        let t = good.replace("exp=1800000060", "exp=1800000999");
        assert_eq!(
            keys.verify("obj", Some(&t), c, NOW),
            Err(Reject::BadSignature)
        );
        let t = good.replace("pfx=198.51.100.0/24", "pfx=198.51.0.0/16");
        assert_eq!(
            keys.verify("obj", Some(&t), c, NOW),
            Err(Reject::BadSignature)
        );
        let t = good.replace("kid=new", "kid=old");
        assert_eq!(
            keys.verify("obj", Some(&t), c, NOW),
            Err(Reject::BadSignature)
        );
        let t = good.replace("kid=new", "kid=gone");
        assert_eq!(
            keys.verify("obj", Some(&t), c, NOW),
            Err(Reject::UnknownKey)
        );
        // Host bits in the prefix, extra parameters, reordered parameters.
        let t = good.replace("pfx=198.51.100.0/24", "pfx=198.51.100.1/24");
        assert_eq!(keys.verify("obj", Some(&t), c, NOW), Err(Reject::Malformed));
        assert_eq!(
            keys.verify("obj", Some(&format!("{good}&x=1")), c, NOW),
            Err(Reject::Malformed)
        );
        let mut parts: Vec<&str> = good.split('&').collect();
        parts.swap(0, 1);
        assert_eq!(
            keys.verify("obj", Some(&parts.join("&")), c, NOW),
            Err(Reject::Malformed)
        );
        // A flipped signature character.
        let mut t = good.clone().into_bytes();
        let last = t.len() - 2;
        t[last] = if t[last] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        assert_eq!(
            keys.verify("obj", Some(&t), c, NOW),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn rotation_overlap() {
        let mut keys = KeySet {
            keys: vec![key("k1", 1, NOW + 100)],
        };
        let pfx: IpNet = "10.0.0.0/8".parse().unwrap();
        let old_url = sign(keys.signing_key(NOW).unwrap(), "o", NOW + 90, pfx);
        keys.keys.push(key("k2", 2, NOW + 1000));
        assert_eq!(keys.signing_key(NOW).unwrap().id, "k2");
        let c = ip("10.1.2.3");
        // Old URLs keep working during the overlap, and stop with the old key.
        assert_eq!(keys.verify("o", Some(&old_url), c, NOW + 50), Ok(()));
        let late = sign(&keys.keys[0], "o", NOW + 500, pfx);
        assert_eq!(
            keys.verify("o", Some(&late), c, NOW + 101),
            Err(Reject::Expired)
        );
        keys.prune(NOW + 101);
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(
            keys.verify("o", Some(&old_url), c, NOW + 50),
            Err(Reject::UnknownKey)
        );
    }

    #[test]
    fn keys_file_json_and_redacted_debug() {
        let set = KeySet {
            keys: vec![key("k1", 9, 5)],
        };
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<KeySet>(&json).unwrap(), set);
        assert!(!format!("{:?}", set).contains("9, 9"));
        assert!(serde_json::from_str::<KeySet>(
            r#"{"keys":[{"id":"a","secret":"AAAA","not_after":1}]}"#
        )
        .is_err());
    }

    #[test]
    fn client_prefixes() {
        assert_eq!(
            client_prefix(ip("203.0.113.77"), 24, 48).to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            client_prefix(ip("2001:db8:1:2::9"), 24, 48).to_string(),
            "2001:db8:1::/48"
        );
    }

    #[test]
    fn title_token_round_trip_and_every_refusal() {
        let keys = KeySet {
            keys: vec![key("old", 1, NOW + 10), key("k1", 2, NOW + 3600)],
        };
        let k = &keys.keys[1];
        let pfx: IpNet = "203.0.113.0/24".parse().unwrap();
        let tok = sign_title(k, "t0007-", NOW + 600, pfx);
        let (head, sig) = tok.rsplit_once('~').unwrap();
        assert_eq!(head, "t0007-~1800000600~203.0.113.0_24~k1");
        assert_eq!(sig.len(), 43);
        let c = ip("203.0.113.77");
        let id = "t0007-720p-0003.m4s";
        assert_eq!(keys.verify_title(id, &tok, c, NOW), Ok(()));
        assert_eq!(
            keys.verify_title("t0007-1080p-0999.m4s", &tok, ip("::ffff:203.0.113.1"), NOW),
            Ok(())
        );
        // The MAC, recomputed plainly over the documented input.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&[2; 32]).unwrap();
        m.update(b"edgeplane-prefix-token\x00t0007-\x001800000600\x00203.0.113.0/24");
        assert_eq!(URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()), sig);
        // Another title, another network, after exp, an unknown key.
        assert_eq!(
            keys.verify_title("t0008-720p-0003.m4s", &tok, c, NOW),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            keys.verify_title("t0007", &tok, c, NOW),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            keys.verify_title(id, &tok, ip("203.0.114.1"), NOW),
            Err(Reject::WrongPrefix)
        );
        assert_eq!(
            keys.verify_title(id, &tok, c, NOW + 601),
            Err(Reject::Expired)
        );
        assert_eq!(
            keys.verify_title(id, &tok.replace("~k1~", "~gone~"), c, NOW),
            Err(Reject::UnknownKey)
        );
        // Tampered fields: a wider id-prefix, a later exp, a wider network, the other key.
        for t in [
            tok.replace("t0007-~", "t000~"),
            tok.replace("~1800000600~", "~1800000999~"),
            tok.replace("~203.0.113.0_24~", "~203.0.0.0_16~"),
            tok.replace("~k1~", "~old~"),
        ] {
            assert_eq!(
                keys.verify_title(id, &t, c, NOW),
                Err(Reject::BadSignature),
                "{t}"
            );
        }
        // Not in the form.
        assert_eq!(keys.verify_title(id, "", c, NOW), Err(Reject::Unsigned));
        for t in [
            "x".to_string(),
            format!("{tok}~x"),
            tok.replace("~1800000600~", "~01800000600~"),
            tok.replace("~203.0.113.0_24~", "~203.0.113.0/24~"),
            tok.replace("~203.0.113.0_24~", "~203.0.113.1_24~"),
            tok.replace("~203.0.113.0_24~", "~203.0.113.0_33~"),
            tok.replace("t0007-~", ".t~"),
            tok.replace("t0007-~", "~"),
            // The per-object query form is not a title token, nor the reverse.
            sign(k, id, NOW + 600, pfx),
        ] {
            assert_eq!(
                keys.verify_title(id, &t, c, NOW),
                Err(Reject::Malformed),
                "{t}"
            );
        }
        assert_eq!(keys.verify(id, Some(&tok), c, NOW), Err(Reject::Malformed));
        // IPv6.
        let p6: IpNet = "2001:db8:7::/48".parse().unwrap();
        let t6 = sign_title(k, "t1-", NOW + 60, p6);
        assert!(t6.starts_with("t1-~1800000060~2001:db8:7::_48~k1~"), "{t6}");
        assert_eq!(
            keys.verify_title("t1-a", &t6, ip("2001:db8:7:1::5"), NOW),
            Ok(())
        );
        assert_eq!(
            keys.verify_title("t1-a", &t6, ip("2001:db8:8::5"), NOW),
            Err(Reject::WrongPrefix)
        );
    }

    #[test]
    fn title_prefixes() {
        assert_eq!(title_id_prefix("t0007-720p-0003.m4s"), "t0007-");
        assert_eq!(title_id_prefix("master.m3u8"), "master.m3u8");
        assert!(valid_id_prefix("t0007-") && !valid_id_prefix("") && !valid_id_prefix(".x"));
        assert!(!valid_id_prefix("a~b") && !valid_id_prefix("a/b"));
    }

    proptest! {
        #[test]
        fn title_token_any_tampered_byte_rejects(
            host in any::<u32>(),
            title in 0u32..100_000,
            exp in NOW..NOW + 100_000,
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let keys = KeySet { keys: vec![key("k1", 3, u64::MAX), key("k2", 4, u64::MAX)] };
            let client = IpAddr::V4(host.into());
            let id_prefix = format!("t{title:04}-");
            let id = format!("{id_prefix}720p-0001.m4s");
            let tok = sign_title(&keys.keys[0], &id_prefix, exp, client_prefix(client, 24, 48));
            prop_assert_eq!(keys.verify_title(&id, &tok, client, NOW), Ok(()));
            let mut bytes = tok.clone().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            // Bytes that are not UTF-8 never reach verification (the path is a str).
            if let Ok(t) = String::from_utf8(bytes) {
                prop_assert!(keys.verify_title(&id, &t, client, NOW).is_err(), "{} accepted", t);
            }
        }

        #[test]
        fn no_panic_on_any_title_token(t in ".{0,200}", obj in "[a-z0-9.-]{1,20}") {
            let keys = KeySet { keys: vec![key("k", 3, u64::MAX)] };
            let _ = keys.verify_title(&obj, &t, ip("192.0.2.1"), NOW);
        }

        #[test]
        fn no_panic_on_any_query(q in ".{0,200}", obj in "[a-z0-9.-]{1,20}") {
            let keys = KeySet { keys: vec![key("k", 3, u64::MAX)] };
            let _ = keys.verify(&obj, Some(&q), ip("192.0.2.1"), NOW);
        }

        #[test]
        fn signed_verifies_and_other_objects_do_not(obj in "[a-zA-Z0-9._-]{1,40}", other in "[a-zA-Z0-9._-]{1,40}", exp in NOW..NOW + 100_000, host in any::<u32>()) {
            let keys = KeySet { keys: vec![key("k", 3, u64::MAX)] };
            let client = IpAddr::V4(host.into());
            let q = sign(&keys.keys[0], &obj, exp, client_prefix(client, 24, 48));
            prop_assert_eq!(keys.verify(&obj, Some(&q), client, NOW), Ok(()));
            if other != obj {
                prop_assert_eq!(keys.verify(&other, Some(&q), client, NOW), Err(Reject::BadSignature));
            }
        }
    }
}
