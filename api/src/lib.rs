//! The control API's wire types: what an appliance's agent and the control service (the
//! simulated AWS side, `edgeplane cloud`) send each other as JSON over HTTP, and what a player
//! gets from steering. docs/control-api.md describes the endpoints.
//!
//! | method and path                          | body → response                          | auth |
//! |------------------------------------------|------------------------------------------|------|
//! | `POST /v1/appliances/{id}/register`      | [`Registration`] → [`RegistrationAck`]   | appliance |
//! | `POST /v1/appliances/{id}/health`        | [`HealthReport`] → [`HealthAck`]         | appliance |
//! | `GET  /v1/appliances/{id}/manifest`      | → [`FillManifest`]                       | appliance |
//! | `GET  /v1/steering?client=IP&title=T`    | → [`Steering`]                           | none (players) |
//! | `GET  /v1/origin/tok/{token}/{id}`       | → 302 to a presigned origin GET          | per-title token |
//! | `GET  /v1/fleet`                         | → [`Fleet`]                              | admin |
//! | `GET  /v1/appliances/{id}/held`          | → [`HeldView`]                           | admin |
//! | `PUT  /v1/catalog`                       | [`Catalog`] → 204                        | admin |
//! | `GET  /v1/catalog`                       | → [`Catalog`]                            | none |
//! | `POST /v1/keys/rotate`                   | → [`edgeplane_signing::KeySet`] (public part: ids and not_after only) | admin |
//!
//! Appliance auth is `Authorization: Bearer <secret>`, the per-appliance secret the control
//! service was provisioned with; admin auth is the same header with the admin token.
//! Errors are a status code and an [`ApiError`] body.

use std::net::IpAddr;

use edgeplane_signing::SigningKey;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What kind of appliance: embedded in an ISP's network, or at an internet exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Inside one ISP; serves only the prefixes that ISP gives it.
    Embedded,
    /// At an internet exchange; serves anyone steering sends to it.
    Ix,
}

/// The kind of a storage tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    /// NVMe: the most popular objects.
    Flash,
    /// HDD: the long tail.
    Storage,
}

/// A tier's size, as registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierCapacity {
    /// The tier's name in the appliance's config (`tier[].name`).
    pub name: String,
    /// Flash or storage.
    pub kind: TierKind,
    /// Bytes the fill may use on it.
    pub capacity_bytes: u64,
}

/// An appliance introducing itself (at start and whenever its registration data changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Embedded or IX.
    pub role: Role,
    /// Site name (e.g. `isp1-fra`).
    pub site: String,
    /// Base URLs players use, e.g. `http://192.0.2.10:8080` (no trailing slash); the first is
    /// preferred. An `https://` URL is used for players that ask for HTTPS.
    pub urls: Vec<String>,
    /// Client prefixes this appliance serves (embedded: from config and BGP; IX: may be empty).
    pub prefixes: Vec<IpNet>,
    /// Its tiers.
    pub tiers: Vec<TierCapacity>,
    /// Most bits per second steering may send to it (its load cap).
    pub max_bps: u64,
    /// Software version.
    pub version: String,
}

/// The control service's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationAck {
    /// How often to report health, seconds.
    pub health_interval_secs: u64,
    /// The signing keys the data plane must accept (secrets included: this is the appliance's
    /// own authenticated channel).
    pub signing_keys: Vec<SigningKey>,
    /// Client prefixes the control service assigns to this appliance; served together with
    /// the appliance's configured and BGP-learned prefixes.
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
}

/// One tier in a health report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierHealth {
    /// Tier name.
    pub name: String,
    /// Whether the data plane serves from it (false after a disk failure).
    pub up: bool,
    /// Capacity the fill may use, bytes.
    pub capacity_bytes: u64,
    /// Bytes held.
    pub used_bytes: u64,
    /// Objects held.
    pub objects: u64,
    /// I/O errors seen since start.
    pub disk_errors: u64,
}

/// Fill progress in a health report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillStatus {
    /// `idle` (outside the window or nothing to do), `filling`, `blocked` (origin breaker open).
    pub state: String,
    /// Manifest generation being filled.
    pub generation: u64,
    /// Objects in the manifest / held and verified.
    pub objects_wanted: u64,
    /// Objects present and verified.
    pub objects_present: u64,
    /// Bytes still to download.
    pub bytes_missing: u64,
    /// Objects rejected on checksum since start.
    pub checksum_failures: u64,
}

