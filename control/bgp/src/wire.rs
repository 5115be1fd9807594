//! BGP-4 messages on the wire: framing, decoding with the RFC 4271 §6 error codes, and the
//! few messages this speaker sends (OPEN, KEEPALIVE, NOTIFICATION).
//!
//! Decoding of OPEN and UPDATE bodies is done by `bgpkit-parser`, except the prefixes; this
//! module checks the structure the crate is lenient about first (header, UPDATE framing,
//! attribute framing, ORIGIN values, AS_PATH segments, every NLRI including MP_REACH/MP_UNREACH)
//! so that every malformed message maps to the NOTIFICATION code and subcode RFC 4271 §6 asks
//! for, decodes the prefixes from the NLRI it checked (the crate misreads some), and then turns
//! the crate's RFC 7606 validation warnings about the attributes into NOTIFICATIONs as well.
//! Nothing here panics on input.

use std::net::Ipv4Addr;

use bgpkit_parser::error::BgpValidationWarning;
use bgpkit_parser::models::capabilities::{
    BgpCapabilityType, FourOctetAsCapability, MultiprotocolExtensionsCapability,
    RouteRefreshCapability,
};
use bgpkit_parser::models::{
    Afi, AsnLength, AttrType, AttributeValue, BgpMessage, BgpOpenMessage, Capability,
    CapabilityValue, Community, MetaCommunity, Nlri, OptParam, ParamValue, Safi,
};
use bytes::Bytes;
use ipnet::IpNet;

/// Size of the fixed BGP header: marker (16), length (2), type (1).
pub const HEADER_LEN: usize = 19;
/// Largest message without the Extended Message capability (RFC 4271 §4.1).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The AS number a 4-octet-AS speaker puts in 16-bit fields when its AS does not fit (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 4486).
pub mod code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
}

/// NOTIFICATION error subcodes (RFC 4271 §6, RFC 4486, RFC 6608).
pub mod subcode {
    /// Header: Connection Not Synchronized (marker not all ones).
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    /// Header: Bad Message Length.
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    /// Header: Bad Message Type.
    pub const BAD_MESSAGE_TYPE: u8 = 3;
    /// OPEN: Unsupported Version Number.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    /// OPEN: Bad Peer AS.
    pub const BAD_PEER_AS: u8 = 2;
    /// OPEN: Bad BGP Identifier.
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    /// OPEN: Unsupported Optional Parameter.
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    /// OPEN: Unacceptable Hold Time.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// UPDATE: Malformed Attribute List.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    /// UPDATE: Unrecognized Well-known Attribute.
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    /// UPDATE: Missing Well-known Attribute.
    pub const MISSING_WELL_KNOWN: u8 = 3;
    /// UPDATE: Attribute Flags Error.
    pub const ATTRIBUTE_FLAGS: u8 = 4;
    /// UPDATE: Attribute Length Error.
    pub const ATTRIBUTE_LENGTH: u8 = 5;
    /// UPDATE: Invalid ORIGIN Attribute.
    pub const INVALID_ORIGIN: u8 = 6;
    /// UPDATE: Invalid NEXT_HOP Attribute.
    pub const INVALID_NEXT_HOP: u8 = 8;
    /// UPDATE: Optional Attribute Error.
    pub const OPTIONAL_ATTRIBUTE: u8 = 9;
    /// UPDATE: Invalid Network Field.
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    /// UPDATE: Malformed AS_PATH.
    pub const MALFORMED_AS_PATH: u8 = 11;
    /// FSM: Receive Unexpected Message in OpenSent State (RFC 6608).
    pub const FSM_UNEXPECTED_IN_OPENSENT: u8 = 1;
    /// FSM: Receive Unexpected Message in OpenConfirm State (RFC 6608).
    pub const FSM_UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    /// FSM: Receive Unexpected Message in Established State (RFC 6608).
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    /// Cease: Maximum Number of Prefixes Reached (RFC 4486).
    pub const MAX_PREFIXES: u8 = 1;
    /// Cease: Administrative Shutdown (RFC 4486).
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Cease: Connection Rejected (RFC 4486).
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Cease: Connection Collision Resolution (RFC 4486).
    pub const CONNECTION_COLLISION: u8 = 7;
}

/// Message type codes.
mod msg_type {
    pub(super) const OPEN: u8 = 1;
    pub(super) const UPDATE: u8 = 2;
    pub(super) const NOTIFICATION: u8 = 3;
    pub(super) const KEEPALIVE: u8 = 4;
    pub(super) const ROUTE_REFRESH: u8 = 5;
}

/// An error found in a received message: what to put in the NOTIFICATION we answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyError {
    /// Error code (see [`code`]).
    pub code: u8,
    /// Error subcode (see [`subcode`]).
    pub subcode: u8,
    /// Data field of the NOTIFICATION.
    pub data: Vec<u8>,
    /// Human-readable reason, for logs and status.
    pub reason: String,
}

impl NotifyError {
    /// A new error with empty data.
    pub fn new(code: u8, subcode: u8, reason: impl Into<String>) -> Self {
        Self {
            code,
            subcode,
            data: Vec::new(),
            reason: reason.into(),
        }
    }

    /// The same error with a data field.
    pub fn with_data(mut self, data: Vec<u8>) -> Self {
        self.data = data;
        self
    }

    /// Encodes the NOTIFICATION message for this error.
    pub fn encode(&self) -> Vec<u8> {
        encode_notification(self.code, self.subcode, &self.data)
    }
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}/{}): {}",
            notification_name(self.code, self.subcode),
            self.code,
            self.subcode,
            self.reason
        )
    }
}

/// Address family this speaker handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 unicast (AFI 1, SAFI 1).
    Ipv4Unicast,
    /// IPv6 unicast (AFI 2, SAFI 1).
    Ipv6Unicast,
}

/// The parts of a peer's OPEN this speaker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// BGP version (must be 4).
    pub version: u8,
    /// The peer's AS: the 4-octet AS capability's value if present, else the 16-bit field.
    pub asn: u32,
    /// The 16-bit "My Autonomous System" field as sent.
    pub asn16: u16,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Whether the 4-octet AS capability was present.
    pub four_octet_as: bool,
    /// Multiprotocol families advertised (IPv4/IPv6 unicast only; others ignored).
    pub families: Vec<Family>,
    /// Whether any multiprotocol capability was present at all.
    pub has_mp_capability: bool,
    /// Whether route refresh was advertised.
    pub route_refresh: bool,
}

