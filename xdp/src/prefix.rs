//! A served prefix (`203.0.113.0/24`, `2001:db8::/32`): parsing, display, and the LPM key bytes.
//! Pure logic, no maps.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address with only the first `len` bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a string is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Not `ADDRESS/LENGTH`.
    #[error("{0:?}: expected ADDRESS/LENGTH, e.g. 203.0.113.0/24 or 2001:db8::/32")]
    Syntax(String),
    /// The length is over 32 (IPv4) or 128 (IPv6).
    #[error("{text:?}: prefix length must be 0-{max}")]
    Length {
        /// The input.
        text: String,
        /// 32 or 128.
        max: u8,
    },
    /// Bits are set after the prefix length.
    #[error("{text:?} has host bits set: did you mean {network}?")]
    HostBits {
        /// The input.
        text: String,
        /// The network it probably meant.
        network: Prefix,
    },
}

impl Prefix {
    /// `addr/len`, or an error when `len` is too long or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let text = format!("{addr}/{len}");
        let max = max_len(addr);
        if len > max {
            return Err(PrefixError::Length { text, max });
        }
        let network = Prefix {
            addr: mask(addr, len),
            len,
        };
        if network.addr != addr {
            return Err(PrefixError::HostBits { text, network });
        }
        Ok(network)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        max_len(ip) == max_len(self.addr) && mask(ip, self.len) == self.addr
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let syntax = || PrefixError::Syntax(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u16 = len.parse().map_err(|_| syntax())?;
        let len = u8::try_from(len).map_err(|_| PrefixError::Length {
            text: s.to_string(),
            max: max_len(addr),
        })?;
        Prefix::new(addr, len).map_err(|e| match e {
            PrefixError::HostBits { network, .. } => PrefixError::HostBits {
                text: s.to_string(),
                network,
            },
            PrefixError::Length { max, .. } => PrefixError::Length {
                text: s.to_string(),
                max,
            },
            other => other,
        })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_both_families() {
        for text in [
            "203.0.113.0/24",
            "0.0.0.0/0",
            "10.1.2.3/32",
            "2001:db8::/32",
            "::/0",
        ] {
            let p: Prefix = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        let p: Prefix = "2001:db8:0:0::/64".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8::/64");
        assert_eq!(p.prefix_len(), 64);
    }

    #[test]
    fn rejects_with_a_reason() {
        assert!(matches!(
            "10.0.0.0".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(PrefixError::Length { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Prefix>(),
            Err(PrefixError::Length { max: 128, .. })
        ));
        assert!(matches!(
            "10.0.0.0/999".parse::<Prefix>(),
            Err(PrefixError::Length { max: 32, .. })
        ));
        let err = "10.1.2.3/8".parse::<Prefix>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10.1.2.3/8\" has host bits set: did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn contains_respects_family_and_length() {
        let p: Prefix = "198.51.100.0/23".parse().unwrap();
        assert!(p.contains("198.51.101.255".parse().unwrap()));
        assert!(!p.contains("198.51.102.0".parse().unwrap()));
        assert!(!p.contains("::ffff:198.51.100.1".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }
}
