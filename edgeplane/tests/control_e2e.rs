//! The whole system on one machine: a real S3 origin (moto_server), the control service
//! (`edgeplane cloud serve`), and two appliances — embedded and IX, each a data plane
//! (`edgeplane serve`) and an agent (`edgeplane agent`) with their own ports and directories.
//!
//! One test walks through the issue's scenarios in order, because each builds on the last
//! filled state: a corrupt object at the origin is rejected and never served; the origin goes
//! down (breaker opens, serving continues) and comes back (fill completes); a player steered to
//! the embedded appliance fetches a title byte-exact; signed-URL refusals; the IX appliance fills
//! from its peer while its agent is killed with SIGKILL 20 times at random points, and never
//! serves a partial or corrupt object; the embedded appliance stops and steering moves the
//! player to the IX appliance (first while it drains: steering leaves a draining appliance on
//! its agent's report, before the process exits).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgeplane_api::{Catalog, LocationKind, Steering};
use edgeplane_signing::{sign, KeySet};
use edgeplane_test_support::content::sha256_hex;
use edgeplane_test_support::free_port;
use edgeplane_test_support::moto::Moto;
use edgeplane_test_support::poll::poll_within;
use edgeplane_test_support::scratch::temp_dir;

const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");
const ADMIN_TOKEN: &str = "admin-token-e2e";
const BUCKET: &str = "origin";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A child process with its output collected; SIGKILLed on drop.
struct Proc {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .env("EDGEPLANE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = output.clone();
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            output,
            lines: rx,
        }
    }

    /// Waits for a line starting with `prefix` and returns it.
    fn ready(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} printed no {prefix:?} line; output:\n{}",
                    self.name,
                    self.output()
                ),
            }
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A field of the ready line: `key=VALUE`.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}

fn get(url: &str) -> (u16, Vec<u8>) {
    match ureq::get(url).timeout(Duration::from_secs(10)).call() {
        Ok(r) => {
            let status = r.status();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
            (status, body)
        }
        Err(ureq::Error::Status(code, r)) => {
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(&mut r.into_reader(), &mut body);
            (code, body)
        }
        Err(e) => (0, e.to_string().into_bytes()),
    }
}

