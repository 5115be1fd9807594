//! The simulated AWS side end to end over real HTTP, against a real S3-compatible origin
//! (`moto_server`, from `pip install 'moto[server]'`): catalog upload and registration,
//! appliance registration and auth, health, steering order and signatures, presigned origin
//! URLs, silence and unhealthy exclusion, fill manifests, key rotation.

use std::net::{IpAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplane_api::{
    Catalog, FillManifest, Fleet, HealthAck, HealthReport, LocationKind, Registration,
    RegistrationAck, Role, Steering, TierCapacity, TierKind,
};
use edgeplane_control::cloud::clock::{Clock, ManualClock, SystemClock};
use edgeplane_control::cloud::config::CloudConfig;
use edgeplane_control::cloud::generate::{generate_catalog, parse_rendition, upload, CatalogSpec};
use edgeplane_control::cloud::{cli, origin, server};
use edgeplane_signing::KeySet;
use object_store::ObjectStore;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A `moto_server` on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run moto_server ({e}): this test needs a local S3-compatible origin; \
                     install it with `pip install 'moto[server]'` (scripts/setup.sh does)"
                )
            });
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(moto_endpoint: &str, state_dir: &std::path::Path) -> CloudConfig {
    CloudConfig::from_toml(&config_text(moto_endpoint, state_dir)).unwrap()
}

fn config_text(moto_endpoint: &str, state_dir: &std::path::Path) -> String {
    let state_dir = state_dir.display();
    format!(
        r#"
listen = "127.0.0.1:0"
admin_token = "admin-secret"
state_dir = "{state_dir}"

[origin]
endpoint = "{moto_endpoint}"
bucket = "media"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
allow_http = true

[[appliance]]
id = "emb-1"
secret = "emb-secret"
peer = "ix-1"

[[appliance]]
id = "ix-1"
secret = "ix-secret"

[health]
interval_secs = 1
missed_limit = 3

[signing]
url_ttl_secs = 600
rotate_secs = 86400
"#
    )
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn ok<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> T {
        let (status, text) = self.call(method, path, token, body).await;
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    async fn health(&self, id: &str, secret: &str, report: &HealthReport) -> HealthAck {
        self.ok(
            reqwest::Method::POST,
            &format!("/v1/appliances/{id}/health"),
            Some(secret),
            Some(serde_json::to_string(report).unwrap()),
        )
        .await
    }

    async fn steer(&self, client: &str, title: &str) -> Steering {
        self.ok(
            reqwest::Method::GET,
            &format!("/v1/steering?client={client}&title={title}"),
            None,
            None,
        )
        .await
    }
}

fn error_of(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["error"].as_str().unwrap().to_owned()
}

fn order(s: &Steering) -> Vec<String> {
    s.locations
        .iter()
        .map(|l| match l.kind {
            LocationKind::Origin => "origin".to_owned(),
            _ => l.appliance.clone().unwrap(),
        })
        .collect()
}

fn objects_of(catalog: &Catalog, titles: &[&str]) -> Vec<String> {
    catalog
        .titles
        .iter()
        .filter(|t| titles.contains(&t.id.as_str()))
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| o.id.clone())
        .collect()
}

fn registration(
    role: Role,
    url: &str,
    prefixes: &[&str],
    flash: u64,
    storage: u64,
) -> Registration {
    Registration {
        role,
        site: "test".into(),
        urls: vec![url.into()],
        prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        tiers: vec![
            TierCapacity {
                name: "hdd0".into(),
                kind: TierKind::Storage,
                capacity_bytes: storage,
            },
            TierCapacity {
                name: "nvme0".into(),
                kind: TierKind::Flash,
                capacity_bytes: flash,
            },
        ],
        max_bps: 10_000_000_000,
        version: "test".into(),
    }
}

fn healthy(objects: Vec<String>) -> HealthReport {
    HealthReport {
        healthy: true,
        serving_bps: 1_000_000,
        tls_mode: "off".into(),
        version: "test".into(),
        objects,
        ..Default::default()
    }
}

