//! BGP messages as a router (or anything on TCP 179) sends them: decoding never panics, and
//! every UPDATE the decoder accepts re-encodes — announcements as NLRI / MP_REACH_NLRI with
//! the mandatory attributes, withdrawals as withdrawn routes / MP_UNREACH_NLRI, standard
//! communities — to a message that decodes to the same prefixes and communities. The first
//! input byte says whether the session negotiated 4-octet AS numbers.
#![no_main]

use edgeplane_bgp::wire::{build, decode, frame_len, Message, Update};
use edgeplane_bgp::IpNet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, msg)) = data.split_first() else {
        return;
    };
    let four_octet = flags & 1 == 1;
    // The framing check a session runs first never panics either.
    let _ = frame_len(msg);
    let Ok(Message::Update(update)) = decode(msg, four_octet) else {
        return;
    };
    if update.end_of_rib.is_some() {
        return;
    }
    let again = reencode(&update, four_octet);
    let decoded = match decode(&again, four_octet) {
        Ok(Message::Update(u)) => u,
        other => panic!("re-encoded {update:?} did not decode: {other:?}"),
    };
    assert_eq!(set(&decoded.announced), set(&update.announced), "announced");
    assert_eq!(set(&decoded.withdrawn), set(&update.withdrawn), "withdrawn");
    if !update.announced.is_empty() {
        assert_eq!(decoded.communities, update.communities, "communities");
    }
});

fn set(v: &[IpNet]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = v.iter().map(IpNet::trunc).collect();
    v.sort();
    v.dedup();
    v
}

fn nlri(ps: &[IpNet], v6: bool) -> Vec<u8> {
    ps.iter()
        .filter(|p| matches!(p, IpNet::V6(_)) == v6)
        .flat_map(|p| build::nlri(&p.trunc()))
        .collect()
}

fn reencode(u: &Update, four_octet: bool) -> Vec<u8> {
    let withdrawn_v4 = nlri(&u.withdrawn, false);
    let withdrawn_v6 = nlri(&u.withdrawn, true);
    let announced_v4 = nlri(&u.announced, false);
    let announced_v6 = nlri(&u.announced, true);
    let mut attrs = Vec::new();
    if !u.announced.is_empty() {
        attrs.extend(build::attr(0x40, 1, &[0]));
        let path = if four_octet {
            vec![2, 1, 0, 0, 0xfd, 0xe8]
        } else {
            vec![2, 1, 0xfd, 0xe8]
        };
        attrs.extend(build::attr(0x40, 2, &path));
        if !announced_v4.is_empty() {
            attrs.extend(build::attr(0x40, 3, &[192, 0, 2, 1]));
        }
        if !u.communities.is_empty() {
            let v: Vec<u8> = u
                .communities
                .iter()
                .flat_map(|(a, b)| [a.to_be_bytes(), b.to_be_bytes()].concat())
                .collect();
            attrs.extend(build::attr(0xc0, 8, &v));
        }
    }
    if !announced_v6.is_empty() {
        let mut v = vec![0, 2, 1, 16];
        v.extend(
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v.push(0);
        v.extend(&announced_v6);
        attrs.extend(build::attr(0x80, 14, &v));
    }
    if !withdrawn_v6.is_empty() {
        let mut v = vec![0, 2, 1];
        v.extend(&withdrawn_v6);
        attrs.extend(build::attr(0x80, 15, &v));
    }
    build::update(&withdrawn_v4, &attrs, &announced_v4)
}
