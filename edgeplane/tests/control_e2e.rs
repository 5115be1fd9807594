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
//! player to the IX appliance.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgeplane_api::{Catalog, LocationKind, Steering};
use edgeplane_signing::{sign, KeySet};
use edgeplane_test_support::content::sha256_hex;
use edgeplane_test_support::poll::poll_within;
use edgeplane_test_support::scratch::temp_dir;

const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");
const ADMIN_TOKEN: &str = "admin-token-e2e";
const BUCKET: &str = "origin";
const MOTO_AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
    SignedHeaders=host, Signature=0000";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

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
        .args(["-s", "-g", "--max-time", "10", "-w", "\n%{http_code}", url])
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

struct Moto {
    proc: Option<Proc>,
    port: u16,
}

impl Moto {
    fn start(port: u16) -> Moto {
        let which = Command::new("sh")
            .args(["-c", "command -v moto_server"])
            .output()
            .expect("sh");
        assert!(
            which.status.success(),
            "moto_server is not installed: run scripts/setup.sh (pip install 'moto[server]')"
        );
        let p = Proc::spawn(
            "moto_server",
            "moto_server",
            &["-H", "127.0.0.1", "-p", &port.to_string()],
        );
        let m = Moto {
            proc: Some(p),
            port,
        };
        poll_within("moto_server to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        m
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Replaces an object at the origin (moto takes any credentials and, by default, does not
    /// check SigV4 signatures, so a well-formed header is enough).
    fn put(&self, key: &str, body: &[u8]) {
        let url = format!("{}/{BUCKET}/{key}", self.url());
        let r = ureq::put(&url)
            .set("Authorization", MOTO_AUTH)
            .send_bytes(body);
        assert!(r.is_ok(), "PUT {url}: {r:?}");
    }

    fn get(&self, key: &str) -> Vec<u8> {
        let url = format!("{}/{BUCKET}/{key}", self.url());
        let r = ureq::get(&url)
            .set("Authorization", MOTO_AUTH)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
        body
    }
}

struct Cloud {
    proc: Proc,
    api: String,
    config: PathBuf,
}

fn start_cloud(dir: &Path, moto: &Moto) -> Cloud {
    start_cloud_at(dir, moto, "127.0.0.1:0")
}

/// The control service listening on `listen` (a fixed port survives a restart).
fn start_cloud_at(dir: &Path, moto: &Moto, listen: &str) -> Cloud {
    let config = dir.join("cloud.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "{listen}"
admin_token = "{ADMIN_TOKEN}"

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
"#,
            moto.url()
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(
        "cloud",
        BIN,
        &["cloud", "serve", "--config", config.to_str().unwrap()],
    );
    let line = proc.ready("edgeplane-cloud: ready");
    let api = format!("http://{}", field(&line, "api"));
    Cloud { proc, api, config }
}

/// Generates the catalog (always the same bytes) and uploads it to the origin; with `register`,
/// also registers it with the control service and returns it.
fn publish_catalog(cloud: &Cloud, out: &Path, register: bool) -> Catalog {
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
            "0.1",
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

    fn wait_filled(&self, limit: Duration) {
        poll_within(&format!("{} to fill", self.id), limit, || {
            let (p, w) = self.fill_progress()?;
            (w > 0 && p == w).then_some(())
        });
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

/// Fetches every object of a steered title from location `loc` with curl, checking sha256.
fn play(steering: &Steering, loc: usize) {
    for o in &steering.objects {
        let (status, body) = curl(&o.urls[loc]);
        assert_eq!(status, 200, "{} from {}", o.object.id, o.urls[loc]);
        assert_eq!(body.len() as u64, o.object.size, "{}", o.object.id);
        assert_eq!(sha256_hex(&body), o.object.sha256, "{}", o.object.id);
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
    let good_bytes = moto.get(&bad_id);
    assert_eq!(good_bytes.len() as u64, *bad_size);
    let mut corrupt = good_bytes.clone();
    corrupt[0] ^= 0xff;
    moto.put(&bad_id, &corrupt);

    // The embedded appliance serves 127.0.0.0/8 (the test's players).
    let mut emb = Appliance::new(
        root.path(),
        "emb",
        "embedded",
        &["127.0.0.0/8"],
        &moto,
        &cloud,
        0,
    );
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
    play(&st, 0);
    // The origin URL works too (a presigned S3 GET).
    let origin_loc = st.locations.len() - 1;
    play(&st, origin_loc);

    // Signed-URL refusals: 403 from the data plane.
    let o = &st.objects[0];
    let url = &o.urls[0];
    let unsigned = url.split('?').next().unwrap().to_string();
    let tampered_exp = {
        let (head, q) = url.split_once("exp=").unwrap();
        let (exp, rest) = q.split_once('&').unwrap();
        format!("{head}exp={}&{rest}", exp.parse::<u64>().unwrap() + 1)
    };
    let tampered_sig = {
        let mut u = url.clone().into_bytes();
        let i = u.len() - 3;
        u[i] = if u[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(u).unwrap()
    };
    let other_object = url.replacen(&o.object.id, &st.objects[1].object.id, 1);
    let expired = signed(&o.object.id, now_unix() - 1, "127.0.0.0/24");
    let wrong_prefix = signed(&o.object.id, now_unix() + 60, "10.9.9.0/24");
    let from_steering_elsewhere = steer(&cloud, "198.51.100.7", title);
    for (what, u) in [
        ("unsigned", unsigned),
        ("tampered expiry", tampered_exp),
        ("tampered signature", tampered_sig),
        ("another object", other_object),
        ("expired", expired),
        ("wrong prefix", wrong_prefix),
    ] {
        assert_eq!(curl(&u).0, 403, "{what}: {u}");
    }
    // A URL steering signed for another network, used from here.
    if let Some(i) = from_steering_elsewhere
        .locations
        .iter()
        .position(|l| l.appliance.as_deref() == Some("emb"))
    {
        assert_eq!(curl(&from_steering_elsewhere.objects[0].urls[i]).0, 403);
    }

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

    // The embedded appliance stops: within the health timeout the player goes to IX.
    emb.agent.take().unwrap().terminate();
    emb.dataplane.take().unwrap().terminate();
    let st = poll_within(
        "steering to fail over to IX",
        Duration::from_secs(30),
        || {
            let st = steer(&cloud, "127.0.0.1", title);
            (st.locations.first()?.kind == LocationKind::Ix).then_some(st)
        },
    );
    play(&st, 0);
    moto.stop();
    drop(cloud.proc);
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

/// The appliance's manifest: `(object id, rank)` in rank order.
fn manifest_ranks(cloud: &Cloud, app: &Appliance) -> Vec<(String, u64)> {
    let m: serde_json::Value =
        ureq::get(&format!("{}/v1/appliances/{}/manifest", cloud.api, app.id))
            .set("Authorization", &format!("Bearer {}-secret", app.id))
            .call()
            .expect("manifest")
            .into_json()
            .expect("manifest JSON");
    m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["rank"].as_u64().unwrap(),
            )
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
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cloud = start_cloud_at(root.path(), &moto, &listen);
    publish_catalog(&cloud, &root.path().join("catalog.json"), true);
    let mut emb = Appliance::new(
        root.path(),
        "emb",
        "embedded",
        &["127.0.0.0/8"],
        &moto,
        &cloud,
        0,
    );
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

    // Objects appear and disappear in the tiers (the data plane's watch sees them).
    for i in 0..3 {
        std::fs::write(emb.dir.join(format!("flash/extra-{i}.m4s")), b"extra").unwrap();
    }
    let held = wait_held_view_matches(&cloud, &emb, "the held view after adds");
    assert_eq!(held.len(), 27);
    for i in 0..2 {
        std::fs::remove_file(emb.dir.join(format!("flash/extra-{i}.m4s"))).unwrap();
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

    // Demand: the lowest-ranked object of the manifest is requested again and again.
    let before = manifest_ranks(&cloud, &emb);
    let (low, low_rank) = before.last().cloned().unwrap();
    assert!(low_rank >= 20, "{before:?}");
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

    // The control service restarts (its view is gone): it asks for the full list once and its
    // view matches again.
    cloud.proc.terminate();
    cloud = start_cloud_at(root.path(), &moto, &listen);
    std::fs::write(emb.dir.join("flash/extra-after.m4s"), b"after").unwrap();
    let held = wait_held_view_matches(&cloud, &emb, "the held view after the restart");
    assert!(held.contains(&"extra-after.m4s".to_string()));
    assert!(held.contains(&"extra-2.m4s".to_string()));
    assert_eq!(
        cloud_metric(&cloud, "edgeplane_cloud_held_full_lists_total"),
        1.0
    );
    assert!(emb.agent_metric("edgeplane_agent_held_full_reports_total") >= 2.0);
    drop(cloud.proc);
}
