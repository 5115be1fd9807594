//! JSON from the control service, as the agent and the data plane read it: fill manifests,
//! registration and health answers, steering answers, the signing-keys file. Parsing never
//! panics, and whatever parses serializes to JSON that parses back to the same value. The first
//! input byte picks the type.
#![no_main]

use edgeplane_api::{FillManifest, HealthAck, RegistrationAck, Steering};
use edgeplane_signing::KeySet;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => round_trip::<FillManifest>(json),
        1 => round_trip::<RegistrationAck>(json),
        2 => round_trip::<HealthAck>(json),
        3 => round_trip::<Steering>(json),
        _ => round_trip::<KeySet>(json),
    }
});

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(json: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(json) else {
        return;
    };
    let text = serde_json::to_vec(&value).expect("a parsed value serializes");
    let back: T = serde_json::from_slice(&text).expect("serialized JSON parses");
    assert_eq!(back, value);
}