/// What an appliance reports every health interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Whether the appliance wants clients: false when draining or when no tier is up.
    pub healthy: bool,
    /// Why not healthy, for the fleet view.
    pub reason: Option<String>,
    /// Serving throughput over the last interval, bits per second.
    pub serving_bps: u64,
    /// Open client connections.
    pub connections: u64,
    /// CPU use of the host over the last interval, 0–1 per core summed (2.0 = two cores busy).
    pub cpu: f64,
    /// Per tier.
    pub tiers: Vec<TierHealth>,
    /// Fill progress.
    pub fill: FillStatus,
    /// `ktls`, `userspace` or `off`.
    pub tls_mode: String,
    /// Software version.
    pub version: String,
    /// Object ids held and served right now (so steering only sends players for what is here).
    /// The old form, a full list every report: an agent that sends [`HealthReport::held`]
    /// leaves it empty.
    #[serde(default)]
    pub objects: Vec<String>,
    /// Client prefixes served right now (configured ∪ BGP), so steering and the XDP filter agree.
    pub prefixes: Vec<IpNet>,
    /// The data plane is draining (`edgeplane drain`, `edgeplane_draining 1`): steering sends it
    /// no new viewers. Absent (false) from agents that predate it.
    #[serde(default)]
    pub draining: bool,
    /// The held set as a digest plus changes since the last acknowledged report (replaces
    /// `objects`; docs/control-api.md, "The held set").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldReport>,
    /// The most requested objects over the last interval, most requested first (at most
    /// [`MAX_DEMAND_ENTRIES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demand: Vec<DemandEntry>,
}

/// Most entries in [`HealthReport::demand`]; the control service ignores the rest.
pub const MAX_DEMAND_ENTRIES: usize = 64;

/// The held set in a health report: what the appliance holds as a digest and a count, and what
/// changed since the set the control service last acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldReport {
    /// Increases by one every report.
    pub seq: u64,
    /// Objects held.
    pub count: u64,
    /// [`HeldDigest`] of the held set, 64 lowercase hex digits.
    pub digest: String,
    /// Ids held now that the acknowledged set did not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// Ids of the acknowledged set that are no longer held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Every id held, sent when the control service asked for it ([`HealthAck::send_full`]);
    /// `added` and `removed` are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Vec<String>>,
}

/// Requests for one object over a reporting interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemandEntry {
    /// The object id.
    pub id: String,
    /// Requests (an estimate from the data plane's sketch: never less than the true count).
    pub requests: u64,
}

/// An order-independent digest of a set of object ids: the XOR of the SHA-256 of each id, and
/// the count. Adding or removing one id is one hash; the same set always has the same digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldDigest {
    acc: [u8; 32],
    count: u64,
}

impl HeldDigest {
    /// The digest of `ids` (each id once).
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a str>) -> HeldDigest {
        let mut d = HeldDigest::default();
        for id in ids {
            d.add(id);
        }
        d
    }

    fn toggle(&mut self, id: &str) {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(id.as_bytes());
        for (a, b) in self.acc.iter_mut().zip(h.iter()) {
            *a ^= b;
        }
    }

    /// Adds an id that is not in the set.
    pub fn add(&mut self, id: &str) {
        self.toggle(id);
        self.count += 1;
    }

    /// Removes an id that is in the set.
    pub fn remove(&mut self, id: &str) {
        self.toggle(id);
        self.count = self.count.saturating_sub(1);
    }

    /// Ids in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(64);
        for b in self.acc {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// What the control service believes an appliance holds (`GET /v1/appliances/{id}/held`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldView {
    /// The appliance.
    pub id: String,
    /// Sequence number of the last report whose held set was accepted (0: none yet).
    pub seq: u64,
    /// Objects.
    pub count: u64,
    /// [`HeldDigest`] of `objects`.
    pub digest: String,
    /// Whether the set is confirmed by the appliance's digest (false after a restart of the
    /// control service or a mismatch, until the full list arrives).
    pub in_sync: bool,
    /// The ids, sorted.
    pub objects: Vec<String>,
}

/// The control service's answer to a health report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAck {
    /// The current signing keys (rotation arrives here).
    pub signing_keys: Vec<SigningKey>,
    /// The newest manifest generation of [`HealthAck::epoch`]: fetch it when it is higher
    /// than the one being filled (or when the epoch differs).
    pub manifest_generation: u64,
    /// Client prefixes the control service assigns (as in [`RegistrationAck::prefixes`]).
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
    /// The control side's identity: made when its store (database) was created, the same for
    /// every instance on it and across restarts. Generations are comparable within one epoch
    /// only. Empty from a control service older than the store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// The [`HeldReport::seq`] whose held set the control service now holds as the appliance's:
    /// the next report's `added`/`removed` are relative to that set. `None` when it did not
    /// accept the report's held set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_seq: Option<u64>,
    /// The control service's view of the held set differs from the report's digest (or it has
    /// none, after a restart): send [`HeldReport::full`] in the next report.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub send_full: bool,
}

/// One object of the catalog: a segment (or playlist) of one rendition of a title.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectInfo {
    /// Content id: the file name on the appliance and the key at the origin.
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// A rendition: one bitrate of a title, as an ordered list of segments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rendition {
    /// Name, e.g. `720p`.
    pub name: String,
    /// Bits per second.
    pub bitrate: u64,
    /// Segments in play order.
    pub objects: Vec<ObjectInfo>,
}

/// A title.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Title {
    /// Title id, e.g. `t0042`.
    pub id: String,
    /// Its renditions.
    pub renditions: Vec<Rendition>,
}

/// The whole catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Titles, any order.
    pub titles: Vec<Title>,
}