/// The parts of an UPDATE this speaker uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Prefixes announced (IPv4 NLRI and MP_REACH for IPv4/IPv6 unicast).
    pub announced: Vec<IpNet>,
    /// Prefixes withdrawn (withdrawn routes and MP_UNREACH for IPv4/IPv6 unicast).
    pub withdrawn: Vec<IpNet>,
    /// Standard communities (RFC 1997) carried, as (high, low) halves.
    pub communities: Vec<(u16, u16)>,
    /// Set when the UPDATE is an End-of-RIB marker (RFC 4724 §2) for a family.
    pub end_of_rib: Option<Family>,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION received from the peer.
    Notification {
        /// Error code.
        code: u8,
        /// Error subcode.
        subcode: u8,
        /// Data field.
        data: Vec<u8>,
    },
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH (ignored: this speaker announces nothing).
    RouteRefresh,
}

/// Checks the header at the front of `buf`. Returns the length of the first message when all of
/// it is in `buf`, `None` when more bytes are needed, or the header error.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, NotifyError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(NotifyError::new(
            code::HEADER,
            subcode::CONNECTION_NOT_SYNCHRONIZED,
            "marker is not all ones",
        ));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    let ty = buf[18];
    let min = match ty {
        msg_type::OPEN => 29,
        msg_type::UPDATE => 23,
        msg_type::NOTIFICATION => 21,
        msg_type::KEEPALIVE => 19,
        msg_type::ROUTE_REFRESH => 23,
        _ => {
            return Err(NotifyError::new(
                code::HEADER,
                subcode::BAD_MESSAGE_TYPE,
                format!("unknown message type {ty}"),
            )
            .with_data(vec![ty]))
        }
    };
    let bad_len = len < min || len > MAX_MESSAGE_LEN || (ty == msg_type::KEEPALIVE && len != 19);
    if bad_len {
        return Err(NotifyError::new(
            code::HEADER,
            subcode::BAD_MESSAGE_LENGTH,
            format!("bad length {len} for message type {ty}"),
        )
        .with_data(buf[16..18].to_vec()));
    }
    Ok(if buf.len() >= len { Some(len) } else { None })
}

/// Decodes one whole message (header included, as delimited by [`frame_len`]).
/// `four_octet_as` says whether AS numbers in UPDATEs are 4 octets (both sides advertised the
/// capability).
pub fn decode(msg: &[u8], four_octet_as: bool) -> Result<Message, NotifyError> {
    let len = match frame_len(msg)? {
        Some(len) if len == msg.len() => len,
        _ => {
            return Err(NotifyError::new(
                code::HEADER,
                subcode::BAD_MESSAGE_LENGTH,
                "length field does not match the message",
            )
            .with_data(msg.get(16..18).map(<[u8]>::to_vec).unwrap_or_default()))
        }
    };
    let body = &msg[HEADER_LEN..len];
    match msg[18] {
        msg_type::OPEN => decode_open(msg).map(Message::Open),
        msg_type::UPDATE => decode_update(msg, body, four_octet_as).map(Message::Update),
        msg_type::NOTIFICATION => Ok(Message::Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        }),
        msg_type::KEEPALIVE => Ok(Message::Keepalive),
        _ => Ok(Message::RouteRefresh),
    }
}

fn open_err(subcode: u8, reason: impl Into<String>) -> NotifyError {
    NotifyError::new(code::OPEN, subcode, reason)
}

fn update_err(subcode: u8, reason: impl Into<String>) -> NotifyError {
    NotifyError::new(code::UPDATE, subcode, reason)
}

fn decode_open(msg: &[u8]) -> Result<Open, NotifyError> {
    let body = &msg[HEADER_LEN..];
    // Version 1, AS 2, hold 2, id 4, opt len 1.
    let opt_len = body[9] as usize;
    if 10 + opt_len != body.len() {
        return Err(NotifyError::new(
            code::HEADER,
            subcode::BAD_MESSAGE_LENGTH,
            "OPEN optional parameters length does not match the message length",
        )
        .with_data(msg[16..18].to_vec()));
    }
    if body[0] != 4 {
        return Err(open_err(
            subcode::UNSUPPORTED_VERSION,
            format!("BGP version {}", body[0]),
        )
        .with_data(vec![0, 4]));
    }
    // Walk the optional parameters ourselves: each must fit exactly, and only capabilities
    // (type 2) are supported.
    let mut params = &body[10..];
    while !params.is_empty() {
        if params.len() < 2 || params.len() < 2 + params[1] as usize {
            return Err(open_err(0, "truncated optional parameter"));
        }
        let (ty, plen) = (params[0], params[1] as usize);
        if ty != 2 {
            return Err(open_err(
                subcode::UNSUPPORTED_OPTIONAL_PARAMETER,
                format!("optional parameter type {ty}"),
            ));
        }
        let mut caps = &params[2..2 + plen];
        while !caps.is_empty() {
            if caps.len() < 2 || caps.len() < 2 + caps[1] as usize {
                return Err(open_err(0, "truncated capability"));
            }
            caps = &caps[2 + caps[1] as usize..];
        }
        params = &params[2 + plen..];
    }
    let parsed = match bgpkit_parser::parser::bgp::parse_bgp_message(
        &mut Bytes::copy_from_slice(msg),
        false,
        &AsnLength::Bits32,
    ) {
        Ok(BgpMessage::Open(open)) => open,
        Ok(_) => return Err(open_err(0, "not an OPEN")),
        Err(e) => return Err(open_err(0, format!("malformed OPEN: {e}"))),
    };
    let asn16 = u16::from_be_bytes([body[1], body[2]]);
    let mut open = Open {
        version: parsed.version,
        asn: u32::from(asn16),
        asn16,
        hold_time: parsed.hold_time,
        router_id: parsed.bgp_identifier,
        four_octet_as: false,
        families: Vec::new(),
        has_mp_capability: false,
        route_refresh: false,
    };
    for param in &parsed.opt_params {
        let ParamValue::Capacities(caps) = &param.param_value else {
            continue;
        };
        for cap in caps {
            match (&cap.ty, &cap.value) {
                (_, CapabilityValue::FourOctetAs(c)) => {
                    open.four_octet_as = true;
                    open.asn = c.asn;
                }
                (_, CapabilityValue::MultiprotocolExtensions(mp)) => {
                    open.has_mp_capability = true;
                    let fam = match (mp.afi, mp.safi) {
                        (Afi::Ipv4, Safi::Unicast) => Some(Family::Ipv4Unicast),
                        (Afi::Ipv6, Safi::Unicast) => Some(Family::Ipv6Unicast),
                        _ => None,
                    };
                    if let Some(f) = fam {
                        if !open.families.contains(&f) {
                            open.families.push(f);
                        }
                    }
                }
                (BgpCapabilityType::MULTIPROTOCOL_EXTENSIONS_FOR_BGP_4, _) => {
                    // An MP capability for a family the crate does not know.
                    open.has_mp_capability = true;
                }
                (_, CapabilityValue::RouteRefresh(_)) => open.route_refresh = true,
                (BgpCapabilityType::SUPPORT_FOR_4_OCTET_AS_NUMBER_CAPABILITY, _) => {
                    return Err(open_err(0, "malformed 4-octet AS capability"));
                }
                _ => {}
            }
        }
    }
    Ok(open)
}

