//! The BGP session state machine (RFC 4271 §8), sans I/O.
//!
//! A [`Session`] starts once the TCP connection is up (the socket layer covers Idle, Connect
//! and Active: dialing with backoff, or waiting for the router to dial in). It sends our OPEN
//! and goes to OpenSent; the peer's acceptable OPEN moves it to OpenConfirm (we answer with a
//! KEEPALIVE); the peer's KEEPALIVE moves it to Established. Bytes come in through
//! [`Session::on_message`], time through [`Session::on_timer`]; what to do comes back as
//! [`Action`]s: bytes to send, routes to apply, and a final [`Action::Close`] after which the
//! session is dead and the connection must be dropped.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::wire::{self, code, subcode, Family, LocalOpen, Message, NotifyError, Update};

/// Session states as shown in status. Idle, Connect and Active belong to the socket layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Not trying: waiting out a backoff or hold-down, or stopped.
    Idle,
    /// Dialing the peer (active mode).
    Connect,
    /// Waiting for the peer to dial in (passive mode).
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for the peer's KEEPALIVE.
    OpenConfirm,
    /// Up: UPDATEs flow.
    Established,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Hold time used until OPENs are exchanged (RFC 4271 §8.2.2 suggests 4 minutes).
pub const LARGE_HOLD_TIME: Duration = Duration::from_secs(240);

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We sent this NOTIFICATION.
    Sent(NotifyError),
    /// The peer sent a NOTIFICATION.
    Received {
        /// Error code.
        code: u8,
        /// Error subcode.
        subcode: u8,
    },
    /// The TCP connection ended without a NOTIFICATION.
    ConnectionLost(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Sent(e) => write!(f, "sent {e}"),
            CloseReason::Received { code, subcode } => write!(
                f,
                "received {} ({code}/{subcode})",
                wire::notification_name(*code, *subcode)
            ),
            CloseReason::ConnectionLost(why) => write!(f, "connection lost: {why}"),
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the connection.
    Send(Vec<u8>),
    /// The session reached Established.
    Established,
    /// Apply this UPDATE to the peer's RIB.
    Update(Update),
    /// End-of-RIB has been received for every negotiated family.
    EndOfRib,
    /// The session is over: flush what was sent, close the connection.
    Close(CloseReason),
}

/// Parameters of the session from the peer's OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Hold time in use (0: none).
    pub hold_time: u16,
    /// Both sides support 4-octet AS numbers.
    pub four_octet_as: bool,
    /// Families both sides support.
    pub families: Vec<Family>,
    /// The peer's BGP identifier.
    pub router_id: std::net::Ipv4Addr,
}

/// One BGP session over one connection.
#[derive(Debug)]
pub struct Session {
    local: LocalOpen,
    peer_as: u32,
    state: SessionState,
    negotiated: Option<Negotiated>,
    hold_deadline: Option<Instant>,
    keepalive_due: Option<Instant>,
    eor_pending: Vec<Family>,
}

impl Session {
    /// A session on a fresh connection: sends our OPEN.
    pub fn start(local: LocalOpen, peer_as: u32, now: Instant) -> (Self, Vec<Action>) {
        let open = wire::encode_open(&local);
        let s = Self {
            local,
            peer_as,
            state: SessionState::OpenSent,
            negotiated: None,
            hold_deadline: Some(now + LARGE_HOLD_TIME),
            keepalive_due: None,
            eor_pending: Vec::new(),
        };
        (s, vec![Action::Send(open)])
    }

    /// Current state (Idle once closed).
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// What was negotiated, once the peer's OPEN was accepted.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Whether UPDATEs use 4-octet AS numbers (decode with this).
    pub fn four_octet_as(&self) -> bool {
        self.negotiated.as_ref().is_none_or(|n| n.four_octet_as)
    }

    /// The next instant [`Session::on_timer`] must be called at.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.hold_deadline, self.keepalive_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the session with a NOTIFICATION (errors found outside the FSM: framing, max-prefix,
    /// shutdown, collision).
    pub fn notify(&mut self, err: NotifyError) -> Vec<Action> {
        if self.state == SessionState::Idle {
            return Vec::new();
        }
        self.close();
        vec![
            Action::Send(err.encode()),
            Action::Close(CloseReason::Sent(err)),
        ]
    }

