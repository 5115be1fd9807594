//! Receive-only BGP-4 speaker: learns the client prefixes an edgeplane appliance serves from the
//! ISP's routers (issue #6), the way Open Connect appliances do.
//!
//! The routers of a site announce the customer prefixes; the appliance announces nothing back.
//! [`spawn`] starts one session per configured router on the current tokio runtime and keeps
//! [`Speaker::served`], a `watch` of the union over peers of the accepted prefixes, up to date.
//! [`Speaker::status`] and [`render_status`] give the `edgeplane bgp status` table.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgeplane_bgp::SpawnError> {
//! use edgeplane_bgp::{spawn, PeerConfig, SpeakerConfig};
//! let peer = PeerConfig::new("r1", "192.0.2.1".parse().unwrap(), 64500, 64501,
//!                            "192.0.2.10".parse().unwrap());
//! let speaker = spawn(SpeakerConfig { peers: vec![peer], listen: None, grace_secs: 300,
//!                                     connect_retry_secs: 5 })?;
//! let mut served = speaker.served();
//! while served.changed().await.is_ok() {
//!     let prefixes = served.borrow_and_update().clone();
//!     // ...program the XDP maps with `prefixes`...
//! #   let _ = prefixes;
//! }
//! # Ok(()) }
//! ```
//!
//! # Protocol
//!
//! BGP-4 (RFC 4271) over TCP. Our OPEN advertises multiprotocol IPv4 unicast and IPv6 unicast
//! (RFC 4760), route refresh (RFC 2918) and 4-octet AS numbers (RFC 6793; AS_TRANS 23456 goes
//! in the 16-bit field when the local AS is above 65535). IPv4 routes are read from the classic
//! NLRI fields and from MP_REACH/MP_UNREACH, IPv6 routes from MP_REACH/MP_UNREACH; other
//! families are ignored. We never send UPDATEs (nor End-of-RIB). A ROUTE-REFRESH from the peer
//! is ignored: there is nothing to re-send.
//!
//! Message and attribute formats are decoded by `bgpkit-parser` (default features off), except
//! the prefixes: [`wire`] decodes every NLRI itself (withdrawn routes, the IPv4 NLRI field and
//! the IPv4/IPv6 unicast NLRI of MP_REACH/MP_UNREACH), since the parser misreads some (see
//! docs/fuzzing.md). Before
//! and after it, [`wire`] checks the structure so that every malformed message is answered with
//! the NOTIFICATION of RFC 4271 §6: Message Header Error (bad marker, length, type), OPEN
//! Message Error (version, Bad Peer AS, Bad BGP Identifier, Unsupported Optional Parameter,
//! Unacceptable Hold Time for 1 and 2), UPDATE Message Error (Malformed Attribute List,
//! Missing/Unrecognized Well-known Attribute, Attribute Flags/Length Error, Invalid ORIGIN,
//! Invalid NEXT_HOP, Optional Attribute Error, Invalid Network Field, Malformed AS_PATH). An
//! error in an optional attribute this speaker does not use is tolerated (the attribute is
//! discarded, RFC 7606 §2). No input panics the decoder (a property test feeds random bytes).
//!
//! # Session state machine
//!
//! [`fsm::Session`] is pure (time comes in as an argument) and covers OpenSent, OpenConfirm and
//! Established; the socket layer covers Idle, Connect (active: dialing `address:port`) and
//! Active (passive: waiting for the router to dial [`SpeakerConfig::listen`]).
//!
//! * The hold time is the smaller of ours and the peer's; 0 means no keepalives and no hold
//!   timer; 1 and 2 are refused. KEEPALIVEs go out every third of the hold time. When the
//!   hold timer expires we send Hold Timer Expired and drop the connection.
//! * Any unexpected message is a Finite State Machine Error (subcodes of RFC 6608).
//! * After a session ends, an active peer is redialed after the backoff: `connect_retry_secs`
//!   doubling on every attempt that does not reach Established, up to 32 times the base (at
//!   most 10 minutes). A passive peer simply waits for the router to dial again.
//! * Collisions are handled simply: connections are only accepted from passive peers, and a
//!   second connection from a peer whose session is in progress (any state) is closed with
//!   Cease / Connection Collision Resolution. Connections from other addresses are closed.
//! * [`Speaker::shutdown`] sends Cease / Administrative Shutdown on live sessions.
//!
//! # Import policy
//!
//! Per peer ([`ImportPolicy`]): prefix-length bounds for IPv4 and IPv6, an optional list of
//! standard communities of which a route must carry at least one, and an optional maximum
//! number of accepted prefixes. A re-announcement is re-evaluated (its communities may have
//! changed). `received` in the status counts prefixes before policy, `accepted` after.
//!
//! **Max-prefix action:** when an UPDATE would take the peer's accepted prefixes past
//! `max_prefixes`, the prefixes beyond the limit are not accepted, we send NOTIFICATION Cease /
//! Maximum Number of Prefixes Reached (RFC 4486 subcode 1; data: AFI, SAFI, limit) and close
//! the session. Its prefixes (at most the limit) then go through grace handling like any lost
//! session, and the peer is not redialed (active) or its connections are refused with Cease /
//! Connection Rejected (passive) for `max_prefix_restart_secs` (default 300).
//!
//! # Grace
//!
//! When a session is lost for any reason, its accepted prefixes stay in the served set for
//! `grace_secs`, then are withdrawn (checked every 200 ms). If the session comes back in the
//! meantime, new announcements are served at once; the old prefixes are dropped at the grace
//! deadline, or earlier once the new session has sent End-of-RIB (RFC 4724 §2) for every
//! negotiated family. `grace_secs = 0` withdraws at once.
//!
//! # Not implemented
//!
//! Add-Path, graceful restart (the capability; End-of-RIB markers are understood), extended
//! messages (RFC 8654), extended next hop (RFC 8950), enhanced route refresh, TCP-MD5 or TCP-AO
//! authentication, TTL security (GTSM), large and extended communities in the policy, RFC 7606
//! treat-as-withdraw (errors reset the session as RFC 4271 says), outbound routes of any kind.

pub mod config;
pub mod fsm;
pub mod rib;
mod speaker;
pub mod status;
pub mod wire;

pub use config::{ConfigError, ImportPolicy, Mode, PeerConfig, SpeakerConfig};
pub use fsm::SessionState;
pub use speaker::{spawn, SpawnError, Speaker};
pub use status::{render_status, PeerStatus};

pub use ipnet::IpNet;