/// One object an appliance should hold, in rank order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectInfo,
    /// The tier (by name) it belongs on given the appliance's capacities.
    pub tier: String,
    /// 0 = most popular.
    pub rank: u64,
    /// Base URL of a peer appliance to fill from first (tiered fill), if any.
    pub peer: Option<String>,
}

/// What an appliance should hold: the fill plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillManifest {
    /// Increases whenever the plan changes; never goes down within one epoch (across restarts
    /// of the control service and across its instances).
    pub generation: u64,
    /// Objects, most popular first.
    pub objects: Vec<ManifestEntry>,
    /// The control side's identity (as in [`HealthAck::epoch`]); empty from an older control
    /// service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

/// Where a player may fetch from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocationKind {
    /// An embedded appliance serving the client's prefix.
    Embedded,
    /// An IX appliance.
    Ix,
    /// The origin (a presigned S3 URL).
    Origin,
}

/// One place to fetch a title from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Embedded, IX or origin.
    pub kind: LocationKind,
    /// The appliance, when not the origin.
    pub appliance: Option<String>,
    /// The appliance's site, when not the origin.
    #[serde(default)]
    pub site: Option<String>,
    /// Prefix of every object URL at this location, ending in `/`: an object's URL is
    /// `base_url` + its id. For appliances `<appliance url>/tok/<token>/`; for the origin the
    /// control service's `/v1/origin/tok/<token>/`, which redirects to a presigned GET.
    pub base_url: String,
}

impl Location {
    /// The URL of object `id` at this location.
    pub fn url(&self, id: &str) -> String {
        format!("{}{id}", self.base_url)
    }
}

/// The placeholder of a rendition's object-id template, as in a DASH `SegmentTemplate`
/// (`$Number%04d$`: the segment number, zero-padded to 4 digits).
pub const NUMBER_PLACEHOLDER: &str = "$Number";

/// One rendition of a steered title: its object ids as a template (or listed when they follow
/// none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteeredRendition {
    /// Name, e.g. `720p`.
    pub name: String,
    /// Bits per second.
    pub bitrate: u64,
    /// Object ids in play order: `template` with `$Number%0<w>d$` replaced by `start_number`,
    /// `start_number + 1`, … (`count` of them), zero-padded to `w` digits (`$Number$`: not
    /// padded). `null` when the ids follow no such pattern; then `objects` lists them.
    pub template: Option<String>,
    /// The first segment number of `template`.
    #[serde(default)]
    pub start_number: u64,
    /// Objects in the rendition.
    pub count: u64,
    /// The ids, only when `template` is `null`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
}

impl SteeredRendition {
    /// Its object ids in play order (the template expanded, or the list).
    pub fn object_ids(&self) -> Vec<String> {
        let Some(t) = &self.template else {
            return self.objects.clone();
        };
        let Some((head, rest)) = t.split_once(NUMBER_PLACEHOLDER) else {
            return vec![t.clone(); self.count.min(1) as usize];
        };
        let Some((format, tail)) = rest.split_once('$') else {
            return Vec::new();
        };
        let width: usize = format
            .strip_prefix("%0")
            .and_then(|f| f.strip_suffix('d'))
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        (0..self.count)
            .map(|i| format!("{head}{:0width$}{tail}", self.start_number + i))
            .collect()
    }
}

/// Steering's answer for (client, title): where to fetch from, best first, each with one
/// per-title token, and the title's object ids as templates. Compact whatever the title's
/// length (a two-hour title stays well under 64 KiB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steering {
    /// The title.
    pub title: String,
    /// The client address as seen.
    pub client: IpAddr,
    /// Unix seconds at which the token expires.
    pub expires: u64,
    /// The token authorizes every object id starting with this.
    pub id_prefix: String,
    /// The per-title token (`<id-prefix>~<exp>~<client prefix>~<kid>~<sig>`), already part of
    /// every `base_url`.
    pub token: String,
    /// Where to fetch from, best first; the origin last.
    pub locations: Vec<Location>,
    /// The title's renditions in catalog order.
    pub renditions: Vec<SteeredRendition>,
}

/// One appliance in the fleet view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplianceView {
    /// Id.
    pub id: String,
    /// Its registration, if it registered.
    pub registration: Option<Registration>,
    /// Its last health report.
    pub last_health: Option<HealthReport>,
    /// Seconds since the last report.
    pub silent_secs: Option<u64>,
    /// Whether steering uses it now.
    pub in_steering: bool,
    /// Why not, when not.
    pub out_reason: Option<String>,
}

/// The fleet view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// Every provisioned appliance.
    pub appliances: Vec<ApplianceView>,
}

/// An error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a human.
    pub error: String,
}

/// Longest content id, in bytes.
pub const MAX_CONTENT_ID_LEN: usize = 200;

/// Whether `id` is a valid content id: `[A-Za-z0-9._-]{1,200}`, not starting with `.` (the
/// data plane's rule: a file name in a tier that can never be a path, a dotfile or a fill
/// temporary).
#[inline]
pub fn valid_content_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CONTENT_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
