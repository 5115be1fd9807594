//! Per-peer status (served as JSON by the agent) and the `edgeplane bgp status` table.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::Mode;
use crate::fsm::SessionState;

/// One peer's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Configured name.
    pub name: String,
    /// Router address.
    pub address: IpAddr,
    /// Router AS.
    pub peer_as: u32,
    /// Active or passive.
    pub mode: Mode,
    /// Session state.
    pub state: SessionState,
    /// Seconds in the current state (for Established: the session's uptime).
    pub state_secs: u64,
    /// Unix time (seconds) the current state was entered.
    pub since_unix: u64,
    /// Prefixes received on the live session (before policy).
    pub received: usize,
    /// Prefixes accepted on the live session (after policy).
    pub accepted: usize,
    /// Prefixes of a lost session still served.
    pub in_grace: usize,
    /// Seconds until the grace prefixes are withdrawn.
    pub grace_remaining_secs: Option<u64>,
    /// Why the last session ended or the last connection attempt failed.
    pub last_error: Option<String>,
}

/// `1d02h03m`, `2h03m04s`, `3m04s`, `5s`.
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Renders the `edgeplane bgp status` table: one line per peer, then the last errors.
pub fn render_status(peers: &[PeerStatus]) -> String {
    let head = [
        "PEER", "ADDRESS", "AS", "STATE", "FOR", "RECEIVED", "ACCEPTED", "GRACE",
    ];
    let rows: Vec<[String; 8]> = peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.address.to_string(),
                p.peer_as.to_string(),
                p.state.to_string(),
                format_duration(p.state_secs),
                p.received.to_string(),
                p.accepted.to_string(),
                match p.grace_remaining_secs {
                    Some(s) if p.in_grace > 0 => {
                        format!("{} ({} left)", p.in_grace, format_duration(s))
                    }
                    _ => "-".to_string(),
                },
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            // Numbers right-aligned, text left-aligned.
            if (5..=6).contains(&i) {
                let _ = write!(l, "{c:>w$}  ");
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    if peers.is_empty() {
        out.push_str("(no BGP peers configured)\n");
    }
    for p in peers.iter().filter(|p| p.last_error.is_some()) {
        let _ = writeln!(
            out,
            "{}: last error: {}",
            p.name,
            p.last_error.as_deref().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_duration(5), "5s");
        assert_eq!(format_duration(65), "1m05s");
        assert_eq!(format_duration(3723), "1h02m03s");
        assert_eq!(format_duration(93_780), "1d02h03m");
    }

    #[test]
    fn table() {
        let p = PeerStatus {
            name: "r1".into(),
            address: "10.0.0.2".parse().unwrap(),
            peer_as: 65002,
            mode: Mode::Active,
            state: SessionState::Established,
            state_secs: 3723,
            since_unix: 0,
            received: 1200,
            accepted: 1187,
            in_grace: 0,
            grace_remaining_secs: None,
            last_error: None,
        };
        let q = PeerStatus {
            name: "router-2".into(),
            address: "2001:db8::2".parse().unwrap(),
            state: SessionState::Idle,
            state_secs: 4,
            received: 0,
            accepted: 0,
            in_grace: 17,
            grace_remaining_secs: Some(296),
            last_error: Some("received Cease: Administrative Shutdown (6/2)".into()),
            ..p.clone()
        };
        let t = render_status(&[p.clone(), q]);
        let expected = "\
PEER      ADDRESS      AS     STATE        FOR       RECEIVED  ACCEPTED  GRACE
r1        10.0.0.2     65002  Established  1h02m03s      1200      1187  -
router-2  2001:db8::2  65002  Idle         4s               0         0  17 (4m56s left)
router-2: last error: received Cease: Administrative Shutdown (6/2)
";
        assert_eq!(t, expected, "\n{t}");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PeerStatus>(&json).unwrap(), p);
        assert!(render_status(&[]).contains("no BGP peers"));
    }
}