fn get_json(url: &str) -> Option<serde_json::Value> {
    let (status, body) = get(url);
    (status == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

/// curl, as a player would: the body and the status.
fn curl(url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-g",
            "-L",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("run curl");
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[nl + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(nl);
    (code, body)
}

struct Cloud {
    proc: Proc,
    api: String,
    config: PathBuf,
    name: String,
}

/// Starts `edgeplane cloud serve` with the default store (SQLite in `dir/cloud-state`).
fn start_cloud(dir: &Path, moto: &Moto) -> Cloud {
    start_cloud_on(dir, moto, "cloud", free_port(), None)
}

/// Starts the control service `name` on `port` (fixed, so a restart keeps the agents' URL),
/// with `[store] url` when given, else SQLite in `dir/<name>-state`.
fn start_cloud_on(dir: &Path, moto: &Moto, name: &str, port: u16, store: Option<&str>) -> Cloud {
    let config = dir.join(format!("{name}.toml"));
    let store = store
        .map(|u| format!("[store]\nurl = \"{u}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
admin_token = "{ADMIN_TOKEN}"
state_dir = "{state}"

[origin]
endpoint = "{}"
bucket = "{BUCKET}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
allow_http = true

[[appliance]]
id = "emb"
secret = "emb-secret"

[[appliance]]
id = "ix"
secret = "ix-secret"
peer = "emb"
prefixes = ["192.0.2.0/24"]

[health]
interval_secs = 1
missed_limit = 3

[signing]
url_ttl_secs = 600

{store}"#,
            moto.url(),
            state = dir.join(format!("{name}-state")).display(),
        ),
    )
    .unwrap();
    let (proc, api) = Cloud::spawn(name, &config);
    Cloud {
        proc,
        api,
        config,
        name: name.to_string(),
    }
}

impl Cloud {
    fn spawn(name: &str, config: &Path) -> (Proc, String) {
        let mut proc = Proc::spawn(
            name,
            BIN,
            &["cloud", "serve", "--config", config.to_str().unwrap()],
        );
        let line = proc.ready("edgeplane-cloud: ready");
        let api = format!("http://{}", field(&line, "api"));
        (proc, api)
    }

    /// Stops the service (SIGKILL, or SIGTERM) and starts it again with the same config.
    fn restart(&mut self, kill9: bool) {
        if kill9 {
            self.proc.kill9();
        } else {
            self.proc.terminate();
        }
        let (proc, api) = Cloud::spawn(&self.name, &self.config);
        assert_eq!(api, self.api, "the restarted service listens where it did");
        self.proc = proc;
    }

    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let req = ureq::request(method, &format!("{}{path}", self.api))
            .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .timeout(Duration::from_secs(10));
        let r = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        match r {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    fn put_catalog(&self, catalog: &Catalog) {
        let (s, body) = self.admin(
            "PUT",
            "/v1/catalog",
            Some(&serde_json::to_string(catalog).unwrap()),
        );
        assert_eq!(s, 204, "PUT /v1/catalog: {body}");
    }
}

/// Generates the catalog (always the same bytes) and uploads it to the origin; with `register`,
/// also registers it with the control service and returns it.
fn publish_catalog(cloud: &Cloud, out: &Path, register: bool) -> Catalog {
    publish_catalog_scaled(cloud, out, register, "0.1")
}

/// [`publish_catalog`] with object sizes times `scale` (the test content depends on the seed
/// and the id only, so every scale is as deterministic).
fn publish_catalog_scaled(cloud: &Cloud, out: &Path, register: bool, scale: &str) -> Catalog {
    let mut cmd = Command::new(BIN);
    cmd.args(["cloud", "gen-catalog", "--config"])
        .arg(&cloud.config)
        .args([
            "--titles",
            "3",
            "--renditions",
            "240p,480p",
            "--segments",
            "4",
        ])
        .args([
            "--scale",
            scale,
            "--seed",
            "7",
            "--upload",
            "--create-bucket",
            "--out",
        ])
        .arg(out);
    if register {
        cmd.args(["--register", &cloud.api]);
    }
    let status = cmd.status().expect("run gen-catalog");
    assert!(status.success(), "gen-catalog failed");
    serde_json::from_slice(&std::fs::read(out).unwrap()).expect("catalog JSON")
}

/// One appliance: its directories, config, data plane and agent.
struct Appliance {
    id: String,
    dir: PathBuf,
    config: PathBuf,
    http: u16,
    dataplane: Option<Proc>,
    agent: Option<Proc>,
    agent_status: Option<String>,
}

impl Appliance {
    /// The embedded appliance `emb` of most tests: it serves the test's players (127.0.0.0/8).
    fn emb(dir: &Path, moto: &Moto, cloud: &Cloud, rate_mbps: u64) -> Appliance {
        Appliance::new(
            dir,
            "emb",
            "embedded",
            &["127.0.0.0/8"],
            moto,
            cloud,
            rate_mbps,
        )
    }

    fn new(
        root: &Path,
        id: &str,
        role: &str,
        prefixes: &[&str],
        moto: &Moto,
        cloud: &Cloud,
        rate_mbps: u64,
    ) -> Appliance {
        let dir = root.join(id);
        for d in ["flash", "storage", "state"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let http = free_port();
        let admin = free_port();
        let access = if role == "embedded" {
            format!(
                "[access]\nprefixes_file = \"{}\"\n",
                dir.join("state/prefixes.json").display()
            )
        } else {
            String::new()
        };
        let prefixes: Vec<String> = prefixes.iter().map(|p| format!("\"{p}\"")).collect();
        let config = dir.join("edgeplane.toml");
        std::fs::write(
            &config,
            format!(
                r#"cores = 1

[http]
listen = "127.0.0.1:{http}"

[admin]
listen = "127.0.0.1:{admin}"

[signing]
enabled = true
keys_file = "{keys}"

{access}
[limits]
shutdown_grace_ms = 30000

[[tier]]
name = "flash"
kind = "flash"
path = "{flash}"

[[tier]]
name = "storage"
kind = "storage"
path = "{storage}"

[agent]
id = "{id}"
secret = "{id}-secret"
control_url = "{control}"
role = "{role}"
site = "e2e"
urls = ["http://127.0.0.1:{http}"]
prefixes = [{prefixes}]
state_dir = "{state}"
listen = "127.0.0.1:0"
tier_capacity = {{ flash = 400000, storage = 100000000 }}

[agent.fill]
rate_mbps = {rate_mbps}
concurrency = 3
retry_base_ms = 200
retry_max_ms = 1000
breaker_failures = 2
breaker_open_secs = 1

[agent.origin]
endpoint = "{origin}"
bucket = "{BUCKET}"
access_key_id = "test"
secret_access_key = "test"
allow_http = true
"#,
                keys = dir.join("state/signing-keys.json").display(),
                flash = dir.join("flash").display(),
                storage = dir.join("storage").display(),
                state = dir.join("state/agent").display(),
                control = cloud.api,
                prefixes = prefixes.join(", "),
                origin = moto.url(),
            ),
        )
        .unwrap();
        Appliance {
            id: id.to_string(),
            dir,
            config,
            http,
            dataplane: None,
            agent: None,
            agent_status: None,
        }
    }

    fn start_dataplane(&mut self) {
        let mut p = Proc::spawn(
            &format!("{}-dataplane", self.id),
            BIN,
            &["serve", "--config", self.config.to_str().unwrap()],
        );
        p.ready("edgeplane: ready");
        self.dataplane = Some(p);
    }

    fn start_agent(&mut self) {
        let mut p = Proc::spawn(
            &format!("{}-agent", self.id),
            BIN,
            &["agent", "--config", self.config.to_str().unwrap()],
        );
        let line = p.ready("edgeplane-agent: ready");
        self.agent_status = Some(format!("http://{}", field(&line, "status")));
        self.agent = Some(p);
    }

    fn status(&self) -> Option<serde_json::Value> {
        get_json(&format!("{}/status", self.agent_status.as_ref()?))
    }

    fn agent_metric(&self, series: &str) -> f64 {
        let (_, body) = get(&format!("{}/metrics", self.agent_status.as_ref().unwrap()));
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(-1.0)
    }

    /// (present, wanted) from the agent's status.
    fn fill_progress(&self) -> Option<(u64, u64)> {
        let s = self.status()?;
        Some((
            s["fill"]["objects_present"].as_u64()?,
            s["fill"]["objects_wanted"].as_u64()?,
        ))
    }

    /// Waits until the agent's fill has every wanted object; on failure the panic carries the
    /// agent's status and the end of its log (a fill that stalls is otherwise a bare timeout).
    fn wait_filled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((p, w)) = self.fill_progress() {
                if w > 0 && p == w {
                    return;
                }
            }
            if Instant::now() >= deadline {
                let log = self.agent.as_ref().map(Proc::output).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "gave up after {} s waiting for {} to fill; agent status: {}\n\
                     agent log (last 150 lines):\n{}",
                    limit.as_secs(),
                    self.id,
                    self.status()
                        .map_or("unreachable".into(), |s| s.to_string()),
                    lines[lines.len().saturating_sub(150)..].join("\n")
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// Every object file in its tiers, with its bytes.
    fn files(&self) -> HashMap<String, Vec<u8>> {
        let mut out = HashMap::new();
        for t in ["flash", "storage"] {
            for e in std::fs::read_dir(self.dir.join(t)).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                if !name.starts_with('.') {
                    out.insert(name, std::fs::read(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    fn keys(&self) -> KeySet {
        serde_json::from_slice(&std::fs::read(self.dir.join("state/signing-keys.json")).unwrap())
            .unwrap()
    }
}

fn steer(cloud: &Cloud, client: &str, title: &str) -> Steering {
    let url = format!("{}/v1/steering?client={client}&title={title}", cloud.api);
    let (status, body) = get(&url);
    assert_eq!(status, 200, "steering: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("steering JSON")
}

/// Fetches every object of a steered title from location `loc` with curl (following the
/// origin's redirect), checking size and sha256 against the catalog.
fn play(steering: &Steering, loc: usize, objects: &HashMap<String, (u64, String)>) {
    let ids: Vec<String> = steering
        .renditions
        .iter()
        .flat_map(|r| r.object_ids())
        .collect();
    assert!(!ids.is_empty());
    for id in &ids {
        let url = steering.locations[loc].url(id);
        let (status, body) = curl(&url);
        assert_eq!(status, 200, "{id} from {url}");
        let (size, sha) = &objects[id];
        assert_eq!(body.len() as u64, *size, "{id}");
        assert_eq!(&sha256_hex(&body), sha, "{id}");
    }
}

#[test]
fn fill_steer_play_fail_over() {
    let root = temp_dir();
    let moto_port = free_port();
    let mut moto = Moto::start(moto_port);
    let cloud = start_cloud(root.path(), &moto);
    let catalog = publish_catalog(&cloud, &root.path().join("catalog.json"), true);
    let objects: HashMap<String, (u64, String)> = catalog
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| (o.id.clone(), (o.size, o.sha256.clone())))
        .collect();
    assert_eq!(objects.len(), 3 * 2 * 4);

    // A corrupt object at the origin (same size, one byte flipped).
    let (bad_id, (bad_size, _)) = objects.iter().min_by_key(|(id, _)| (*id).clone()).unwrap();
    let bad_id = bad_id.clone();
    let good_bytes = moto.get(BUCKET, &bad_id);
    assert_eq!(good_bytes.len() as u64, *bad_size);
    let mut corrupt = good_bytes.clone();
    corrupt[0] ^= 0xff;
    moto.put(BUCKET, &bad_id, &corrupt);

    // The embedded appliance serves 127.0.0.0/8 (the test's players).
    let mut emb = Appliance::emb(root.path(), &moto, &cloud, 0);
    emb.start_dataplane();
    emb.start_agent();
    poll_within(
        "every object but the corrupt one",
        Duration::from_secs(60),
        || {
            let (p, w) = emb.fill_progress()?;
            (w == objects.len() as u64 && p == w - 1).then_some(())
        },
    );
    poll_within(
        "the checksum failure to be counted",
        Duration::from_secs(20),
        || (emb.agent_metric("edgeplane_agent_fill_checksum_failures_total") >= 1.0).then_some(()),
    );
    // Never on disk under its name, never served.
    assert!(
        !emb.files().contains_key(&bad_id),
        "the corrupt object was installed"
    );
    let keys = emb.keys();
    let key = keys
        .signing_key(now_unix())
        .expect("a signing key reached the data plane");
    let signed = |id: &str, exp: u64, pfx: &str| {
        format!(
            "{}/{id}?{}",
            emb.base(),
            sign(key, id, exp, pfx.parse().unwrap())
        )
    };
    let (s, _) = curl(&signed(&bad_id, now_unix() + 60, "127.0.0.0/24"));
    assert_eq!(s, 404, "the corrupt object must not be served");
    // Reported to the control service.
    poll_within(
        "the failure in the fleet view",
        Duration::from_secs(20),
        || {
            let fleet = get_json(&format!("{}/v1/fleet", cloud.api)).or_else(|| {
                let r = ureq::get(&format!("{}/v1/fleet", cloud.api))
                    .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
                    .call()
                    .ok()?;
                r.into_json().ok()
            })?;
            let a = fleet["appliances"]
                .as_array()?
                .iter()
                .find(|a| a["id"] == "emb")?
                .clone();
            (a["last_health"]["fill"]["checksum_failures"].as_u64()? >= 1).then_some(())
        },
    );

    // The origin goes down: the breaker opens, serving goes on.
    moto.stop();
    poll_within(
        "the origin breaker to open",
        Duration::from_secs(30),
        || {
            (emb.agent_metric("edgeplane_agent_origin_breaker{state=\"open\"}") == 1.0)
                .then_some(())
        },
    );
    let (some_id, (some_size, some_sha)) = objects.iter().find(|(id, _)| **id != bad_id).unwrap();
    let (s, body) = curl(&signed(some_id, now_unix() + 60, "127.0.0.0/24"));
    assert_eq!((s, body.len() as u64), (200, *some_size));
    assert_eq!(&sha256_hex(&body), some_sha);

    // It comes back with the right bytes: the fill completes.
    let mut moto = Moto::start(moto_port);
    publish_catalog(&cloud, &root.path().join("catalog-again.json"), false);
    emb.wait_filled(Duration::from_secs(60));
    let (s, body) = curl(&signed(&bad_id, now_unix() + 60, "127.0.0.0/24"));
    assert_eq!(s, 200);
    assert_eq!(body, good_bytes);

    // A player inside the embedded prefix is steered to it and plays a title byte-exact.
    let title = &catalog.titles[0].id;
    let st = poll_within(
        "steering to the embedded appliance",
        Duration::from_secs(20),
        || {
            let st = steer(&cloud, "127.0.0.1", title);
            (st.locations.first()?.kind == LocationKind::Embedded).then_some(st)
        },
    );
    assert_eq!(st.locations.last().unwrap().kind, LocationKind::Origin);
    play(&st, 0, &objects);
    // The origin location works too (the control service redirects to a presigned S3 GET).
    let origin_loc = st.locations.len() - 1;
    play(&st, origin_loc, &objects);

    // Token refusals: 403 from the data plane.
    let id = st.renditions[0].object_ids()[0].clone();
    let other_title = &catalog.titles[1].id;
    let other_id = objects
        .keys()
        .find(|k| k.starts_with(&format!("{other_title}-")))
        .unwrap()
        .clone();
    let url = st.locations[0].url(&id);
    let tampered_exp = {
        let exp = st.expires.to_string();
        url.replacen(&format!("~{exp}~"), &format!("~{}~", st.expires + 1), 1)
    };
    let tampered_sig = {
        let mut u = url.clone().into_bytes();
        let i = u.len() - id.len() - 3;
        u[i] = if u[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(u).unwrap()
    };
    let unsigned = format!("{}/{id}", emb.base());
    let another_title = st.locations[0].url(&other_id);
    let from_steering_elsewhere = steer(&cloud, "198.51.100.7", title);
    for (what, u) in [
        ("unsigned", unsigned),
        ("tampered expiry", tampered_exp),
        ("tampered signature", tampered_sig),
        ("another title's object", another_title),
    ] {
        assert_eq!(curl(&u).0, 403, "{what}: {u}");
    }
    // The same objects by the per-object query form still work beside the token form.
    let (s, _) = curl(&signed(&id, now_unix() + 60, "127.0.0.0/24"));
    assert_eq!(s, 200);
    let (s, _) = curl(&signed(&id, now_unix() - 1, "127.0.0.0/24"));
    assert_eq!(s, 403, "expired");
    // A token steering issued for another network, used from here.
    if let Some(i) = from_steering_elsewhere
        .locations
        .iter()
        .position(|l| l.appliance.as_deref() == Some("emb"))
    {
        assert_eq!(curl(&from_steering_elsewhere.locations[i].url(&id)).0, 403);
    }
    let (s, _) = curl(&from_steering_elsewhere.locations.last().unwrap().url(&id));
    assert_eq!(s, 403, "the origin redirect checks the token too");

    // The IX appliance fills from its peer (the embedded one) while its agent is killed with
    // SIGKILL 20 times at random points. No partial or corrupt object is ever served.
    let mut ix = Appliance::new(root.path(), "ix", "ix", &[], &moto, &cloud, 1);
    ix.start_dataplane();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut killed_mid_fill = 0;
    for _ in 0..20 {
        ix.start_agent();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        thread::sleep(Duration::from_millis(100 + rng % 500));
        let progress = ix.fill_progress();
        ix.agent.take().unwrap().kill9();
        if matches!(progress, Some((p, w)) if w > 0 && p < w) {
            killed_mid_fill += 1;
        }
        // Every object under its name is whole and correct; the data plane serves only those.
        for (id, bytes) in ix.files() {
            let (size, sha) = &objects[&id];
            assert_eq!(bytes.len() as u64, *size, "{id} partial after SIGKILL");
            assert_eq!(&sha256_hex(&bytes), sha, "{id} corrupt after SIGKILL");
        }
        for id in objects.keys().take(6) {
            let u = format!(
                "{}/{id}?{}",
                ix.base(),
                sign(key, id, now_unix() + 60, "127.0.0.0/24".parse().unwrap())
            );
            let (s, body) = curl(&u);
            match s {
                200 => assert_eq!(&sha256_hex(&body), &objects[id].1, "{id} served corrupt"),
                // Not filled yet; or no signing keys yet (before the first registration).
                404 | 403 => {}
                _ => panic!("{id}: HTTP {s}"),
            }
        }
    }
    assert!(
        killed_mid_fill >= 5,
        "only {killed_mid_fill} of 20 kills landed mid-fill"
    );
    ix.start_agent();
    ix.wait_filled(Duration::from_secs(90));
    assert!(
        ix.agent_metric("edgeplane_agent_fill_objects_total{source=\"peer\"}") > 0.0,
        "the IX appliance never filled from its peer"
    );

    // Prefixes assigned by the control service are served (and reported back).
    poll_within(
        "the assigned prefix to be served",
        Duration::from_secs(20),
        || {
            let s = ix.status()?;
            let served = s["served_prefixes"].as_array()?;
            served.iter().any(|p| p == "192.0.2.0/24").then_some(())
        },
    );

    // The embedded appliance drains (`edgeplane drain`). A slow download of a large object
    // keeps its data plane up (in-flight responses may finish); meanwhile its agent reports
    // `draining` and within a health interval steering sends new viewers to IX.
    const BIG: &str = "zz-drain-hold.bin";
    let tmp = emb.dir.join("storage/.tmp-drain-hold");
    std::fs::write(&tmp, vec![0x5au8; 64 << 20]).unwrap();
    std::fs::rename(&tmp, emb.dir.join("storage").join(BIG)).unwrap();
    let big_path = signed(BIG, now_unix() + 600, "127.0.0.0/24");
    let big_path = big_path.strip_prefix(&emb.base()).unwrap().to_string();
    let mut hold = poll_within(
        "a slow download of the large object",
        Duration::from_secs(20),
        || {
            let mut c = TcpStream::connect(("127.0.0.1", emb.http)).ok()?;
            std::io::Write::write_all(
                &mut c,
                format!("GET {big_path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .ok()?;
            let mut head = [0u8; 4096];
            let n = std::io::Read::read(&mut c, &mut head).ok()?;
            head[..n].starts_with(b"HTTP/1.1 200").then_some(c)
        },
    );
    assert_eq!(
        steer(&cloud, "127.0.0.1", title).locations[0]
            .appliance
            .as_deref(),
        Some("emb")
    );
    let drain = Command::new(BIN)
        .args(["drain", "--no-wait", "--config"])
        .arg(&emb.config)
        .output()
        .expect("run edgeplane drain");
    assert!(
        drain.status.success(),
        "edgeplane drain: {}",
        String::from_utf8_lossy(&drain.stderr)
    );
    let st = poll_within(
        "steering to leave the draining appliance",
        Duration::from_secs(10),
        || {
            let st = steer(&cloud, "127.0.0.1", title);
            (st.locations.first()?.kind == LocationKind::Ix).then_some(st)
        },
    );
    assert!(st
        .locations
        .iter()
        .all(|l| l.appliance.as_deref() != Some("emb")));
    assert!(
        emb.dataplane
            .as_mut()
            .unwrap()
            .child
            .try_wait()
            .unwrap()
            .is_none(),
        "the data plane exited: steering must have moved on the draining report, not on silence"
    );
    let fleet: serde_json::Value = ureq::get(&format!("{}/v1/fleet", cloud.api))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let view = fleet["appliances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "emb")
        .unwrap()
        .clone();
    assert_eq!(view["out_reason"], "draining", "{view}");
    assert_eq!(view["last_health"]["draining"], true, "{view}");
    play(&st, 0, &objects);
    // The slow download still completes (the drain lets in-flight responses finish).
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut hold, &mut rest).unwrap();
    assert!(rest.len() > 60 << 20, "{} bytes after the head", rest.len());

    // The embedded appliance stops: the player stays on IX.
    emb.agent.take().unwrap().terminate();
    emb.dataplane.take().unwrap().terminate();
    let st = poll_within("steering to stay on IX", Duration::from_secs(30), || {
        let st = steer(&cloud, "127.0.0.1", title);
        (st.locations.first()?.kind == LocationKind::Ix).then_some(st)
    });
    play(&st, 0, &objects);
    moto.stop();
    drop(cloud.proc);
}

/// Issue #12's operator scenario and more: the control service is restarted 10 times at points
/// of a fill and of steady state chosen by a seeded RNG (by fill progress, not by time), half of
/// them with SIGKILL while a client keeps writing the catalog; the appliance never loses an
/// object, never evicts, and its manifest generation only grows. After the fill, a URL issued
/// before a restart still plays and steering answers at once without the catalog being sent
/// again. Then the control side is told (or made) to wipe the appliance: a catalog that drops
/// two thirds of the objects, an empty catalog, and a new empty store (a new epoch) — the agent
/// refuses each manifest, counts it, and the appliance keeps serving everything. Run on the
/// default SQLite store and on PostgreSQL.
#[test]
fn control_restarts_never_cost_an_appliance_its_objects() {
    restarts_scenario(None);
}

/// [`control_restarts_never_cost_an_appliance_its_objects`] with the store on PostgreSQL.
#[test]
fn control_restarts_on_postgres_never_cost_an_appliance_its_objects() {
    restarts_scenario(Some(&edgeplane_test_support::pg::PgServer::start()));
}

fn restarts_scenario(pg: Option<&edgeplane_test_support::pg::PgServer>) {
    let root = temp_dir();
    let moto = Moto::start(free_port());
    let url = pg.map(|pg| pg.create_database("control"));
    let mut cloud = start_cloud_on(root.path(), &moto, "cloud", free_port(), url.as_deref());
    // Objects 4× the other test's: at 1 Mbit/s the fill takes about half a minute, so the
    // restart points below 24 objects land inside it.
    let catalog = publish_catalog_scaled(&cloud, &root.path().join("catalog.json"), true, "0.4");
    let objects = object_map(&catalog);
    let total = objects.len();
    let mut emb = Appliance::emb(root.path(), &moto, &cloud, 1);
    emb.start_dataplane();
    emb.start_agent();

    // A client that keeps writing (the same catalog: each PUT is one write transaction).
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (writing, writes) = (writing.clone(), writes.clone());
        let url = format!("{}/v1/catalog", cloud.api);
        let body = serde_json::to_string(&catalog).unwrap();
        thread::spawn(move || {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let r = ureq::put(&url)
                    .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
                    .set("Content-Type", "application/json")
                    .timeout(Duration::from_secs(5))
                    .send_string(&body);
                match r {
                    Ok(_) => {
                        writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };

    let health_ok =
        |a: &Appliance| a.agent_metric("edgeplane_agent_health_reports_total{result=\"ok\"}");
    // Seeded, so the restart points are the same every run.
    let mut rng = edgeplane_test_support::content::Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut last_generation = 0.0;
    let mut held_before: Vec<String> = Vec::new();
    let (mut mid_fill, mut kill9s) = (0, 0);
    // The points: after `target` objects are present (ascending, so each is ahead of the fill);
    // past the total, in steady state.
    let mut targets: Vec<usize> = (0..10)
        .map(|_| rng.below(total as u64 * 3 / 2) as usize)
        .collect();
    targets.sort();
    for (round, target) in targets.into_iter().enumerate() {
        let present = poll_within(
            &format!("round {round}: {target} objects present"),
            Duration::from_secs(120),
            || {
                let (p, w) = emb.fill_progress()?;
                let want = target.min(total) as u64;
                (w == total as u64 && p >= want).then_some(p)
            },
        );
        if (present as usize) < total {
            mid_fill += 1;
        }
        let mut held: Vec<String> = emb.files().into_keys().collect();
        held.sort();
        for id in &held_before {
            assert!(held.contains(id), "round {round}: {id} was lost");
        }
        held_before = held.clone();
        let kill9 = round % 2 == 0;
        kill9s += kill9 as u32;
        cloud.restart(kill9);
        // Steering answers at once, from the stored catalog (never a 404 for a known title).
        let (s, body) = get(&format!(
            "{}/v1/steering?client=127.0.0.1&title={}",
            cloud.api, catalog.titles[0].id
        ));
        assert_eq!(s, 200, "round {round}: {}", String::from_utf8_lossy(&body));
        // The store is consistent: the catalog is whole, the appliance registered.
        let (s, body) = get(&format!("{}/v1/catalog", cloud.api));
        assert_eq!(s, 200);
        assert_eq!(
            serde_json::from_str::<Catalog>(&String::from_utf8_lossy(&body)).unwrap(),
            catalog
        );
        let (s, fleet) = cloud.admin("GET", "/v1/fleet", None);
        assert_eq!(s, 200, "{fleet}");
        let fleet: serde_json::Value = serde_json::from_str(&fleet).unwrap();
        assert!(
            fleet["appliances"][0]["registration"].is_object(),
            "round {round}: {fleet}"
        );
        // Two health answers from the restarted service later: nothing evicted or refused, the
        // generation did not go down, every object held before is still there.
        let ok = health_ok(&emb);
        poll_within("two health reports", Duration::from_secs(30), || {
            (health_ok(&emb) >= ok + 2.0).then_some(())
        });
        let generation = emb.agent_metric("edgeplane_agent_fill_manifest_generation");
        assert!(
            generation >= last_generation,
            "round {round}: generation {generation} after {last_generation}"
        );
        last_generation = generation;
        assert_eq!(
            emb.agent_metric("edgeplane_agent_fill_evicted_total"),
            0.0,
            "round {round}"
        );
        for reason in ["empty", "evict_fraction"] {
            assert_eq!(
                emb.agent_metric(&format!(
                    "edgeplane_agent_manifest_refused_total{{reason=\"{reason}\"}}"
                )),
                0.0,
                "round {round}: nothing to refuse when the control side keeps its state"
            );
        }
        let files = emb.files();
        for id in &held_before {
            assert!(
                files.contains_key(id),
                "round {round}: {id} was lost in the restart"
            );
        }
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        mid_fill >= 3,
        "only {mid_fill} of 10 restarts landed mid-fill"
    );
    assert_eq!(kill9s, 5);
    assert!(
        writes.load(std::sync::atomic::Ordering::Relaxed) > 10,
        "the writer never wrote"
    );

    // The operator's scenario: filled, a URL issued, the service restarted (no catalog sent).
    emb.wait_filled(Duration::from_secs(60));
    let title = &catalog.titles[0].id;
    let before = poll_within("steering to emb", Duration::from_secs(20), || {
        let st = steer(&cloud, "127.0.0.1", title);
        (st.locations.first()?.kind == LocationKind::Embedded).then_some(st)
    });
    cloud.restart(true);
    let after = steer(&cloud, "127.0.0.1", title);
    assert_eq!(
        after.locations[0].kind,
        LocationKind::Embedded,
        "steering right after the restart: {after:?}"
    );
    play(&before, 0, &objects);
    play(&after, 0, &objects);
    // Both tokens verify under the keys the data plane holds now.
    let keys = emb.keys();
    for st in [&before, &after] {
        let id = &st.renditions[0].object_ids()[0];
        assert_eq!(
            keys.verify_title(id, &st.token, "127.0.0.1".parse().unwrap(), now_unix()),
            Ok(())
        );
    }
    assert_eq!(emb.files().len(), total);
    assert_eq!(emb.agent_metric("edgeplane_agent_fill_evicted_total"), 0.0);

    // Told to drop two thirds of what it holds: refused, counted, still serving.
    let refused = |reason: &str| {
        emb.agent_metric(&format!(
            "edgeplane_agent_manifest_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    let mut partial = catalog.clone();
    partial.titles.truncate(1);
    cloud.put_catalog(&partial);
    poll_within(
        "the partial manifest to be refused",
        Duration::from_secs(30),
        || (refused("evict_fraction") == 1.0).then_some(()),
    );
    // An empty catalog: refused too.
    cloud.put_catalog(&Catalog::default());
    poll_within(
        "the empty manifest to be refused",
        Duration::from_secs(30),
        || (refused("empty") == 1.0).then_some(()),
    );
    // A control service that lost its whole store (a new epoch, generation 1, no catalog).
    cloud.proc.kill9();
    match (pg, &url) {
        (Some(pg), Some(url)) => {
            let fresh = pg.create_database("control_after_loss");
            let text = std::fs::read_to_string(&cloud.config).unwrap();
            std::fs::write(&cloud.config, text.replace(url.as_str(), &fresh)).unwrap();
        }
        _ => std::fs::rename(
            root.path().join("cloud-state"),
            root.path().join("cloud-state.lost"),
        )
        .unwrap(),
    }
    cloud.restart(true);
    poll_within(
        "the new epoch's empty manifest to be refused",
        Duration::from_secs(30),
        || (refused("empty") == 2.0).then_some(()),
    );
    let log = emb.agent.as_ref().unwrap().output();
    assert_eq!(
        log.matches("refused manifest generation").count(),
        3,
        "{log}"
    );
    assert!(log.contains("control epoch changed"), "{log}");
    // Everything still held and served (signed with the key the data plane holds now).
    assert_eq!(emb.files().len(), total);
    assert_eq!(emb.agent_metric("edgeplane_agent_fill_evicted_total"), 0.0);
    let keys = poll_within(
        "the new control's key at the data plane",
        Duration::from_secs(30),
        || {
            let k = emb.keys();
            k.signing_key(now_unix()).is_some().then_some(k)
        },
    );
    let key = keys.signing_key(now_unix()).unwrap();
    for (id, (_, sha)) in &objects {
        let u = format!(
            "{}/{id}?{}",
            emb.base(),
            sign(key, id, now_unix() + 60, "127.0.0.0/24".parse().unwrap())
        );
        let (s, body) = curl(&u);
        assert_eq!(s, 200, "{id} after the refusals");
        assert_eq!(&sha256_hex(&body), sha);
    }
}

/// GET with a bearer token; the status and the JSON body.
fn get_authed(url: &str, token: &str) -> (u16, serde_json::Value) {
    match ureq::get(url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(10))
        .call()
    {
        Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Two control-service instances on one PostgreSQL (what an operator runs behind a load
/// balancer): the catalog is sent to one, each appliance reports to a different one, and both
/// steer alike, plan alike (the IX appliance's manifest names its peer, registered through the
/// other instance), and rotate keys once for the fleet.
#[test]
fn two_control_instances_share_one_postgres() {
    let root = temp_dir();
    let pg = edgeplane_test_support::pg::PgServer::start();
    let url = pg.create_database("control");
    let moto = Moto::start(free_port());
    let a = start_cloud_on(root.path(), &moto, "cloud-a", free_port(), Some(&url));
    let b = start_cloud_on(root.path(), &moto, "cloud-b", free_port(), Some(&url));
    let catalog = publish_catalog(&a, &root.path().join("catalog.json"), true);
    let (_, ca) = get_authed(&format!("{}/v1/catalog", b.api), ADMIN_TOKEN);
    assert_eq!(
        serde_json::from_value::<Catalog>(ca).unwrap(),
        catalog,
        "the catalog sent to one instance is the other's"
    );

    let mut emb = Appliance::emb(root.path(), &moto, &a, 0);
    let mut ix = Appliance::new(root.path(), "ix", "ix", &[], &moto, &b, 0);
    emb.start_dataplane();
    emb.start_agent();
    ix.start_dataplane();
    emb.wait_filled(Duration::from_secs(60));
    ix.start_agent();
    ix.wait_filled(Duration::from_secs(60));
    assert!(
        ix.agent_metric("edgeplane_agent_fill_objects_total{source=\"peer\"}") > 0.0,
        "instance B's plan for ix names emb (registered through A) as its peer"
    );

    // Both instances see both appliances' reports (emb's sent to A, ix's to B) of a full fill.
    let total = catalog_objects(&catalog);
    for cloud in [&a, &b] {
        poll_within(
            "both appliances in steering, filled",
            Duration::from_secs(20),
            || {
                let (s, fleet) = get_authed(&format!("{}/v1/fleet", cloud.api), ADMIN_TOKEN);
                let all = fleet["appliances"].as_array()?;
                let full = |x: &serde_json::Value| {
                    x["in_steering"] == true
                        && x["last_health"]["held"]["count"].as_u64() == Some(total as u64)
                };
                (s == 200 && all.iter().all(full)).then_some(())
            },
        );
    }
    // Both steer alike: a player in emb's prefix to emb, another to ix.
    let title = &catalog.titles[1].id;
    for cloud in [&a, &b] {
        let st = poll_within("steering to emb", Duration::from_secs(20), || {
            let st = steer(cloud, "127.0.0.1", title);
            (st.locations[0].appliance.as_deref() == Some("emb")).then_some(st)
        });
        assert_eq!(st.locations[1].appliance.as_deref(), Some("ix"), "{st:?}");
        play(&st, 0, &object_map(&catalog));
        let st = steer(cloud, "198.51.100.7", title);
        assert_eq!(st.locations[0].appliance.as_deref(), Some("ix"), "{st:?}");
    }
    // One plan per appliance: the same generation and epoch through either instance.
    let manifest = |cloud: &Cloud, id: &str| {
        let (s, m) = get_authed(
            &format!("{}/v1/appliances/{id}/manifest", cloud.api),
            &format!("{id}-secret"),
        );
        assert_eq!(s, 200, "{m}");
        (
            m["generation"].as_u64().unwrap(),
            m["epoch"].as_str().unwrap().to_string(),
        )
    };
    for id in ["emb", "ix"] {
        let (ga, ea) = manifest(&a, id);
        let (gb, eb) = manifest(&b, id);
        assert_eq!((ga, &ea), (gb, &eb), "{id}");
        assert_eq!(ea.len(), 32);
    }
    // A rotation through B: A signs with the new key too, and emb (reporting to A) gets it.
    let (s, body) = b.admin("POST", "/v1/keys/rotate", None);
    assert_eq!(s, 200, "{body}");
    let newest = serde_json::from_str::<serde_json::Value>(&body).unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|k| k["not_after"].as_u64().unwrap())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Steering reads other instances' writes within `[store] sync_interval_ms`.
    let st = poll_within(
        "instance A to sign with the key rotated through B",
        Duration::from_secs(20),
        || {
            let st = steer(&a, "127.0.0.1", title);
            (kid_of(&st.token) == newest).then_some(st)
        },
    );
    poll_within("emb to hold the new key", Duration::from_secs(20), || {
        emb.keys().keys.iter().any(|k| k.id == newest).then_some(())
    });
    play(&st, 0, &object_map(&catalog));
    drop(pg);
}

/// Every object of `c`: id → (size, sha256), what [`play`] checks against.
fn object_map(c: &Catalog) -> HashMap<String, (u64, String)> {
    c.titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| (o.id.clone(), (o.size, o.sha256.clone())))
        .collect()
}

fn catalog_objects(c: &Catalog) -> usize {
    c.titles
        .iter()
        .flat_map(|t| t.renditions.iter())
        .map(|r| r.objects.len())
        .sum()
}

/// The key id of a per-title token (`<id-prefix>~<exp>~<pfx>~<kid>~<sig>`).
fn kid_of(token: &str) -> &str {
    token.split('~').nth(3).unwrap()
}

/// Content versions and bit rot: an object whose bytes change at the origin under the same id
/// (the catalog names its new SHA-256) is fetched again, verified and swapped in place — never
/// evicted, served with the new bytes; an object that rots on disk is found by the idle
/// re-verification, counted, and filled again.
#[test]
fn changed_and_rotten_objects_are_filled_again() {
    let root = temp_dir();
    let moto = Moto::start(free_port());
    let cloud = start_cloud(root.path(), &moto);
    let catalog = publish_catalog(&cloud, &root.path().join("catalog.json"), true);
    let mut emb = Appliance::emb(root.path(), &moto, &cloud, 0);
    // Re-verify every object every second.
    let text = std::fs::read_to_string(&emb.config).unwrap().replace(
        "[agent.fill]\n",
        "[agent.fill]\nverify_interval_secs = 1\nverify_objects = 1000\n",
    );
    std::fs::write(&emb.config, text).unwrap();
    emb.start_dataplane();
    emb.start_agent();
    emb.wait_filled(Duration::from_secs(60));
    poll_within("a verification round", Duration::from_secs(30), || {
        (emb.agent_metric("edgeplane_agent_fill_verified_total") >= 24.0).then_some(())
    });
    assert_eq!(emb.agent_metric("edgeplane_agent_fill_bit_rot_total"), 0.0);
    let objects: Vec<_> = catalog
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .cloned()
        .collect();
    let path_of = |id: &str| {
        ["flash", "storage"]
            .iter()
            .map(|t| emb.dir.join(t).join(id))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{id} is not held"))
    };

    // Bit rot: one byte flips on disk.
    let rot = &objects[3];
    let mut bytes = std::fs::read(path_of(&rot.id)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path_of(&rot.id))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    poll_within("the rot to be found", Duration::from_secs(30), || {
        (emb.agent_metric("edgeplane_agent_fill_bit_rot_total") == 1.0).then_some(())
    });
    poll_within(
        "the rotten object filled again",
        Duration::from_secs(30),
        || {
            let p = ["flash", "storage"]
                .iter()
                .map(|t| emb.dir.join(t).join(&rot.id))
                .find(|p| p.exists())?;
            (sha256_hex(&std::fs::read(p).ok()?) == rot.sha256).then_some(())
        },
    );

    // New content under the same id (another length too), announced by the catalog.
    let changed = &objects[5];
    let new_bytes = b"a new encode of this segment ".repeat(500);
    moto.put(BUCKET, &changed.id, &new_bytes);
    let mut catalog2 = catalog.clone();
    for t in &mut catalog2.titles {
        for r in &mut t.renditions {
            for o in &mut r.objects {
                if o.id == changed.id {
                    o.size = new_bytes.len() as u64;
                    o.sha256 = sha256_hex(&new_bytes);
                }
            }
        }
    }
    cloud.put_catalog(&catalog2);
    poll_within(
        "the new content swapped in",
        Duration::from_secs(30),
        || (emb.agent_metric("edgeplane_agent_fill_content_replaced_total") == 1.0).then_some(()),
    );
    assert_eq!(std::fs::read(path_of(&changed.id)).unwrap(), new_bytes);
    assert_eq!(emb.agent_metric("edgeplane_agent_fill_evicted_total"), 0.0);
    for reason in ["empty", "evict_fraction"] {
        assert_eq!(
            emb.agent_metric(&format!(
                "edgeplane_agent_manifest_refused_total{{reason=\"{reason}\"}}"
            )),
            0.0
        );
    }
    // Served with the new bytes.
    let st = poll_within("steering to emb", Duration::from_secs(20), || {
        let st = steer(&cloud, "127.0.0.1", &catalog2.titles[0].id);
        (st.locations.first()?.kind == LocationKind::Embedded).then_some(st)
    });
    assert!(
        st.renditions
            .iter()
            .any(|r| r.object_ids().contains(&changed.id)),
        "the changed object is in title 0"
    );
    let url = st.locations[0].url(&changed.id);
    let body = poll_within(
        "the data plane to serve the new bytes",
        Duration::from_secs(20),
        || {
            let (s, body) = curl(&url);
            (s == 200 && body == new_bytes).then_some(body)
        },
    );
    assert_eq!(sha256_hex(&body), sha256_hex(&new_bytes));
    play(&st, 0, &object_map(&catalog2));
}

/// A store migrated by a newer edgeplane is refused at start: exit 1 and one clear line.
#[test]
fn a_store_newer_than_the_binary_is_refused_with_one_line() {
    let root = temp_dir();
    let moto = Moto::start(free_port());
    let mut cloud = start_cloud(root.path(), &moto);
    cloud.proc.terminate();
    let db = root.path().join("cloud-state/control.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)",
            [],
        )
        .unwrap();
    let out = Command::new(BIN)
        .args(["cloud", "serve", "--config", cloud.config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "edgeplane-cloud: error: store schema version 99 is newer than this edgeplane supports ({}); run the newer edgeplane, or point [store] url at another database",
            edgeplane_control::cloud::store::migrations::LATEST
        )
    );
}

/// An admin GET on the control service, as JSON.
fn admin_json(cloud: &Cloud, path: &str) -> Option<serde_json::Value> {
    ureq::get(&format!("{}{path}", cloud.api))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .timeout(Duration::from_secs(10))
        .call()
        .ok()?
        .into_json()
        .ok()
}

/// A sample of the control service's `/metrics`.
fn cloud_metric(cloud: &Cloud, series: &str) -> f64 {
    let (_, body) = get(&format!("{}/metrics", cloud.api));
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

/// Waits until the control service's view of `app`'s held set is confirmed and is exactly the
/// object files in its tiers; returns that set.
fn wait_held_view_matches(cloud: &Cloud, app: &Appliance, what: &str) -> Vec<String> {
    poll_within(what, Duration::from_secs(30), || {
        let mut files: Vec<String> = app.files().into_keys().collect();
        files.sort();
        let v = admin_json(cloud, &format!("/v1/appliances/{}/held", app.id))?;
        let objects: Vec<String> = serde_json::from_value(v["objects"].clone()).ok()?;
        (v["in_sync"] == true && objects == files && v["count"] == files.len()).then_some(files)
    })
}

/// The appliance's manifest entries, as the control service serves them.
fn manifest_entries(cloud: &Cloud, app: &Appliance) -> Vec<serde_json::Value> {
    let m: serde_json::Value =
        ureq::get(&format!("{}/v1/appliances/{}/manifest", cloud.api, app.id))
            .set("Authorization", &format!("Bearer {}-secret", app.id))
            .call()
            .expect("manifest")
            .into_json()
            .expect("manifest JSON");
    m["objects"].as_array().expect("objects").clone()
}

/// The appliance's manifest: `(object id, rank)` in rank order.
fn manifest_ranks(cloud: &Cloud, app: &Appliance) -> Vec<(String, u64)> {
    manifest_entries(cloud, app)
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["rank"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Objects the manifest places on another tier than the one holding them: `(id, manifest's
/// tier, tiers holding it)`.
fn misplaced(cloud: &Cloud, app: &Appliance) -> Vec<(String, String, Vec<&'static str>)> {
    manifest_entries(cloud, app)
        .iter()
        .filter_map(|e| {
            let id = e["id"].as_str()?;
            let tier = e["tier"].as_str()?;
            let on: Vec<&'static str> = ["flash", "storage"]
                .into_iter()
                .filter(|t| app.dir.join(t).join(id).exists())
                .collect();
            (on != [tier]).then(|| (id.to_string(), tier.to_string(), on))
        })
        .collect()
}

/// Section 4 of issue 12: the control service's view of what an appliance holds follows
/// digest-and-delta reports through adds, removes and a control-service restart (full list on
/// request), and requests for a low-ranked object raise its rank in the next manifest.
#[test]
fn held_set_digests_and_demand_follow_the_appliance() {
    let root = temp_dir();
    let moto = Moto::start(free_port());
    let mut cloud = start_cloud_on(root.path(), &moto, "cloud", free_port(), None);
    let catalog = publish_catalog(&cloud, &root.path().join("catalog.json"), true);
    let mut emb = Appliance::emb(root.path(), &moto, &cloud, 0);
    // Keep what the manifest does not name: the test adds and removes objects itself.
    let text = std::fs::read_to_string(&emb.config).unwrap();
    std::fs::write(
        &emb.config,
        text.replace("[agent.fill]\n", "[agent.fill]\nevict = false\n"),
    )
    .unwrap();
    emb.start_dataplane();
    emb.start_agent();
    emb.wait_filled(Duration::from_secs(60));
    let filled = wait_held_view_matches(&cloud, &emb, "the held view after the fill");
    assert_eq!(filled.len(), 24);
    // Full listings of the data plane's catalog so far: at start, and after each rescan (a
    // rescan resets the change feed). Settled: no rescan during the last two reports.
    let metric = |emb: &Appliance, name: &str| {
        emb.agent_metric(&format!("edgeplane_agent_catalog_{name}_total"))
    };
    let rescans = |emb: &Appliance| {
        emb.dataplane
            .as_ref()
            .unwrap()
            .output()
            .matches("catalog rescanned")
            .count() as f64
    };
    let reports =
        |emb: &Appliance| emb.agent_metric("edgeplane_agent_health_reports_total{result=\"ok\"}");
    let (listings, rescanned, changes) = loop {
        let (r, h) = (rescans(&emb), reports(&emb));
        poll_within("two health reports", Duration::from_secs(30), || {
            (reports(&emb) >= h + 2.0).then_some(())
        });
        if rescans(&emb) == r {
            break (metric(&emb, "listings"), r, metric(&emb, "changes"));
        }
    };
    assert!(listings >= 1.0, "{listings}");
    // The agent's own reloads (signing keys at registration, prefixes) use `rescan=0`: the
    // fill and those reloads never rebuilt the catalog, so it was listed once.
    assert!(
        emb.agent_metric("edgeplane_agent_signing_keys") >= 1.0,
        "keys were loaded by a reload"
    );
    assert_eq!(
        (rescanned, listings),
        (0.0, 1.0),
        "{}",
        emb.dataplane.as_ref().unwrap().output()
    );

    // Objects appear and disappear in the tiers (the data plane's watch sees them). On
    // storage: with `evict = false` they stay, and on flash they would take the room the
    // demand part below needs.
    for i in 0..3 {
        std::fs::write(emb.dir.join(format!("storage/extra-{i}.m4s")), b"extra").unwrap();
    }
    let held = wait_held_view_matches(&cloud, &emb, "the held view after adds");
    assert_eq!(held.len(), 27);
    for i in 0..2 {
        std::fs::remove_file(emb.dir.join(format!("storage/extra-{i}.m4s"))).unwrap();
    }
    let held = wait_held_view_matches(&cloud, &emb, "the held view after removes");
    assert_eq!(held.len(), 25);
    assert!(held.contains(&"extra-2.m4s".to_string()));
    // Steady state: changes only, no full list since the first (the service asked once).
    let full_before = cloud_metric(&cloud, "edgeplane_cloud_held_full_lists_total");
    assert_eq!(
        full_before, 1.0,
        "one full list, asked for once at the start"
    );
    let deltas = cloud_metric(&cloud, "edgeplane_cloud_held_deltas_total");
    assert!(
        deltas >= 2.0,
        "{deltas}: {}",
        get(&format!("{}/metrics", cloud.api)).1.escape_ascii()
    );
    let fleet = admin_json(&cloud, "/v1/fleet").unwrap();
    let last = &fleet["appliances"][0]["last_health"];
    assert_eq!(last["held"]["count"], 25, "{last}");
    assert!(last["held"].get("full").is_none() && last["objects"] == serde_json::json!([]));

    // No listing since (but one per rescan, should one have happened meanwhile): the five
    // changes above came from the change feed.
    let dataplane_output = |emb: &Appliance| {
        format!(
            "agent:\n{}\ndata plane:\n{}",
            emb.agent.as_ref().unwrap().output(),
            emb.dataplane.as_ref().unwrap().output()
        )
    };
    assert!(
        metric(&emb, "listings") - listings <= rescans(&emb) - rescanned,
        "{}",
        dataplane_output(&emb)
    );
    assert!(metric(&emb, "changes") >= changes + 5.0);
    // The data plane restarts (a new feed epoch) and the tiers change while it is down: the
    // agent lists the catalog once more, and the held view follows, by changes.
    std::fs::write(emb.dir.join("storage/extra-3.m4s"), b"extra").unwrap();
    wait_held_view_matches(&cloud, &emb, "the held view with extra-3");
    let listings = metric(&emb, "listings");
    emb.dataplane.take().unwrap().terminate();
    std::fs::remove_file(emb.dir.join("storage/extra-3.m4s")).unwrap();
    std::fs::write(emb.dir.join("storage/extra-down.m4s"), b"down").unwrap();
    emb.start_dataplane();
    let held = wait_held_view_matches(&cloud, &emb, "the held view after a data plane restart");
    assert!(held.contains(&"extra-down.m4s".to_string()), "{held:?}");
    assert!(!held.contains(&"extra-3.m4s".to_string()), "{held:?}");
    let listed = metric(&emb, "listings") - listings;
    assert!(
        listed >= 1.0 && listed <= 1.0 + rescans(&emb),
        "one full listing for the new epoch: {listed}\n{}",
        dataplane_output(&emb)
    );
    // And it follows the new data plane's feed: no listing for a later change.
    let (listings, rescanned, changes) = (
        metric(&emb, "listings"),
        rescans(&emb),
        metric(&emb, "changes"),
    );
    std::fs::remove_file(emb.dir.join("storage/extra-down.m4s")).unwrap();
    let held = wait_held_view_matches(&cloud, &emb, "the held view after a delete");
    assert_eq!(held.len(), 25);
    assert!(metric(&emb, "listings") - listings <= rescans(&emb) - rescanned);
    assert!(metric(&emb, "changes") > changes);
    assert_eq!(
        cloud_metric(&cloud, "edgeplane_cloud_held_full_lists_total"),
        full_before,
        "the control service got changes, never the full list again"
    );

    // Demand: the lowest-ranked object of the manifest is requested again and again.
    let before = manifest_ranks(&cloud, &emb);
    let (low, low_rank) = before.last().cloned().unwrap();
    assert!(low_rank >= 20, "{before:?}");
    assert!(
        emb.dir.join("storage").join(&low).exists() && misplaced(&cloud, &emb).is_empty(),
        "{low} is on storage at rank {low_rank}, everything on its manifest's tier"
    );
    let keys = emb.keys();
    let key = keys.signing_key(now_unix()).expect("a signing key");
    let url = format!(
        "{}/{low}?{}",
        emb.base(),
        sign(key, &low, now_unix() + 300, "127.0.0.0/24".parse().unwrap())
    );
    for _ in 0..30 {
        assert_eq!(curl(&url).0, 200, "{url}");
    }
    let new_rank = poll_within(
        "the requested object to rise in the manifest",
        Duration::from_secs(30),
        || {
            let (_, rank) = manifest_ranks(&cloud, &emb)
                .into_iter()
                .find(|(id, _)| *id == low)?;
            (rank < low_rank).then_some(rank)
        },
    );
    assert_eq!(
        new_rank, 0,
        "the only object with real demand leads its site"
    );
    assert!(cloud_metric(&cloud, "edgeplane_cloud_demand_entries_total") >= 1.0);
    // Rank 0 is on flash now, and the object it displaced from flash's last place goes to
    // storage: the agent moves both (copied, verified, then removed from the old tier; the
    // demotion first, as flash is full), and the object serves throughout.
    let object = object_map(&catalog)[&low].clone();
    poll_within(
        "every object on its manifest's tier",
        Duration::from_secs(60),
        || {
            let (status, body) = curl(&url);
            assert_eq!(status, 200, "{low} stops serving while it moves");
            assert_eq!(sha256_hex(&body), object.1, "{low} served wrong bytes");
            misplaced(&cloud, &emb).is_empty().then_some(())
        },
    );
    assert_eq!(
        sha256_hex(&std::fs::read(emb.dir.join("flash").join(&low)).unwrap()),
        object.1
    );
    assert!(emb.agent_metric("edgeplane_agent_fill_relocated_total") >= 2.0);
    assert_eq!(
        emb.agent_metric("edgeplane_agent_fill_checksum_failures_total"),
        0.0
    );
    assert_eq!(emb.fill_progress(), Some((24, 24)));

    // The control service restarts: the held view is in its store, so it has the view at
    // once, before the appliance's next report, and the reports after the restart are changes
    // applied to it: no full list is asked for or sent.
    let agent_full_before = emb.agent_metric("edgeplane_agent_held_full_reports_total");
    cloud.restart(false);
    let v = admin_json(&cloud, "/v1/appliances/emb/held").expect("the held view");
    assert_eq!(v["in_sync"], true, "{v}");
    let stored: Vec<String> = serde_json::from_value(v["objects"].clone()).unwrap();
    assert_eq!(
        stored, held,
        "the view right after the restart is the stored one"
    );
    std::fs::write(emb.dir.join("storage/extra-after.m4s"), b"after").unwrap();
    let held = wait_held_view_matches(&cloud, &emb, "the held view after the restart");
    assert!(held.contains(&"extra-after.m4s".to_string()));
    assert!(held.contains(&"extra-2.m4s".to_string()));
    assert_eq!(
        cloud_metric(&cloud, "edgeplane_cloud_held_full_lists_total"),
        0.0
    );
    assert_eq!(
        cloud_metric(&cloud, "edgeplane_cloud_held_full_requests_total"),
        0.0
    );
    assert!(cloud_metric(&cloud, "edgeplane_cloud_held_deltas_total") >= 1.0);
    assert_eq!(
        emb.agent_metric("edgeplane_agent_held_full_reports_total"),
        agent_full_before
    );
    drop(cloud.proc);
}

/// Local time now as (minute of the day, second), as the agent reads it.
fn local_clock() -> (u32, u32) {
    let out = Command::new("date").arg("+%H %M %S").output().unwrap();
    let t: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (t[0] * 60 + t[1], t[2])
}

/// The fill window holds during a pass, not only at its start: with a window closed for one
/// minute (`"HH:MM-HH:MM"` open all day but that minute) and a fill longer than a minute (rate
/// capped), the pass stops at the window's end after the objects in flight — every object on
/// disk whole — and the next window finishes the fill.
#[test]
fn the_fill_window_stops_a_pass_and_the_next_window_resumes_it() {
    let root = temp_dir();
    let moto = Moto::start(free_port());
    let cloud = start_cloud(root.path(), &moto);
    // 9.6 MB at 1 Mbit/s: about 77 s of fill, longer than the minute before the window closes.
    let catalog = publish_catalog_scaled(&cloud, &root.path().join("catalog.json"), true, "1.0");
    let objects = object_map(&catalog);
    let mut emb = Appliance::emb(root.path(), &moto, &cloud, 1);
    emb.start_dataplane();
    // Start in the first half of a minute, so the pass begins well before the window's end.
    let (minute, _) = poll_within(
        "the first half of a minute",
        Duration::from_secs(70),
        || {
            let (m, s) = local_clock();
            (s < 30).then_some((m, s))
        },
    );
    let hhmm = |m: u32| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let window = format!("{}-{}", hhmm(minute + 2), hhmm(minute + 1));
    let text = std::fs::read_to_string(&emb.config).unwrap().replace(
        "[agent.fill]\n",
        &format!("[agent.fill]\nwindow = \"{window}\"\n"),
    );
    std::fs::write(&emb.config, text).unwrap();
    emb.start_agent();
    let log = |a: &Appliance| a.agent.as_ref().unwrap().output();
    poll_within(
        "the window to close during the pass",
        Duration::from_secs(120),
        || {
            log(&emb)
                .contains("fill window closed during the pass")
                .then_some(())
        },
    );
    let (present, wanted) = emb.fill_progress().unwrap();
    assert!(
        present < wanted,
        "the pass ran on past the window: {present}/{wanted}"
    );
    for (id, bytes) in emb.files() {
        assert_eq!(sha256_hex(&bytes), objects[&id].1, "{id} is not whole");
    }
    poll_within("the window to show closed", Duration::from_secs(30), || {
        (emb.agent_metric("edgeplane_agent_fill_window_open") == 0.0).then_some(())
    });
    // The next window finishes the fill.
    emb.wait_filled(Duration::from_secs(240));
    assert_eq!(emb.agent_metric("edgeplane_agent_fill_window_open"), 1.0);
    assert_eq!(emb.files().len(), objects.len());
    assert_eq!(
        log(&emb)
            .matches("fill window closed during the pass")
            .count(),
        1
    );
}