/// Structural checks the parser crate is lenient about, with exact subcodes.
/// The prefixes of an UPDATE (withdrawn routes, the IPv4 NLRI field, and the IPv4/IPv6 unicast
/// NLRI of MP_REACH_NLRI / MP_UNREACH_NLRI), decoded here rather than by the parser: found by
/// the `bgp_message` fuzz target, bgpkit-parser drops every prefix after a leading zero-length
/// one in the MP attributes and misreads some ordinary NLRI (it guesses at ADD-PATH), and a
/// prefix this speaker serves must be exactly one the router sent.
#[derive(Debug, Default)]
struct MpPrefixes {
    announced: Vec<IpNet>,
    withdrawn: Vec<IpNet>,
}

fn check_update_structure(body: &[u8], four_octet_as: bool) -> Result<MpPrefixes, NotifyError> {
    let mut mp = MpPrefixes::default();
    let malformed = |r: &str| update_err(subcode::MALFORMED_ATTRIBUTE_LIST, r.to_string());
    let wlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    if 2 + wlen + 2 > body.len() {
        return Err(malformed("withdrawn routes length exceeds the message"));
    }
    check_nlri(&body[2..2 + wlen], 32)?;
    nlri_prefixes(&body[2..2 + wlen], false, &mut mp.withdrawn);
    let alen_at = 2 + wlen;
    let alen = u16::from_be_bytes([body[alen_at], body[alen_at + 1]]) as usize;
    let attrs_at = alen_at + 2;
    if attrs_at + alen > body.len() {
        return Err(malformed("total path attribute length exceeds the message"));
    }
    let mut attrs = &body[attrs_at..attrs_at + alen];
    while !attrs.is_empty() {
        if attrs.len() < 3 {
            return Err(malformed("truncated attribute header"));
        }
        let (flags, ty) = (attrs[0], attrs[1]);
        let extended = flags & 0x10 != 0;
        let (hlen, vlen) = if extended {
            if attrs.len() < 4 {
                return Err(malformed("truncated attribute header"));
            }
            (4, u16::from_be_bytes([attrs[2], attrs[3]]) as usize)
        } else {
            (3, attrs[2] as usize)
        };
        if attrs.len() < hlen + vlen {
            // Framing error: the attribute list cannot be parsed (RFC 7606 §4 calls this a
            // malformed attribute list; BIRD answers the same).
            return Err(malformed(&format!(
                "attribute {ty} length {vlen} runs past the attribute list"
            )));
        }
        let whole = &attrs[..hlen + vlen];
        let value = &attrs[hlen..hlen + vlen];
        match ty {
            1 if value.len() == 1 && value[0] > 2 => {
                return Err(update_err(
                    subcode::INVALID_ORIGIN,
                    format!("ORIGIN value {}", value[0]),
                )
                .with_data(whole.to_vec()));
            }
            2 => check_as_path(value, if four_octet_as { 4 } else { 2 })?,
            14 => check_mp_nlri(value, true, &mut mp.announced)
                .map_err(|e| e.with_data(whole.to_vec()))?,
            15 => check_mp_nlri(value, false, &mut mp.withdrawn)
                .map_err(|e| e.with_data(whole.to_vec()))?,
            17 => check_as_path(value, 4)?,
            _ => {}
        }
        attrs = &attrs[hlen + vlen..];
    }
    check_nlri(&body[attrs_at + alen..], 32)?;
    // The IPv4 NLRI field first, then the MP attributes, as they stand in the message.
    let mut announced = Vec::new();
    nlri_prefixes(&body[attrs_at + alen..], false, &mut announced);
    announced.append(&mut mp.announced);
    mp.announced = announced;
    Ok(mp)
}

fn check_as_path(mut v: &[u8], asn_size: usize) -> Result<(), NotifyError> {
    while !v.is_empty() {
        if v.len() < 2 {
            return Err(update_err(
                subcode::MALFORMED_AS_PATH,
                "truncated AS_PATH segment",
            ));
        }
        let (ty, n) = (v[0], v[1] as usize);
        if !(1..=4).contains(&ty) {
            return Err(update_err(
                subcode::MALFORMED_AS_PATH,
                format!("AS_PATH segment type {ty}"),
            ));
        }
        if n == 0 || v.len() < 2 + n * asn_size {
            return Err(update_err(
                subcode::MALFORMED_AS_PATH,
                "AS_PATH segment length does not match the attribute",
            ));
        }
        v = &v[2 + n * asn_size..];
    }
    Ok(())
}