/// Checks every object URL of `s` at every appliance location verifies for `client` under
/// `keys` at `now`: `<base_url><id>`, with `base_url` = `<appliance url>/tok/<token>/`.
fn verify_all(s: &Steering, keys: &KeySet, client: IpAddr, now: u64) {
    let ids: Vec<String> = s.renditions.iter().flat_map(|r| r.object_ids()).collect();
    assert!(!ids.is_empty());
    for loc in &s.locations {
        assert!(
            loc.base_url.ends_with(&format!("/tok/{}/", s.token)),
            "{}",
            loc.base_url
        );
        for id in &ids {
            assert!(id.starts_with(&s.id_prefix), "{id}");
            let url = loc.url(id);
            let (_, rest) = url.split_once("/tok/").unwrap();
            let (token, obj) = rest.split_once('/').unwrap();
            assert_eq!(obj, id);
            assert_eq!(keys.verify_title(id, token, client, now), Ok(()), "{url}");
        }
    }
}

/// The key id of a per-title token.
fn kid_of(token: &str) -> &str {
    token.split('~').nth(3).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_end_to_end_against_moto() {
    let t_start = Instant::now();
    origin::install_crypto_provider();
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&moto.endpoint, state.path());

    // The origin: bucket, a small catalog, uploaded.
    origin::create_bucket(&cfg.origin).await.unwrap();
    origin::create_bucket(&cfg.origin).await.unwrap(); // idempotent
    let spec = CatalogSpec {
        titles: 3,
        renditions: vec![
            parse_rendition("240p").unwrap(),
            parse_rendition("720p").unwrap(),
        ],
        segments: 2,
        segment_secs: 4.0,
        scale: 0.001,
        seed: 11,
    };
    let (catalog, objects) = generate_catalog(&spec);
    let store: Arc<dyn ObjectStore> = Arc::new(origin::build_store(&cfg.origin).unwrap());
    upload(store, objects, 4).await.unwrap();

    // The service, on a clock the test moves.
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let running = server::start(cfg.clone(), clock.clone()).await.unwrap();
    let c = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", running.addr),
    };
    let (status, body) = c.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // The catalog: admin only, then registered through the CLI helper.
    let (status, text) = c
        .call(
            reqwest::Method::PUT,
            "/v1/catalog",
            Some("wrong"),
            Some(serde_json::to_string(&catalog).unwrap()),
        )
        .await;
    assert_eq!(status, 401, "{text}");
    assert!(error_of(&text).contains("admin"));
    cli::register_catalog(&c.base, "admin-secret", &catalog)
        .await
        .unwrap();
    let got: Catalog = c.ok(reqwest::Method::GET, "/v1/catalog", None, None).await;
    assert_eq!(got, catalog);

    // Registration: auth and validation.
    let emb_reg = registration(
        Role::Embedded,
        "http://emb.example:8080",
        &["198.51.100.0/24", "2001:db8:100::/48"],
        3000,
        5000,
    );
    let ix_reg = registration(Role::Ix, "http://ix.example:8080", &[], 100_000, 0);
    let body = serde_json::to_string(&emb_reg).unwrap();
    let (status, text) = c
        .call(
            reqwest::Method::POST,
            "/v1/appliances/emb-1/register",
            Some("ix-secret"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 401, "{text}");
    let (status, _) = c
        .call(
            reqwest::Method::POST,
            "/v1/appliances/emb-1/register",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 401);
    let (status, text) = c
        .call(
            reqwest::Method::POST,
            "/v1/appliances/nobody/register",
            Some("emb-secret"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 404, "{text}");
    assert!(error_of(&text).contains("nobody"));
    let (status, text) = c
        .call(
            reqwest::Method::POST,
            "/v1/appliances/emb-1/register",
            Some("emb-secret"),
            Some("{\"role\":\"embedded\"".into()),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(error_of(&text).starts_with("invalid JSON body"), "{text}");
    let (status, text) = c
        .call(
            reqwest::Method::POST,
            "/v1/appliances/emb-1/health",
            Some("emb-secret"),
            Some(serde_json::to_string(&healthy(vec![])).unwrap()),
        )
        .await;
    assert_eq!(status, 409, "health before registration: {text}");

    let emb_ack: RegistrationAck = c
        .ok(
            reqwest::Method::POST,
            "/v1/appliances/emb-1/register",
            Some("emb-secret"),
            Some(body),
        )
        .await;
    assert_eq!(emb_ack.health_interval_secs, 1);
    assert_eq!(emb_ack.signing_keys.len(), 1);
    let _: RegistrationAck = c
        .ok(
            reqwest::Method::POST,
            "/v1/appliances/ix-1/register",
            Some("ix-secret"),
            Some(serde_json::to_string(&ix_reg).unwrap()),
        )
        .await;
    let keys = KeySet {
        keys: emb_ack.signing_keys.clone(),
    };

    // Health: the embedded appliance holds t0000 and t0001, the IX appliance everything.
    let emb_objects = objects_of(&catalog, &["t0000", "t0001"]);
    let all_objects = objects_of(&catalog, &["t0000", "t0001", "t0002"]);
    c.health("ix-1", "ix-secret", &healthy(all_objects.clone()))
        .await;
    let emb_health = c
        .health("emb-1", "emb-secret", &healthy(emb_objects.clone()))
        .await;
    assert_eq!(emb_health.signing_keys, emb_ack.signing_keys);

    // Steering inside the embedded prefix: embedded, IX, origin.
    let inside: IpAddr = "198.51.100.20".parse().unwrap();
    let s = c.steer("198.51.100.20", "t0000").await;
    assert_eq!(order(&s), ["emb-1", "ix-1", "origin"]);
    assert_eq!(
        s.locations.iter().map(|l| l.kind).collect::<Vec<_>>(),
        [
            LocationKind::Embedded,
            LocationKind::Ix,
            LocationKind::Origin
        ]
    );
    assert_eq!(
        s.renditions.iter().map(|r| r.count).sum::<u64>(),
        4,
        "{s:?}"
    );
    assert_eq!(s.expires, clock.now() + 600);
    verify_all(&s, &keys, inside, clock.now());
    assert!(
        s.locations[0]
            .base_url
            .starts_with("http://emb.example:8080/tok/t0000-~"),
        "{:?}",
        s.locations[0]
    );
    // Bound to the client's /24: refused from another network.
    let first_id = s.renditions[0].object_ids()[0].clone();
    assert_eq!(first_id, "t0000-240p-0000.m4s");
    assert!(keys
        .verify_title(
            &first_id,
            &s.token,
            "198.51.101.1".parse().unwrap(),
            clock.now()
        )
        .is_err());
    // IPv6 inside the embedded /48 (URL-encoded colons).
    let s6 = c.steer("2001%3Adb8%3A100%3A%3A7", "t0001").await;
    assert_eq!(order(&s6), ["emb-1", "ix-1", "origin"]);
    assert!(s6.token.contains("~2001:db8:100::_48~"), "{}", s6.token);
    // A title the embedded appliance lacks: IX first.
    assert_eq!(
        order(&c.steer("198.51.100.20", "t0002").await),
        ["ix-1", "origin"]
    );
    // Outside the embedded prefix: IX first.
    let outside = c.steer("203.0.113.9", "t0000").await;
    assert_eq!(order(&outside), ["ix-1", "origin"]);
    verify_all(&outside, &keys, "203.0.113.9".parse().unwrap(), clock.now());

    // The origin location: the control service checks the token (for the connection's own
    // address) and redirects to a presigned S3 GET that returns the catalog's bytes.
    let local = c.steer("127.0.0.1", "t0000").await;
    let origin_loc = local.locations.last().unwrap();
    assert_eq!(origin_loc.kind, LocationKind::Origin);
    assert!(
        origin_loc
            .base_url
            .starts_with(&format!("{}/v1/origin/tok/", c.base)),
        "{}",
        origin_loc.base_url
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let t0000 = catalog.titles.iter().find(|t| t.id == "t0000").unwrap();
    for r in &t0000.renditions {
        for o in &r.objects {
            let url = origin_loc.url(&o.id);
            let resp = no_redirects.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 302, "{url}");
            let to = resp.headers()["location"].to_str().unwrap().to_owned();
            assert!(
                to.starts_with(&format!("{}/media/{}?", moto.endpoint, o.id)),
                "{to}"
            );
            assert!(to.contains("X-Amz-Signature="), "{to}");
            let resp = reqwest::get(&url).await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            let data = resp.bytes().await.unwrap();
            assert_eq!(data.len() as u64, o.size);
            assert_eq!(hex::encode(Sha256::digest(&data)), o.sha256);
        }
    }
    // Refused like an appliance refuses: another title's object, a token for another network,
    // a tampered token.
    let other = local.locations.last().unwrap().url("t0001-240p-0000.m4s");
    assert_eq!(no_redirects.get(&other).send().await.unwrap().status(), 403);
    let elsewhere = outside.locations.last().unwrap().url(&first_id);
    assert_eq!(
        no_redirects.get(&elsewhere).send().await.unwrap().status(),
        403
    );
    let tampered = origin_loc.url(&first_id).replacen("~k", "~x", 1);
    assert_eq!(
        no_redirects.get(&tampered).send().await.unwrap().status(),
        403
    );
    // (moto does not check SigV4 signatures, so a tampered presigned URL is not tested here.)

    // Bad steering requests.
    let (status, text) = c
        .call(
            reqwest::Method::GET,
            "/v1/steering?client=1.2.3.4&title=nope",
            None,
            None,
        )
        .await;
    assert_eq!(status, 404, "{text}");
    assert!(error_of(&text).contains("nope"));
    let (status, text) = c
        .call(
            reqwest::Method::GET,
            "/v1/steering?client=bogus&title=t0000",
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(error_of(&text).contains("client"));
    // Without client=, the caller's own address is steered.
    let own: Steering = c
        .ok(reqwest::Method::GET, "/v1/steering?title=t0000", None, None)
        .await;
    assert_eq!(own.client.to_string(), "127.0.0.1");
    assert_eq!(order(&own), ["ix-1", "origin"]);

    // The manifest: ranks in order, flash first, within capacity, peer named.
    let m: FillManifest = c
        .ok(
            reqwest::Method::GET,
            "/v1/appliances/emb-1/manifest",
            Some("emb-secret"),
            None,
        )
        .await;
    assert_eq!(m.generation, emb_health.manifest_generation);
    assert!(!m.objects.is_empty());
    for (i, e) in m.objects.iter().enumerate() {
        assert_eq!(e.rank, i as u64);
        assert_eq!(e.peer.as_deref(), Some("http://ix.example:8080"));
    }
    let first_storage = m.objects.iter().position(|e| e.tier == "hdd0").unwrap();
    assert!(first_storage > 0);
    assert!(m.objects[..first_storage].iter().all(|e| e.tier == "nvme0"));
    assert!(m.objects[first_storage..].iter().all(|e| e.tier == "hdd0"));
    let used = |tier: &str| -> u64 {
        m.objects
            .iter()
            .filter(|e| e.tier == tier)
            .map(|e| e.object.size)
            .sum()
    };
    assert!(used("nvme0") <= 3000 && used("hdd0") <= 5000);
    // The plan stops when the tiers are full: not the whole catalog fits.
    let total: u64 = catalog
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| o.size)
        .sum();
    assert!(used("nvme0") + used("hdd0") < total);
    let (status, _) = c
        .call(
            reqwest::Method::GET,
            "/v1/appliances/emb-1/manifest",
            Some("ix-secret"),
            None,
        )
        .await;
    assert_eq!(status, 401);

    // Key rotation: old URLs still verify under the new key set; new URLs use the new key.
    let old_token = s.token.clone();
    let old_kid = kid_of(&old_token).to_owned();
    let (status, text) = c
        .call(reqwest::Method::POST, "/v1/keys/rotate", None, None)
        .await;
    assert_eq!(status, 401, "{text}");
    clock.advance(1);
    let rotated: Value = c
        .ok(
            reqwest::Method::POST,
            "/v1/keys/rotate",
            Some("admin-secret"),
            None,
        )
        .await;
    let public = rotated["keys"].as_array().unwrap();
    assert_eq!(public.len(), 2);
    assert!(
        public.iter().all(|k| k.get("secret").is_none()),
        "{rotated}"
    );
    let ack = c
        .health("emb-1", "emb-secret", &healthy(emb_objects.clone()))
        .await;
    let new_keys = KeySet {
        keys: ack.signing_keys.clone(),
    };
    assert_eq!(new_keys.keys.len(), 2);
    let new_kid = new_keys.signing_key(clock.now()).unwrap().id.clone();
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        new_keys.verify_title(&first_id, &old_token, inside, clock.now() + 500),
        Ok(())
    );
    let after = c.steer("198.51.100.20", "t0000").await;
    assert_eq!(kid_of(&after.token), new_kid);
    verify_all(&after, &new_keys, inside, clock.now());

    // Silence: past missed_limit × interval (3 s) the embedded appliance leaves steering.
    clock.advance(3);
    c.health("ix-1", "ix-secret", &healthy(all_objects.clone()))
        .await;
    assert_eq!(
        order(&c.steer("198.51.100.20", "t0000").await),
        ["emb-1", "ix-1", "origin"],
        "exactly at the limit it is still in"
    );
    clock.advance(1);
    assert_eq!(
        order(&c.steer("198.51.100.20", "t0000").await),
        ["ix-1", "origin"]
    );
    let fleet: Fleet = c
        .ok(
            reqwest::Method::GET,
            "/v1/fleet",
            Some("admin-secret"),
            None,
        )
        .await;
    let emb_view = fleet.appliances.iter().find(|a| a.id == "emb-1").unwrap();
    assert!(!emb_view.in_steering);
    assert_eq!(emb_view.silent_secs, Some(4));
    assert!(emb_view
        .out_reason
        .as_deref()
        .unwrap()
        .starts_with("silent for 4 s"));
    let (status, _) = c
        .call(reqwest::Method::GET, "/v1/fleet", Some("emb-secret"), None)
        .await;
    assert_eq!(status, 401);

    // Reporting again brings it back; reporting unhealthy takes it out.
    c.health("emb-1", "emb-secret", &healthy(emb_objects.clone()))
        .await;
    assert_eq!(
        order(&c.steer("198.51.100.20", "t0000").await),
        ["emb-1", "ix-1", "origin"]
    );
    let mut sick = healthy(emb_objects.clone());
    sick.healthy = false;
    sick.reason = Some("all tiers down".into());
    c.health("emb-1", "emb-secret", &sick).await;
    assert_eq!(
        order(&c.steer("198.51.100.20", "t0000").await),
        ["ix-1", "origin"]
    );
    let fleet: Fleet = c
        .ok(
            reqwest::Method::GET,
            "/v1/fleet",
            Some("admin-secret"),
            None,
        )
        .await;
    let emb_view = fleet.appliances.iter().find(|a| a.id == "emb-1").unwrap();
    assert_eq!(
        emb_view.out_reason.as_deref(),
        Some("reported unhealthy: all tiers down")
    );

    // Over its load cap, the IX appliance is skipped too.
    let mut busy = healthy(all_objects.clone());
    busy.serving_bps = 10_000_000_000;
    c.health("ix-1", "ix-secret", &busy).await;
    assert_eq!(order(&c.steer("198.51.100.20", "t0000").await), ["origin"]);

    // Metrics.
    let (status, text) = c.call(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("edgeplane_cloud_registrations_total 2"),
        "{text}"
    );
    assert!(
        text.contains("edgeplane_cloud_appliances_in_steering{role=\"embedded\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("edgeplane_cloud_steering_requests_total{outcome=\"origin\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("edgeplane_cloud_steering_requests_total{outcome=\"unknown_title\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("edgeplane_cloud_steering_requests_total{outcome=\"bad_request\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("edgeplane_cloud_key_rotations_total 1"),
        "{text}"
    );

    // Unknown routes and methods answer JSON errors.
    let (status, text) = c.call(reqwest::Method::GET, "/v1/nope", None, None).await;
    assert_eq!(status, 404);
    error_of(&text);
    let (status, text) = c
        .call(reqwest::Method::DELETE, "/v1/catalog", None, None)
        .await;
    assert_eq!(status, 405);
    error_of(&text);

    running.shutdown().await.unwrap();
    eprintln!("cloud end to end: {:?}", t_start.elapsed());
}

/// The service with real time: an appliance that stops reporting leaves steering after
/// `missed_limit × interval` of wall-clock silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_in_real_time() {
    origin::install_crypto_provider();
    // The origin is never contacted here (presigning is local), so no moto_server is needed.
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config("http://127.0.0.1:9", state.path());
    cfg.health.missed_limit = 1;
    let running = server::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let c = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", running.addr),
    };
    let spec = CatalogSpec {
        titles: 1,
        renditions: vec![parse_rendition("240p").unwrap()],
        segments: 1,
        segment_secs: 1.0,
        scale: 0.001,
        seed: 1,
    };
    let (catalog, _) = generate_catalog(&spec);
    cli::register_catalog(&c.base, "admin-secret", &catalog)
        .await
        .unwrap();
    let _: RegistrationAck = c
        .ok(
            reqwest::Method::POST,
            "/v1/appliances/ix-1/register",
            Some("ix-secret"),
            Some(serde_json::to_string(&registration(Role::Ix, "http://ix:1", &[], 1, 0)).unwrap()),
        )
        .await;
    c.health(
        "ix-1",
        "ix-secret",
        &healthy(objects_of(&catalog, &["t0000"])),
    )
    .await;
    assert_eq!(
        order(&c.steer("10.0.0.1", "t0000").await),
        ["ix-1", "origin"]
    );
    // Silence is counted in whole seconds: more than 1 s must pass.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if order(&c.steer("10.0.0.1", "t0000").await) == ["origin"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in steering after 5 s of silence"
        );
    }
    running.shutdown().await.unwrap();
}

/// `edgeplane cloud gen-catalog --create-bucket --upload --register --out` against moto and a
/// running service: the catalog lands in both, and the origin serves the generated bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_catalog_cli_uploads_and_registers() {
    origin::install_crypto_provider();
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&moto.endpoint, state.path());
    let running = server::start(cfg.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let dir = std::env::temp_dir().join(format!("edgeplane-cloud-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("cloud.toml");
    std::fs::write(&config_path, config_text(&moto.endpoint, state.path())).unwrap();
    let out = dir.join("catalog.json");
    let argv: Vec<String> = [
        "x",
        "gen-catalog",
        "--config",
        config_path.to_str().unwrap(),
        "--titles",
        "2",
        "--renditions",
        "240p,hq:800000",
        "--segments",
        "3",
        "--scale",
        "0.002",
        "--seed",
        "5",
        "--create-bucket",
        "--upload",
        "--concurrency",
        "3",
        "--register",
        &base,
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        cloud: cli::CloudArgs,
    }
    let args = <Cli as clap::Parser>::try_parse_from(argv).unwrap().cloud;
    // cli::main runs its own runtime: off this one.
    let code = std::thread::spawn(move || cli::main(args)).join().unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);

    let written: Catalog = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let (expected, _) = generate_catalog(&CatalogSpec {
        titles: 2,
        renditions: vec![
            parse_rendition("240p").unwrap(),
            parse_rendition("hq:800000").unwrap(),
        ],
        segments: 3,
        segment_secs: 4.0,
        scale: 0.002,
        seed: 5,
    });
    assert_eq!(written, expected);
    let registered: Catalog = reqwest::get(format!("{base}/v1/catalog"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(registered, expected);
    // Every object is at the origin with the catalog's bytes.
    let store = origin::build_store(&cfg.origin).unwrap();
    for o in expected
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
    {
        let data = object_store::ObjectStoreExt::get(
            &store,
            &object_store::path::Path::from(o.id.as_str()),
        )
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
        assert_eq!(hex::encode(Sha256::digest(&data)), o.sha256, "{}", o.id);
    }
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A playable title as `gen-catalog --encode` names it (small stand-in bytes: the control
/// service never parses media), and its objects.
fn playable_title(t: &str) -> (edgeplane_api::Title, Vec<(String, bytes::Bytes)>) {
    use edgeplane_control::cloud::media::{init_id, media_playlist_id, segment_id};
    let mut objects = Vec::new();
    let renditions = [("180p", 250_000), ("360p", 700_000), ("audio", 64_000)]
        .iter()
        .map(|(name, bitrate)| {
            let ids = std::iter::once(init_id(t, name))
                .chain((1..=2).map(|n| segment_id(t, name, n)))
                .chain(std::iter::once(media_playlist_id(t, name)));
            let infos = ids
                .map(|id| {
                    let data = bytes::Bytes::from(format!("bytes of {id}"));
                    let info = edgeplane_api::ObjectInfo {
                        id: id.clone(),
                        size: data.len() as u64,
                        sha256: hex::encode(Sha256::digest(&data)),
                    };
                    objects.push((id, data));
                    info
                })
                .collect();
            edgeplane_api::Rendition {
                name: name.to_string(),
                bitrate: *bitrate,
                objects: infos,
            }
        })
        .collect();
    (
        edgeplane_api::Title {
            id: t.into(),
            renditions,
        },
        objects,
    )
}

/// Content steering over HTTP: the steered manifests name the pathways with per-title tokens,
/// the steering JSON ranks them (and clones what the manifest did not name), the origin pathway
/// serves the origin's bytes under the token and refuses tampered or foreign tokens, the player
/// page, and the bad-input answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_steering_manifests_tokens_and_bad_input() {
    origin::install_crypto_provider();
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&moto.endpoint, state.path());
    origin::create_bucket(&cfg.origin).await.unwrap();
    let (t0, o0) = playable_title("t0000");
    let (t1, o1) = playable_title("t0001");
    let (synthetic, _) = generate_catalog(&CatalogSpec::new(1, 1, 1));
    let mut plain = synthetic.titles[0].clone();
    plain.id = "plain".into();
    for r in &mut plain.renditions {
        for o in &mut r.objects {
            o.id = format!("plain-{}", o.id);
        }
    }
    let catalog = Catalog {
        titles: vec![t0.clone(), t1, plain],
    };
    let store: Arc<dyn ObjectStore> = Arc::new(origin::build_store(&cfg.origin).unwrap());
    upload(store, o0.iter().cloned().chain(o1).collect(), 4)
        .await
        .unwrap();
    let running = server::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let c = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", running.addr),
    };
    cli::register_catalog(&c.base, "admin-secret", &catalog)
        .await
        .unwrap();
    let get = |path: &str| {
        let (c, path) = (&c, path.to_owned());
        async move { c.call(reqwest::Method::GET, &path, None, None).await }
    };

    // Only the origin until an appliance holds the title.
    let (s, mpd) = get("/v1/play/t0000.mpd").await;
    assert_eq!(s, 200, "{mpd}");
    assert_eq!(mpd.matches("<BaseURL").count(), 1, "{mpd}");
    assert!(mpd.contains(&format!(
        "<BaseURL serviceLocation=\"origin\">{}/tok/t0000-~",
        c.base
    )));

    // An embedded appliance covering the client (the test, on 127.0.0.1) holding t0000.
    let reg = registration(
        Role::Embedded,
        "http://emb.example:8080",
        &["127.0.0.0/8"],
        1 << 30,
        1 << 30,
    );
    let _: RegistrationAck = c
        .ok(
            reqwest::Method::POST,
            "/v1/appliances/emb-1/register",
            Some("emb-secret"),
            Some(serde_json::to_string(&reg).unwrap()),
        )
        .await;
    c.health(
        "emb-1",
        "emb-secret",
        &healthy(objects_of(&catalog, &["t0000"])),
    )
    .await;
    let (s, mpd) = get("/v1/play/t0000.mpd").await;
    assert_eq!(s, 200, "{mpd}");
    let emb = mpd
        .find("serviceLocation=\"emb-1\">http://emb.example:8080/tok/t0000-~")
        .unwrap();
    let org = mpd.find("serviceLocation=\"origin\">").unwrap();
    assert!(emb < org, "{mpd}");
    assert!(mpd.contains("<ContentSteering defaultServiceLocation=\"emb-1\""));
    assert!(mpd.contains("title=t0000&amp;pathways=emb-1%2Corigin</ContentSteering>"));
    let (s, m3u8) = get("/v1/play/t0000.m3u8?client=127.0.0.9").await;
    assert_eq!(s, 200, "{m3u8}");
    assert!(m3u8.contains("#EXT-X-CONTENT-STEERING:SERVER-URI=\""));
    assert_eq!(m3u8.matches("PATHWAY-ID=\"emb-1\"").count(), 3, "{m3u8}");
    assert_eq!(m3u8.matches("PATHWAY-ID=\"origin\"").count(), 2, "{m3u8}");
    // A client outside the prefix: origin only.
    let (_, far) = get("/v1/play/t0000.m3u8?client=203.0.113.1").await;
    assert!(!far.contains("emb-1"), "{far}");

    // The steering manifest.
    let (s, text) = get("/v1/content-steering?title=t0000&pathways=origin&_HLS_pathway=origin&_HLS_throughput=123456").await;
    assert_eq!(s, 200, "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["VERSION"], 1);
    assert_eq!(m["TTL"], 10);
    assert_eq!(
        m["PATHWAY-PRIORITY"],
        serde_json::json!(["emb-1", "origin"])
    );
    assert_eq!(
        m["PATHWAY-CLONES"],
        serde_json::json!([{"BASE-ID": "origin", "ID": "emb-1", "URI-REPLACEMENT": {"HOST": "emb.example:8080"}}])
    );
    assert!(m["RELOAD-URI"]
        .as_str()
        .unwrap()
        .ends_with("/v1/content-steering?title=t0000&pathways=origin%2Cemb-1"));
    // The appliance reports unhealthy: the next reload moves players to the origin.
    let mut sick = healthy(objects_of(&catalog, &["t0000"]));
    sick.healthy = false;
    c.health("emb-1", "emb-secret", &sick).await;
    let m: Value = serde_json::from_str(
        &get("/v1/content-steering?title=t0000&_DASH_pathway=%22emb-1%22")
            .await
            .1,
    )
    .unwrap();
    assert_eq!(m["PATHWAY-PRIORITY"], serde_json::json!(["origin"]));

    // The origin pathway: the token's bytes, CORS, and refusals.
    let base = mpd[org..]
        .split('>')
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    assert!(base.ends_with('/'));
    for (id, data) in &o0 {
        let resp = c.http.get(format!("{base}{id}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{id}");
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert_eq!(resp.bytes().await.unwrap(), *data, "{id}");
    }
    let one = &o0[1].0;
    let mut tampered = base.trim_end_matches('/').to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for (what, url) in [
        ("tampered", format!("{tampered}/{one}")),
        ("another title", format!("{base}t0001-180p-0001.m4s")),
        ("no token", format!("{}/tok/x/{one}", c.base)),
    ] {
        let resp = c.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{what}: {url}");
        assert!(error_of(&resp.text().await.unwrap()).contains("token"));
    }

    // Bad input.
    for (path, status, needle) in [
        ("/v1/content-steering", 400, "title"),
        ("/v1/content-steering?title=t0000&x=1", 400, "\"x\""),
        (
            "/v1/content-steering?title=t0000&client=nope",
            400,
            "client",
        ),
        (
            "/v1/content-steering?title=t0000&_DASH_throughput=fast",
            400,
            "number",
        ),
        ("/v1/content-steering?title=nope", 404, "unknown title"),
        ("/v1/play/nope.mpd", 404, "unknown title"),
        ("/v1/play/t0000.txt", 400, ".mpd"),
        ("/v1/play/t0000.mpd?client=1.2.3", 400, "client"),
        ("/v1/play/plain.m3u8", 409, "not an encoded title"),
        ("/player?title=t0000&player=vlc", 400, "dashjs or hlsjs"),
        ("/player?player=dashjs", 400, "title"),
        (
            "/player?title=%3Cscript%3Ealert(1)%3C%2Fscript%3E&player=dashjs",
            404,
            "unknown title",
        ),
    ] {
        let (s, text) = get(path).await;
        assert_eq!(s, status, "{path}: {text}");
        assert!(error_of(&text).contains(needle), "{path}: {text}");
        assert!(
            !text.contains("<script>"),
            "{path} reflected its input: {text}"
        );
    }
    let (s, page) = get("/player?title=t0000&player=hlsjs").await;
    assert_eq!(s, 200);
    assert!(page.contains("const TITLE = \"t0000\";"));
    assert!(page.contains("<script src=\"/player/assets/hls.min.js\">"));
    running.shutdown().await.unwrap();
    drop(moto);
}