    /// The connection ended (EOF or I/O error).
    pub fn connection_lost(&mut self, why: impl Into<String>) -> Vec<Action> {
        if self.state == SessionState::Idle {
            return Vec::new();
        }
        self.close();
        vec![Action::Close(CloseReason::ConnectionLost(why.into()))]
    }

    fn close(&mut self) {
        self.state = SessionState::Idle;
        self.hold_deadline = None;
        self.keepalive_due = None;
    }

    fn hold(&self) -> Option<Duration> {
        match &self.negotiated {
            Some(n) if n.hold_time == 0 => None,
            Some(n) => Some(Duration::from_secs(n.hold_time.into())),
            None => Some(LARGE_HOLD_TIME),
        }
    }

    fn keepalive_interval(&self) -> Option<Duration> {
        self.hold().map(|h| (h / 3).max(Duration::from_secs(1)))
    }

    /// Timers: hold timer expiry ends the session; keepalives go out every hold/3.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if self.hold_deadline.is_some_and(|t| t <= now) {
            return self.notify(NotifyError::new(
                code::HOLD_TIMER_EXPIRED,
                0,
                "no message from the peer within the hold time",
            ));
        }
        let mut out = Vec::new();
        if let Some(t) = self.keepalive_due.filter(|t| *t <= now) {
            out.push(Action::Send(wire::encode_keepalive()));
            // Skip missed beats rather than bursting.
            let iv = self.keepalive_interval().unwrap_or(Duration::from_secs(30));
            self.keepalive_due = Some(if t + iv > now { t + iv } else { now + iv });
        }
        out
    }

    /// One whole message (as delimited by [`wire::frame_len`]).
    pub fn on_message(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        if self.state == SessionState::Idle {
            return Vec::new();
        }
        let msg = match wire::decode(bytes, self.four_octet_as()) {
            Ok(m) => m,
            Err(e) => return self.notify(e),
        };
        if let Message::Notification { code, subcode, .. } = msg {
            self.close();
            return vec![Action::Close(CloseReason::Received { code, subcode })];
        }
        // Any message restarts the hold timer.
        self.hold_deadline = self.hold().map(|h| now + h);
        match (self.state, msg) {
            (SessionState::OpenSent, Message::Open(open)) => self.on_open(open, now),
            (SessionState::OpenConfirm, Message::Keepalive) => {
                self.state = SessionState::Established;
                self.eor_pending = self
                    .negotiated
                    .as_ref()
                    .map(|n| n.families.clone())
                    .unwrap_or_default();
                vec![Action::Established]
            }
            (SessionState::Established, Message::Keepalive | Message::RouteRefresh) => Vec::new(),
            (SessionState::Established, Message::Update(u)) => {
                let mut out = Vec::new();
                if let Some(f) = u.end_of_rib {
                    let before = self.eor_pending.len();
                    self.eor_pending.retain(|x| *x != f);
                    if before > 0 && self.eor_pending.is_empty() {
                        out.push(Action::EndOfRib);
                    }
                }
                if !u.announced.is_empty() || !u.withdrawn.is_empty() {
                    out.insert(0, Action::Update(u));
                }
                out
            }
            (state, msg) => {
                let sub = match state {
                    SessionState::OpenSent => subcode::FSM_UNEXPECTED_IN_OPENSENT,
                    SessionState::OpenConfirm => subcode::FSM_UNEXPECTED_IN_OPENCONFIRM,
                    _ => subcode::FSM_UNEXPECTED_IN_ESTABLISHED,
                };
                let what = match msg {
                    Message::Open(_) => "OPEN",
                    Message::Update(_) => "UPDATE",
                    Message::Keepalive => "KEEPALIVE",
                    _ => "ROUTE-REFRESH",
                };
                self.notify(NotifyError::new(
                    code::FSM,
                    sub,
                    format!("unexpected {what} in {state}"),
                ))
            }
        }
    }

    fn on_open(&mut self, open: wire::Open, now: Instant) -> Vec<Action> {
        if open.asn != self.peer_as {
            return self.notify(
                NotifyError::new(
                    code::OPEN,
                    subcode::BAD_PEER_AS,
                    format!("peer AS {} (expected {})", open.asn, self.peer_as),
                )
                .with_data(open.asn16.to_be_bytes().to_vec()),
            );
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return self.notify(NotifyError::new(
                code::OPEN,
                subcode::UNACCEPTABLE_HOLD_TIME,
                format!("hold time {}", open.hold_time),
            ));
        }
        let ibgp = self.peer_as == self.local.asn;
        if open.router_id.is_unspecified() || (ibgp && open.router_id == self.local.router_id) {
            return self.notify(
                NotifyError::new(
                    code::OPEN,
                    subcode::BAD_BGP_IDENTIFIER,
                    format!("BGP identifier {}", open.router_id),
                )
                .with_data(open.router_id.octets().to_vec()),
            );
        }
        let ours = [Family::Ipv4Unicast, Family::Ipv6Unicast];
        let families = if open.has_mp_capability {
            open.families
                .iter()
                .copied()
                .filter(|f| ours.contains(f))
                .collect()
        } else {
            vec![Family::Ipv4Unicast]
        };
        self.negotiated = Some(Negotiated {
            hold_time: open.hold_time.min(self.local.hold_time),
            four_octet_as: open.four_octet_as,
            families,
            router_id: open.router_id,
        });
        self.state = SessionState::OpenConfirm;
        self.hold_deadline = self.hold().map(|h| now + h);
        self.keepalive_due = self.keepalive_interval().map(|k| now + k);
        vec![Action::Send(wire::encode_keepalive())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;

    fn local() -> LocalOpen {
        LocalOpen {
            asn: 65001,
            hold_time: 9,
            router_id: "10.0.0.1".parse().unwrap(),
        }
    }

    fn peer_open(asn: u32, hold: u16) -> Vec<u8> {
        wire::encode_open(&LocalOpen {
            asn,
            hold_time: hold,
            router_id: "10.0.0.2".parse().unwrap(),
        })
    }

    fn established(now: Instant) -> Session {
        let (mut s, _) = Session::start(local(), 65002, now);
        s.on_message(&peer_open(65002, 30), now);
        assert_eq!(
            s.on_message(&wire::encode_keepalive(), now),
            vec![Action::Established]
        );
        s
    }

    fn sent_code(actions: &[Action]) -> Option<(u8, u8)> {
        actions.iter().find_map(|a| match a {
            Action::Close(CloseReason::Sent(e)) => Some((e.code, e.subcode)),
            _ => None,
        })
    }

    #[test]
    fn handshake_and_negotiation() {
        let t0 = Instant::now();
        let (mut s, a) = Session::start(local(), 65002, t0);
        assert!(matches!(&a[..], [Action::Send(b)] if b[18] == 1));
        assert_eq!(s.state(), SessionState::OpenSent);
        let a = s.on_message(&peer_open(65002, 30), t0);
        assert_eq!(a, vec![Action::Send(wire::encode_keepalive())]);
        assert_eq!(s.state(), SessionState::OpenConfirm);
        let n = s.negotiated().unwrap();
        assert_eq!(n.hold_time, 9);
        assert!(n.four_octet_as);
        assert_eq!(n.families, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
        assert_eq!(
            s.on_message(&wire::encode_keepalive(), t0),
            vec![Action::Established]
        );
        assert_eq!(s.state(), SessionState::Established);
        // Keepalive every 3 s, hold timer expiry at 9 s without traffic.
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(3)));
        let a = s.on_timer(t0 + Duration::from_secs(3));
        assert_eq!(a, vec![Action::Send(wire::encode_keepalive())]);
        let a = s.on_timer(t0 + Duration::from_secs(9));
        assert_eq!(sent_code(&a), Some((4, 0)));
        assert_eq!(s.state(), SessionState::Idle);
        assert!(s.on_timer(t0 + Duration::from_secs(20)).is_empty());
    }

    #[test]
    fn messages_restart_the_hold_timer() {
        let t0 = Instant::now();
        let mut s = established(t0);
        s.on_message(&wire::encode_keepalive(), t0 + Duration::from_secs(8));
        assert!(sent_code(&s.on_timer(t0 + Duration::from_secs(10))).is_none());
        assert_eq!(
            sent_code(&s.on_timer(t0 + Duration::from_secs(17))),
            Some((4, 0))
        );
    }

    #[test]
    fn zero_hold_time_means_no_timers() {
        let t0 = Instant::now();
        let (mut s, _) = Session::start(local(), 65002, t0);
        s.on_message(&peer_open(65002, 0), t0);
        assert_eq!(s.negotiated().unwrap().hold_time, 0);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn open_errors() {
        let t0 = Instant::now();
        let (mut s, _) = Session::start(local(), 65002, t0);
        assert_eq!(
            sent_code(&s.on_message(&peer_open(65003, 30), t0)),
            Some((2, 2))
        );
        let (mut s, _) = Session::start(local(), 65002, t0);
        assert_eq!(
            sent_code(&s.on_message(&peer_open(65002, 2), t0)),
            Some((2, 6))
        );
        // 4-octet peer AS arrives through the capability, AS_TRANS in the header.
        let (mut s, _) = Session::start(local(), 4_200_000_002, t0);
        s.on_message(&peer_open(4_200_000_002, 30), t0);
        assert_eq!(s.state(), SessionState::OpenConfirm);
        // iBGP with our own identifier.
        let (mut s, _) = Session::start(local(), 65001, t0);
        let same_id = wire::encode_open(&local());
        assert_eq!(sent_code(&s.on_message(&same_id, t0)), Some((2, 3)));
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let t0 = Instant::now();
        let (mut s, _) = Session::start(local(), 65002, t0);
        assert_eq!(
            sent_code(&s.on_message(&wire::encode_keepalive(), t0)),
            Some((5, 1))
        );
        let (mut s, _) = Session::start(local(), 65002, t0);
        s.on_message(&peer_open(65002, 30), t0);
        let upd = build::withdraw_v4(&["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(sent_code(&s.on_message(&upd, t0)), Some((5, 2)));
        let mut s = established(t0);
        assert_eq!(
            sent_code(&s.on_message(&peer_open(65002, 30), t0)),
            Some((5, 3))
        );
    }

    #[test]
    fn updates_eor_and_errors() {
        let t0 = Instant::now();
        let mut s = established(t0);
        let p = "198.51.100.0/24".parse().unwrap();
        let a = s.on_message(&build::announce_v4(&[p], 65002, [10, 0, 0, 2], &[]), t0);
        assert!(matches!(&a[..], [Action::Update(u)] if u.announced == vec![p]));
        assert!(s.on_message(&build::update(&[], &[], &[]), t0).is_empty());
        let v6_eor = build::update(&[], &build::attr(0x80, 15, &[0, 2, 1]), &[]);
        assert_eq!(s.on_message(&v6_eor, t0), vec![Action::EndOfRib]);
        // Malformed: NLRI /40 → Invalid Network Field, session closed.
        let bad = build::update(&[], &[], &[40, 1, 2, 3, 4, 5]);
        let a = s.on_message(&bad, t0);
        assert!(matches!(&a[0], Action::Send(b) if b[18] == 3 && b[19] == 3 && b[20] == 10));
        assert_eq!(sent_code(&a), Some((3, 10)));
        assert_eq!(s.state(), SessionState::Idle);
    }

    #[test]
    fn notification_from_peer_closes() {
        let t0 = Instant::now();
        let mut s = established(t0);
        let a = s.on_message(&wire::encode_notification(6, 2, &[]), t0);
        assert_eq!(
            a,
            vec![Action::Close(CloseReason::Received {
                code: 6,
                subcode: 2
            })]
        );
        assert_eq!(s.state(), SessionState::Idle);
    }
}