/// Checks a run of (length, prefix) NLRI entries: lengths within `max_bits`, bytes present.
/// The NLRI of an MP_REACH_NLRI (`reach`) or MP_UNREACH_NLRI value, for the families this
/// speaker takes (IPv4 and IPv6 unicast): the value holds its fixed fields, and every prefix
/// length fits the family with its bytes present. The parser below is lenient here (found by
/// the `bgp_message` fuzz target: a prefix length of 184 in IPv6 NLRI came out as a made-up
/// prefix), and a prefix we would serve must be exactly the one the router sent. Other
/// families are ignored, as the parser ignores them.
fn check_mp_nlri(v: &[u8], reach: bool, out: &mut Vec<IpNet>) -> Result<(), NotifyError> {
    let bad = |r: &str| update_err(subcode::OPTIONAL_ATTRIBUTE, r.to_string());
    let (Some(afi), Some(&safi)) = (v.get(..2), v.get(2)) else {
        return Err(bad("MP_(UN)REACH_NLRI shorter than its AFI and SAFI"));
    };
    let max_bits = match (u16::from_be_bytes([afi[0], afi[1]]), safi) {
        (1, 1) => 32,
        (2, 1) => 128,
        _ => return Ok(()),
    };
    let nlri = if reach {
        let next_hop = usize::from(
            *v.get(3)
                .ok_or_else(|| bad("MP_REACH_NLRI without a next hop length"))?,
        );
        // The next hop, then one reserved octet.
        v.get(4 + next_hop + 1..)
            .ok_or_else(|| bad("MP_REACH_NLRI next hop runs past the attribute"))?
    } else {
        &v[3..]
    };
    check_nlri(nlri, max_bits)?;
    nlri_prefixes(nlri, max_bits == 128, out);
    Ok(())
}

/// The prefixes of NLRI that [`check_nlri`] accepted, in order.
fn nlri_prefixes(mut v: &[u8], v6: bool, out: &mut Vec<IpNet>) {
    while let Some(&bits) = v.first() {
        let n = usize::from(bits).div_ceil(8);
        let bytes = &v[1..1 + n];
        let net = if v6 {
            let mut a = [0u8; 16];
            a[..n].copy_from_slice(bytes);
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(a), bits).map(IpNet::V6)
        } else {
            let mut a = [0u8; 4];
            a[..n].copy_from_slice(bytes);
            ipnet::Ipv4Net::new(Ipv4Addr::from(a), bits).map(IpNet::V4)
        };
        out.extend(net.ok());
        v = &v[1 + n..];
    }
}

fn check_nlri(mut v: &[u8], max_bits: u8) -> Result<(), NotifyError> {
    while let Some(&bits) = v.first() {
        let bytes = (bits as usize).div_ceil(8);
        if bits > max_bits || v.len() < 1 + bytes {
            return Err(update_err(
                subcode::INVALID_NETWORK_FIELD,
                format!("invalid prefix length {bits} in NLRI"),
            ));
        }
        v = &v[1 + bytes..];
    }
    Ok(())
}

fn warning_to_error(w: &BgpValidationWarning) -> Option<NotifyError> {
    use BgpValidationWarning as W;
    let (sub, reason) = match w {
        W::AttributeFlagsError { attr_type, .. } => (
            subcode::ATTRIBUTE_FLAGS,
            format!("flags of attribute {attr_type:?}"),
        ),
        W::AttributeLengthError {
            attr_type,
            actual_length,
            ..
        } => (
            subcode::ATTRIBUTE_LENGTH,
            format!("length {actual_length} of attribute {attr_type:?}"),
        ),
        W::MissingWellKnownAttribute { attr_type } => {
            let e = update_err(
                subcode::MISSING_WELL_KNOWN,
                format!("missing well-known attribute {attr_type:?}"),
            )
            .with_data(vec![u8::from(*attr_type)]);
            return Some(e);
        }
        W::UnrecognizedWellKnownAttribute { attr_type_code } => (
            subcode::UNRECOGNIZED_WELL_KNOWN,
            format!("unrecognized well-known attribute {attr_type_code}"),
        ),
        W::InvalidOriginAttribute { value } => {
            (subcode::INVALID_ORIGIN, format!("ORIGIN value {value}"))
        }
        W::InvalidNextHopAttribute { reason } => (subcode::INVALID_NEXT_HOP, reason.clone()),
        W::MalformedAsPath { reason } => (subcode::MALFORMED_AS_PATH, reason.clone()),
        W::OptionalAttributeError { attr_type, reason } => {
            // Only optional attributes this speaker reads end the session; an optional
            // attribute the parser cannot decode but we do not use is discarded (RFC 7606 §2).
            // MP_REACH/MP_UNREACH_NLRI are checked and decoded by `check_update_structure`
            // instead: the parser misreads NLRI that starts with a zero-length prefix (found
            // by the `bgp_message` fuzz target: `::/0` then more prefixes was refused as a
            // "truncated IPv6 prefix"), and their next hop is not used here.
            let used = matches!(attr_type, AttrType::COMMUNITIES | AttrType::AS4_PATH);
            if !used {
                return None;
            }
            (
                subcode::OPTIONAL_ATTRIBUTE,
                format!("attribute {attr_type:?}: {reason}"),
            )
        }
        W::DuplicateAttribute { attr_type } => (
            subcode::MALFORMED_ATTRIBUTE_LIST,
            format!("attribute {attr_type:?} appears twice"),
        ),
        // NLRI is checked and decoded by `check_update_structure` (see MpPrefixes); the
        // parser's view of it is not used, and it misreads valid NLRI (found by the
        // `bgp_message` fuzz target: a valid UPDATE refused as "Invalid prefix length: 113").
        W::InvalidNetworkField { .. } | W::MalformedNlri { .. } => return None,
        W::MalformedAttributeList { reason } => (subcode::MALFORMED_ATTRIBUTE_LIST, reason.clone()),
        W::PartialAttributeError { .. } => return None,
        _ => return None,
    };
    Some(update_err(sub, reason))
}

fn family_of(nlri: &Nlri) -> Option<Family> {
    match (nlri.afi, nlri.safi) {
        (Afi::Ipv4, Safi::Unicast) => Some(Family::Ipv4Unicast),
        (Afi::Ipv6, Safi::Unicast) => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

fn decode_update(msg: &[u8], body: &[u8], four_octet_as: bool) -> Result<Update, NotifyError> {
    let mp = check_update_structure(body, four_octet_as)?;
    let asn_len = if four_octet_as {
        AsnLength::Bits32
    } else {
        AsnLength::Bits16
    };
    let parsed = match bgpkit_parser::parser::bgp::parse_bgp_message(
        &mut Bytes::copy_from_slice(msg),
        false,
        &asn_len,
    ) {
        Ok(BgpMessage::Update(u)) => u,
        Ok(_) => {
            return Err(update_err(
                subcode::MALFORMED_ATTRIBUTE_LIST,
                "not an UPDATE",
            ));
        }
        Err(e) => {
            return Err(update_err(
                subcode::MALFORMED_ATTRIBUTE_LIST,
                format!("malformed UPDATE: {e}"),
            ))
        }
    };
    if let Some(err) = parsed
        .attributes
        .validation_warnings()
        .iter()
        .find_map(warning_to_error)
    {
        return Err(err);
    }
    // Every prefix comes from our own decoding of the checked NLRI (see MpPrefixes), never
    // from the parser's: it guesses at ADD-PATH encodings and misreads ordinary NLRI.
    let mut update = Update {
        announced: mp.announced,
        withdrawn: mp.withdrawn,
        ..Update::default()
    };
    let mut mp_unreach_empty = None;
    let mut attr_count = 0;
    for attr in parsed.attributes.iter() {
        attr_count += 1;
        // The MP prefixes themselves came from `check_update_structure` (see MpPrefixes).
        if let AttributeValue::MpUnreachNlri(nlri) = attr {
            if let Some(f) = family_of(nlri) {
                if nlri.prefixes.is_empty() {
                    mp_unreach_empty = Some(f);
                }
            }
        }
    }
    for c in parsed.attributes.iter_communities() {
        if let MetaCommunity::Plain(c) = c {
            let raw = match c {
                Community::NoExport => 0xffff_ff01,
                Community::NoAdvertise => 0xffff_ff02,
                Community::NoExportSubConfed => 0xffff_ff03,
                Community::Custom(asn, low) => (u32::from(asn) << 16) | u32::from(low),
            };
            update.communities.push(((raw >> 16) as u16, raw as u16));
        }
    }
    // End-of-RIB (RFC 4724 §2): an empty UPDATE for IPv4 unicast; an UPDATE whose only
    // attribute is an empty MP_UNREACH_NLRI for other families.
    if body.len() == 4 {
        update.end_of_rib = Some(Family::Ipv4Unicast);
    } else if attr_count == 1 && update.announced.is_empty() && update.withdrawn.is_empty() {
        update.end_of_rib = mp_unreach_empty;
    }
    Ok(update)
}

/// What this speaker puts in its OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOpen {
    /// Local AS (4-octet; AS_TRANS goes in the 16-bit field when it does not fit).
    pub asn: u32,
    /// Proposed hold time.
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
}

/// Encodes our OPEN: capabilities MP IPv4 unicast, MP IPv6 unicast, route refresh, 4-octet AS.
pub fn encode_open(local: &LocalOpen) -> Vec<u8> {
    let asn16 = u16::try_from(local.asn).unwrap_or(AS_TRANS);
    let cap = |ty, value| Capability { ty, value };
    let caps = vec![
        cap(
            BgpCapabilityType::MULTIPROTOCOL_EXTENSIONS_FOR_BGP_4,
            CapabilityValue::MultiprotocolExtensions(MultiprotocolExtensionsCapability {
                afi: Afi::Ipv4,
                safi: Safi::Unicast,
            }),
        ),
        cap(
            BgpCapabilityType::MULTIPROTOCOL_EXTENSIONS_FOR_BGP_4,
            CapabilityValue::MultiprotocolExtensions(MultiprotocolExtensionsCapability {
                afi: Afi::Ipv6,
                safi: Safi::Unicast,
            }),
        ),
        cap(
            BgpCapabilityType::ROUTE_REFRESH_CAPABILITY_FOR_BGP_4,
            CapabilityValue::RouteRefresh(RouteRefreshCapability::new()),
        ),
        cap(
            BgpCapabilityType::SUPPORT_FOR_4_OCTET_AS_NUMBER_CAPABILITY,
            CapabilityValue::FourOctetAs(FourOctetAsCapability { asn: local.asn }),
        ),
    ];
    let open = BgpOpenMessage {
        version: 4,
        asn: bgpkit_parser::models::Asn::new_16bit(asn16),
        hold_time: local.hold_time,
        bgp_identifier: local.router_id,
        extended_length: false,
        opt_params: vec![OptParam {
            param_type: 2,
            param_value: ParamValue::Capacities(caps),
        }],
    };
    match BgpMessage::Open(open).encode(AsnLength::Bits32) {
        Ok(b) => b.to_vec(),
        // Cannot happen: four fixed capabilities fit easily. Fall back to a hand encoding.
        Err(_) => encode_open_by_hand(local, asn16),
    }
}

fn encode_open_by_hand(local: &LocalOpen, asn16: u16) -> Vec<u8> {
    let mut caps = vec![1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 2, 0, 65, 4];
    caps.extend_from_slice(&local.asn.to_be_bytes());
    let mut body = vec![4];
    body.extend_from_slice(&asn16.to_be_bytes());
    body.extend_from_slice(&local.hold_time.to_be_bytes());
    body.extend_from_slice(&local.router_id.octets());
    body.push(caps.len() as u8 + 2);
    body.extend_from_slice(&[2, caps.len() as u8]);
    body.extend_from_slice(&caps);
    with_header(msg_type::OPEN, &body)
}

fn with_header(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// Encodes a KEEPALIVE.
pub fn encode_keepalive() -> Vec<u8> {
    with_header(msg_type::KEEPALIVE, &[])
}

/// Encodes a NOTIFICATION. Data is truncated to fit one message.
pub fn encode_notification(code: u8, subcode: u8, data: &[u8]) -> Vec<u8> {
    let mut body = vec![code, subcode];
    body.extend_from_slice(&data[..data.len().min(MAX_MESSAGE_LEN - HEADER_LEN - 2)]);
    with_header(msg_type::NOTIFICATION, &body)
}

/// A short English name for a NOTIFICATION code/subcode, for logs and status.
pub fn notification_name(code: u8, subcode: u8) -> &'static str {
    match (code, subcode) {
        (1, 1) => "Connection Not Synchronized",
        (1, 2) => "Bad Message Length",
        (1, 3) => "Bad Message Type",
        (1, _) => "Message Header Error",
        (2, 1) => "Unsupported Version Number",
        (2, 2) => "Bad Peer AS",
        (2, 3) => "Bad BGP Identifier",
        (2, 4) => "Unsupported Optional Parameter",
        (2, 6) => "Unacceptable Hold Time",
        (2, _) => "OPEN Message Error",
        (3, 1) => "Malformed Attribute List",
        (3, 2) => "Unrecognized Well-known Attribute",
        (3, 3) => "Missing Well-known Attribute",
        (3, 4) => "Attribute Flags Error",
        (3, 5) => "Attribute Length Error",
        (3, 6) => "Invalid ORIGIN Attribute",
        (3, 8) => "Invalid NEXT_HOP Attribute",
        (3, 9) => "Optional Attribute Error",
        (3, 10) => "Invalid Network Field",
        (3, 11) => "Malformed AS_PATH",
        (3, _) => "UPDATE Message Error",
        (4, _) => "Hold Timer Expired",
        (5, _) => "Finite State Machine Error",
        (6, 1) => "Cease: Maximum Number of Prefixes Reached",
        (6, 2) => "Cease: Administrative Shutdown",
        (6, 3) => "Cease: Peer De-configured",
        (6, 4) => "Cease: Administrative Reset",
        (6, 5) => "Cease: Connection Rejected",
        (6, 6) => "Cease: Other Configuration Change",
        (6, 7) => "Cease: Connection Collision Resolution",
        (6, 8) => "Cease: Out of Resources",
        (6, _) => "Cease",
        _ => "Unknown error",
    }
}

/// Helpers to build messages by hand (tests, the raw test peer).
pub mod build {
    use super::{with_header, HEADER_LEN};
    use ipnet::IpNet;

    /// Encodes one NLRI entry (length byte + the prefix's significant octets).
    pub fn nlri(p: &IpNet) -> Vec<u8> {
        let bits = p.prefix_len();
        let bytes = (bits as usize).div_ceil(8);
        let mut v = vec![bits];
        match p {
            IpNet::V4(n) => v.extend_from_slice(&n.network().octets()[..bytes]),
            IpNet::V6(n) => v.extend_from_slice(&n.network().octets()[..bytes]),
        }
        v
    }

    /// One path attribute (extended length when needed).
    pub fn attr(flags: u8, ty: u8, value: &[u8]) -> Vec<u8> {
        if value.len() > 255 {
            let mut v = vec![flags | 0x10, ty];
            v.extend_from_slice(&(value.len() as u16).to_be_bytes());
            v.extend_from_slice(value);
            v
        } else {
            let mut v = vec![flags, ty, value.len() as u8];
            v.extend_from_slice(value);
            v
        }
    }

    /// An UPDATE from raw withdrawn NLRI, attribute bytes and announced NLRI.
    pub fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(4 + withdrawn.len() + attrs.len() + nlri.len());
        body.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
        body.extend_from_slice(withdrawn);
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(attrs);
        body.extend_from_slice(nlri);
        with_header(2, &body)
    }

    /// A well-formed IPv4 announcement from `asn` (4-octet AS_PATH) with next hop `nh`,
    /// optional standard communities.
    pub fn announce_v4(
        prefixes: &[IpNet],
        asn: u32,
        nh: [u8; 4],
        communities: &[(u16, u16)],
    ) -> Vec<u8> {
        let mut attrs = attr(0x40, 1, &[0]);
        let mut path = vec![2, 1];
        path.extend_from_slice(&asn.to_be_bytes());
        attrs.extend(attr(0x40, 2, &path));
        attrs.extend(attr(0x40, 3, &nh));
        if !communities.is_empty() {
            let v: Vec<u8> = communities
                .iter()
                .flat_map(|(a, b)| [a.to_be_bytes(), b.to_be_bytes()].concat())
                .collect();
            attrs.extend(attr(0xc0, 8, &v));
        }
        let nlri: Vec<u8> = prefixes.iter().flat_map(nlri).collect();
        update(&[], &attrs, &nlri)
    }

    /// An UPDATE withdrawing IPv4 prefixes.
    pub fn withdraw_v4(prefixes: &[IpNet]) -> Vec<u8> {
        let w: Vec<u8> = prefixes.iter().flat_map(nlri).collect();
        update(&w, &[], &[])
    }

    /// Length of the header, re-exported for hand-built messages.
    pub const HEADER: usize = HEADER_LEN;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn err_of(msg: &[u8]) -> (u8, u8) {
        let e = decode(msg, true).unwrap_err();
        (e.code, e.subcode)
    }

    /// An UPDATE announcing raw IPv6 unicast `nlri` in MP_REACH_NLRI (next hop 2001:db8::),
    /// with ORIGIN and AS_PATH, and any `more` attributes after them.
    fn mp_reach_v6(nlri: &[u8], more: &[u8]) -> Vec<u8> {
        let mut reach = vec![0, 2, 1, 16];
        reach.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 12]));
        reach.push(0);
        reach.extend(nlri);
        let attrs = [
            build::attr(0x80, 14, &reach),
            build::attr(0x40, 1, &[0]),
            build::attr(0x40, 2, &[2, 1, 0, 0, 0xfc, 0]),
            more.to_vec(),
        ];
        build::update(&[], &attrs.concat(), &[])
    }

    /// The UPDATE `msg` decodes to.
    #[track_caller]
    fn update_of(msg: &[u8]) -> Update {
        match decode(msg, true) {
            Ok(Message::Update(u)) => u,
            other => panic!("{other:?}"),
        }
    }

    /// Found by the `bgp_message` fuzz target: the parser underneath dropped every prefix after a
    /// leading `::/0` in MP_REACH_NLRI and MP_UNREACH_NLRI.
    #[test]
    fn mp_prefixes_after_a_leading_default_route_are_kept() {
        let msg = mp_reach_v6(
            &[0, 32, 0x20, 0x01, 0x0d, 0xb8, 1, 0],
            &build::attr(0x80, 15, &[0, 2, 1, 0, 16, 0x20, 0x02]),
        );
        let u = update_of(&msg);
        assert_eq!(
            u.announced,
            vec![net("::/0"), net("2001:db8::/32"), net("::/1")]
        );
        assert_eq!(u.withdrawn, vec![net("::/0"), net("2002::/16")]);
        // More prefixes after the default route, as the fuzz target re-encoded them: the parser
        // used to refuse this valid UPDATE ("truncated IPv6 prefix").
        let msg = mp_reach_v6(
            &[0, 0, 13, 0xb8, 0x02, 48, 0x01, 0x00, 0x40, 0x02, 0x06, 0x02],
            &[],
        );
        assert_eq!(
            update_of(&msg).announced,
            vec![
                net("::/0"),
                net("::/0"),
                net("b802::/13"),
                net("100:4002:602::/48")
            ]
        );
    }

    /// Found by the `bgp_message` fuzz target: ordinary IPv4 NLRI that the parser underneath
    /// misread (a prefix lost, another made up). Every prefix is the one in the bytes now.
    #[test]
    fn ipv4_nlri_is_decoded_as_written() {
        let msg = [
            255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 62,
            2, 0, 0, 0, 27, 64, 1, 1, 0, 64, 2, 6, 2, 1, 0, 0, 252, 0, 64, 3, 4, 192, 0, 1, 0, 8,
            127, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 255, 0, 0, 2, 113, 0,
        ];
        let u = update_of(&msg);
        let want: Vec<IpNet> = [
            "0.0.0.0/1",
            "0.0.0.0/0",
            "0.0.0.0/0",
            "0.0.0.0/0",
            "255.0.0.0/1",
            "0.0.0.0/0",
            "0.0.0.0/0",
            "113.0.0.0/2",
            "0.0.0.0/0",
        ]
        .iter()
        .map(|s| net(s))
        .collect();
        assert_eq!(u.announced, want);
    }

    /// Found by the `bgp_message` fuzz target: IPv6 NLRI in MP_REACH_NLRI with a prefix length
    /// of 184 was accepted, and the parser made up prefixes from it. It is an UPDATE error now.
    #[test]
    fn mp_reach_with_an_impossible_prefix_length_is_refused() {
        let msg = mp_reach_v6(&[0, 184, 0x0d, 0xb8], &[]);
        assert_eq!(err_of(&msg), (code::UPDATE, subcode::INVALID_NETWORK_FIELD));
        // The same with a good prefix length decodes.
        let msg = mp_reach_v6(&[0, 13, 0x0d, 0xb8], &[]);
        assert_eq!(
            update_of(&msg).announced,
            vec![net("::/0"), net("db8::/13")]
        );
    }

    #[test]
    fn open_roundtrip_through_the_parser() {
        let local = LocalOpen {
            asn: 4_200_000_001,
            hold_time: 90,
            router_id: "10.0.0.1".parse().unwrap(),
        };
        let bytes = encode_open(&local);
        assert_eq!(bytes[19], 4);
        // AS_TRANS in the 16-bit field.
        assert_eq!(u16::from_be_bytes([bytes[20], bytes[21]]), AS_TRANS);
        let Message::Open(open) = decode(&bytes, true).unwrap() else {
            panic!()
        };
        assert_eq!(open.asn, 4_200_000_001);
        assert_eq!(open.asn16, AS_TRANS);
        assert_eq!(open.hold_time, 90);
        assert!(open.four_octet_as && open.route_refresh && open.has_mp_capability);
        assert_eq!(
            open.families,
            vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
        );
        let small = LocalOpen {
            asn: 65001,
            ..local
        };
        let Message::Open(open) = decode(&encode_open(&small), true).unwrap() else {
            panic!()
        };
        assert_eq!((open.asn, open.asn16), (65001, 65001));
        // The hand encoding is byte-identical to the crate's.
        assert_eq!(encode_open(&small), encode_open_by_hand(&small, 65001));
    }

    #[test]
    fn keepalive_and_notification() {
        assert_eq!(
            decode(&encode_keepalive(), true).unwrap(),
            Message::Keepalive
        );
        let n = encode_notification(6, 1, &[1, 2]);
        assert_eq!(
            decode(&n, true).unwrap(),
            Message::Notification {
                code: 6,
                subcode: 1,
                data: vec![1, 2]
            }
        );
    }

    #[test]
    fn header_errors() {
        let mut k = encode_keepalive();
        k[3] = 0;
        assert_eq!(err_of(&k), (1, 1));
        let mut k = encode_keepalive();
        k[18] = 9;
        assert_eq!(err_of(&k), (1, 3));
        let mut k = encode_keepalive();
        k.push(0);
        k[17] = 20;
        assert_eq!(err_of(&k), (1, 2));
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&[0x10, 0x01, 2]);
        assert_eq!(frame_len(&m).unwrap_err().subcode, 2);
        assert_eq!(frame_len(&m[..10]).unwrap(), None);
    }

    #[test]
    fn update_v4_announce_withdraw_communities() {
        let m = build::announce_v4(
            &[net("198.51.100.0/24"), net("10.0.0.0/8")],
            65002,
            [10, 0, 0, 2],
            &[(65002, 7)],
        );
        let Message::Update(u) = decode(&m, true).unwrap() else {
            panic!()
        };
        assert_eq!(u.announced, vec![net("198.51.100.0/24"), net("10.0.0.0/8")]);
        assert_eq!(u.communities, vec![(65002, 7)]);
        assert_eq!(u.end_of_rib, None);
        let Message::Update(u) = decode(&build::withdraw_v4(&[net("10.0.0.0/8")]), true).unwrap()
        else {
            panic!()
        };
        assert_eq!(u.withdrawn, vec![net("10.0.0.0/8")]);
        let Message::Update(u) = decode(&build::update(&[], &[], &[]), true).unwrap() else {
            panic!()
        };
        assert_eq!(u.end_of_rib, Some(Family::Ipv4Unicast));
    }

    #[test]
    fn update_mp_reach_and_unreach_v6() {
        let p = net("2001:db8:100::/48");
        let mut reach = vec![0, 2, 1, 16];
        reach.extend_from_slice(
            &"2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        reach.push(0);
        reach.extend(build::nlri(&p));
        let mut attrs = build::attr(0x40, 1, &[0]);
        attrs.extend(build::attr(0x40, 2, &[2, 1, 0, 0, 0xfd, 0xea]));
        attrs.extend(build::attr(0x80, 14, &reach));
        let Message::Update(u) = decode(&build::update(&[], &attrs, &[]), true).unwrap() else {
            panic!()
        };
        assert_eq!(u.announced, vec![p]);
        let mut unreach = vec![0, 2, 1];
        unreach.extend(build::nlri(&p));
        let m = build::update(&[], &build::attr(0x80, 15, &unreach), &[]);
        let Message::Update(u) = decode(&m, true).unwrap() else {
            panic!()
        };
        assert_eq!(u.withdrawn, vec![p]);
        assert_eq!(u.end_of_rib, None);
        let m = build::update(&[], &build::attr(0x80, 15, &[0, 2, 1]), &[]);
        let Message::Update(u) = decode(&m, true).unwrap() else {
            panic!()
        };
        assert_eq!(u.end_of_rib, Some(Family::Ipv6Unicast));
    }

    #[test]
    fn update_errors_map_to_rfc4271_subcodes() {
        let origin = build::attr(0x40, 1, &[0]);
        let path = build::attr(0x40, 2, &[2, 1, 0, 0, 0xfd, 0xea]);
        let nh = build::attr(0x40, 3, &[10, 0, 0, 2]);
        let nlri = build::nlri(&net("198.51.100.0/24"));
        let good = [origin.clone(), path.clone(), nh.clone()].concat();
        assert!(decode(&build::update(&[], &good, &nlri), true).is_ok());
        // Invalid network field: /33.
        assert_eq!(
            err_of(&build::update(&[], &good, &[33, 1, 2, 3, 4, 5])),
            (3, 10)
        );
        // Missing NEXT_HOP.
        let e = decode(
            &build::update(&[], &[origin.clone(), path.clone()].concat(), &nlri),
            true,
        )
        .unwrap_err();
        assert_eq!((e.code, e.subcode, e.data.clone()), (3, 3, vec![3]));
        // ORIGIN value 7.
        let bad = [build::attr(0x40, 1, &[7]), path.clone(), nh.clone()].concat();
        assert_eq!(err_of(&build::update(&[], &bad, &nlri)), (3, 6));
        // ORIGIN marked optional: flags error.
        let bad = [build::attr(0xc0, 1, &[0]), path.clone(), nh.clone()].concat();
        assert_eq!(err_of(&build::update(&[], &bad, &nlri)), (3, 4));
        // NEXT_HOP of 3 bytes: attribute length error.
        let bad = [
            origin.clone(),
            path.clone(),
            build::attr(0x40, 3, &[10, 0, 0]),
        ]
        .concat();
        assert_eq!(err_of(&build::update(&[], &bad, &nlri)), (3, 5));
        // AS_PATH segment type 9.
        let bad = [
            origin.clone(),
            build::attr(0x40, 2, &[9, 1, 0, 0, 0, 1]),
            nh.clone(),
        ]
        .concat();
        assert_eq!(err_of(&build::update(&[], &bad, &nlri)), (3, 11));
        // AS_PATH segment count longer than the attribute.
        let bad = [
            origin.clone(),
            build::attr(0x40, 2, &[2, 3, 0, 0, 0, 1]),
            nh.clone(),
        ]
        .concat();
        assert_eq!(err_of(&build::update(&[], &bad, &nlri)), (3, 11));
        // Attribute length running past the list.
        let mut bad = good.clone();
        bad.extend_from_slice(&[0xc0, 8, 200, 0, 0]);
        assert_eq!(err_of(&build::update(&[], &bad, &nlri)), (3, 1));
        // Total attribute length larger than the message.
        let mut m = build::update(&[], &good, &[]);
        let at = HEADER_LEN + 2;
        m[at] = 0x0f;
        assert_eq!(err_of(&m), (3, 1));
        // Duplicate ORIGIN.
        let bad = [origin.clone(), origin.clone(), path.clone(), nh.clone()].concat();
        assert_eq!(err_of(&build::update(&[], &bad, &nlri)), (3, 1));
    }

    #[test]
    fn open_errors() {
        let local = LocalOpen {
            asn: 65001,
            hold_time: 90,
            router_id: "10.0.0.1".parse().unwrap(),
        };
        let mut m = encode_open(&local);
        m[19] = 3;
        let e = decode(&m, true).unwrap_err();
        assert_eq!((e.code, e.subcode, e.data), (2, 1, vec![0, 4]));
        let mut m = encode_open(&local);
        m[29] = 1; // optional parameter type 1
        assert_eq!(err_of(&m), (2, 4));
        let mut m = encode_open(&local);
        m[28] += 1; // optional parameters length inconsistent with the message length
        assert_eq!(err_of(&m), (1, 2));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), ty in 1u8..=5, four in proptest::prelude::any::<bool>()) {
            let m = with_header(ty, &body);
            let _ = decode(&m, four);
            let _ = frame_len(&body);
        }

        /// Well-framed UPDATEs with random attributes: gets past the framing checks into
        /// the parser crate's attribute decoders.
        #[test]
        fn random_attributes_never_panic(
            attrs in proptest::collection::vec(
                (proptest::prelude::any::<u8>(), 0u8..=40, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                0..6,
            ),
            nlri in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            four in proptest::prelude::any::<bool>(),
        ) {
            let bytes: Vec<u8> = attrs
                .iter()
                .flat_map(|(flags, ty, v)| build::attr(flags & !0x10, *ty, v))
                .collect();
            let _ = decode(&build::update(&[], &bytes, &nlri), four);
            // And as the value of MP_REACH / MP_UNREACH with a plausible AFI/SAFI prefix.
            for ty in [14u8, 15] {
                for (_, _, v) in &attrs {
                    let mut value = vec![0, 1 + (v.len() % 2) as u8, 1];
                    value.extend_from_slice(v);
                    let _ = decode(&build::update(&[], &build::attr(0x80, ty, &value), &[]), four);
                }
            }
        }

        #[test]
        fn mutated_updates_never_panic(pos in 19usize..80, byte in proptest::prelude::any::<u8>(), four in proptest::prelude::any::<bool>()) {
            let mut m = build::announce_v4(&["198.51.100.0/24".parse().unwrap()], 65002, [10, 0, 0, 2], &[(1, 2)]);
            if pos < m.len() { m[pos] = byte; }
            let _ = decode(&m, four);
        }
    }
}
