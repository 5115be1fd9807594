//! The control service's store, one suite run against both backends: the embedded SQLite file
//! and a real PostgreSQL server started in a temporary directory (initdb/pg_ctl, Debian's
//! `postgresql` package). Migrations and the refusal of a newer schema, every kind of state
//! surviving a reopen, monotonic manifest generations (also under concurrent writers), key
//! rotation decided once across instances, and the control state on top of it: steering after
//! a restart without the catalog being sent again, two instances on one database, held sets
//! stored with the reports (surviving a restart, shared by instances, migrated into a schema-1
//! database); and a PostgreSQL restart under an open store, which must never hang a call.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use edgeplane_api::{
    Catalog, HealthReport, HeldDigest, HeldReport, LocationKind, ObjectInfo, Registration,
    Rendition, Role, TierCapacity, TierKind, Title,
};
use edgeplane_control::cloud::clock::ManualClock;
use edgeplane_control::cloud::config::CloudConfig;
use edgeplane_control::cloud::state::CloudState;
use edgeplane_control::cloud::store::{HeldChange, HeldWrite, Store, StoreError};
use edgeplane_signing::SigningKey;
use edgeplane_test_support::pg::PgServer;
use edgeplane_test_support::poll::check_all;

const T0: u64 = 1_800_000_000;

/// Makes fresh databases of one backend.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(PgServer),
}

impl Backend {
    /// The URL of a new, empty database called `name`.
    fn fresh(&self, name: &str) -> String {
        match self {
            Backend::Sqlite(dir) => format!(
                "sqlite://{}",
                dir.path().join(format!("{name}.db")).display()
            ),
            Backend::Postgres(pg) => pg.create_database(name),
        }
    }

    fn open(&self, url: &str) -> Store {
        Store::open(Some(url), &PathBuf::from("/nonexistent"))
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }
}

fn catalog(titles: usize, tag: &str) -> Catalog {
    Catalog {
        titles: (0..titles)
            .map(|t| Title {
                id: format!("t{t}"),
                renditions: vec![Rendition {
                    name: "r".into(),
                    bitrate: 1,
                    objects: (0..3)
                        .map(|s| ObjectInfo {
                            id: format!("t{t}-{s}-{tag}"),
                            size: 10,
                            sha256: "ab".repeat(32),
                        })
                        .collect(),
                }],
            })
            .collect(),
    }
}

fn registration(role: Role) -> Registration {
    Registration {
        role,
        site: "s".into(),
        urls: vec!["http://192.0.2.1:80".into()],
        prefixes: vec!["10.0.0.0/8".parse().unwrap()],
        tiers: vec![TierCapacity {
            name: "nvme".into(),
            kind: TierKind::Flash,
            capacity_bytes: 1_000,
        }],
        max_bps: 1_000_000,
        version: "t".into(),
    }
}

fn report(objects: Vec<String>) -> HealthReport {
    HealthReport {
        healthy: true,
        serving_bps: 10,
        objects,
        ..Default::default()
    }
}

fn config(url: &str) -> CloudConfig {
    CloudConfig::from_toml(&format!(
        r#"
listen = "127.0.0.1:0"
admin_token = "adm"
[origin]
bucket = "b"
[store]
url = "{url}"
[[appliance]]
id = "emb"
secret = "s-emb"
[[appliance]]
id = "ix"
secret = "s-ix"
[health]
interval_secs = 5
missed_limit = 3
[signing]
url_ttl_secs = 100
rotate_secs = 1000
"#
    ))
    .unwrap()
}

fn state(url: &str, clock: &Arc<ManualClock>, b: &Backend) -> CloudState {
    CloudState::open(config(url), clock.clone(), Arc::new(b.open(url))).unwrap()
}

type Case = fn(&Backend, &str);

const CASES: &[(&str, Case)] = &[
    ("migrations_and_epoch", migrations_and_epoch),
    ("a_newer_schema_is_refused", a_newer_schema_is_refused),
    ("everything_survives_a_reopen", everything_survives_a_reopen),
    ("generations_only_grow", generations_only_grow),
    ("concurrent_generations", concurrent_generations),
    ("keys_compare_and_set", keys_compare_and_set),
    ("steering_after_restart", steering_after_restart),
    ("two_instances_one_store", two_instances_one_store),
    (
        "held_sets_survive_and_follow_instances",
        held_sets_survive_and_follow_instances,
    ),
    (
        "a_version_1_database_is_migrated",
        a_version_1_database_is_migrated,
    ),
];

fn run_suite(b: Backend) {
    check_all(
        CASES.iter().map(|(name, case)| (name.to_string(), *case)),
        |name, case| {
            let url = b.fresh(name);
            case(&b, &url);
        },
    );
}

#[test]
fn store_suite_on_sqlite() {
    run_suite(Backend::Sqlite(tempfile::tempdir().unwrap()));
}

#[test]
fn store_suite_on_postgres() {
    run_suite(Backend::Postgres(PgServer::start()));
}

fn migrations_and_epoch(b: &Backend, url: &str) {
    let s = b.open(url);
    assert_eq!(s.schema_version(), 2);
    let epoch = s.epoch().to_string();
    assert_eq!(epoch.len(), 32, "{epoch}");
    drop(s);
    // Reopening migrates nothing and keeps the epoch.
    let s = b.open(url);
    assert_eq!(s.epoch(), epoch);
    // Another database, another epoch.
    let other = b.open(&b.fresh(&format!(
        "{}_other",
        url.rsplit('/').next().unwrap().trim_end_matches(".db")
    )));
    assert_ne!(other.epoch(), epoch);
}

fn a_newer_schema_is_refused(b: &Backend, url: &str) {
    drop(b.open(url));
    // A newer binary applied migration 99.
    match b {
        Backend::Sqlite(_) => {
            let path = url.strip_prefix("sqlite://").unwrap();
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)",
                [],
            )
            .unwrap();
        }
        Backend::Postgres(_) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            c.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)",
                &[],
            )
            .unwrap();
        }
    }
    let e = match Store::open(Some(url), &PathBuf::from("/nonexistent")) {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(
            e,
            StoreError::TooNew {
                found: 99,
                supported: 2
            }
        ),
        "{e:?}"
    );
    let line = e.to_string();
    assert!(!line.contains('\n'));
    assert_eq!(
        line,
        "store schema version 99 is newer than this edgeplane supports (2); run the newer edgeplane, or point [store] url at another database"
    );
}

fn everything_survives_a_reopen(b: &Backend, url: &str) {
    let s = b.open(url);
    assert_eq!(s.catalog().unwrap(), None);
    let v1 = s.put_catalog(&catalog(2, "a")).unwrap();
    let v2 = s.put_catalog(&catalog(3, "b")).unwrap();
    assert!(v2 > v1);
    let r1 = s
        .put_registration("emb", &registration(Role::Embedded))
        .unwrap();
    let r2 = s.put_health("emb", &report(vec!["x".into()]), T0).unwrap();
    let r3 = s.put_registration("ix", &registration(Role::Ix)).unwrap();
    assert!(r1 < r2 && r2 < r3);
    let key = SigningKey {
        id: "k1".into(),
        secret: [7; 32],
        not_after: T0 + 50,
    };
    let keys = s.keys().unwrap();
    assert!(keys.keys.is_empty());
    assert!(s
        .replace_keys(keys.version, std::slice::from_ref(&key), T0 + 10)
        .unwrap()
        .is_some());
    let g = s.manifest_generation("emb", "h1").unwrap();
    let versions = s.versions().unwrap();
    drop(s);

    let s = b.open(url);
    assert_eq!(s.versions().unwrap(), versions);
    assert_eq!(s.catalog().unwrap(), Some((v2, catalog(3, "b"))));
    let rows = s.appliances_since(0).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].id, "emb");
    assert_eq!(rows[0].seq, r2);
    assert_eq!(rows[0].registration, Some(registration(Role::Embedded)));
    assert_eq!(rows[0].health, Some((report(vec!["x".into()]), T0)));
    assert_eq!(rows[1].id, "ix");
    assert_eq!(rows[1].health, None);
    assert_eq!(s.appliances_since(r2).unwrap().len(), 1);
    assert!(s.appliances_since(r3).unwrap().is_empty());
    let k = s.keys().unwrap();
    assert_eq!(k.keys, vec![key]);
    assert_eq!(k.next_rotation, Some(T0 + 10));
    assert_eq!(s.manifest_generation("emb", "h1").unwrap(), g);
}

fn generations_only_grow(b: &Backend, url: &str) {
    let mut last = 0;
    for round in 0..4 {
        let s = b.open(url);
        // The same plan keeps its generation; any other plan (even an earlier one) is newer.
        for h in ["a", "a", "b", "a", "c", "c"] {
            let g = s.manifest_generation("emb", h).unwrap();
            assert!(g >= last, "round {round}: {g} after {last}");
            last = g;
        }
        assert_eq!(s.manifest_generation("ix", "a").unwrap(), 1);
    }
    // 4 rounds: a, b, a, c the first time (4), then a, b, a, c again each round (4 each).
    assert_eq!(last, 16);
}

fn concurrent_generations(b: &Backend, url: &str) {
    // Four connections (instances) race to record alternating plans: every generation any of
    // them reads is at least the one it read before, and every change is counted once.
    let stores: Vec<Arc<Store>> = (0..4).map(|_| Arc::new(b.open(url))).collect();
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for i in 0..25 {
                    let g = s
                        .manifest_generation("emb", &format!("plan-{n}-{i}"))
                        .unwrap();
                    assert!(g > last, "{g} after {last}");
                    last = g;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 100 distinct plans, one row: generations 1..=100 (no lost or doubled update), so the next
    // plan is 101.
    assert_eq!(stores[0].manifest_generation("emb", "final").unwrap(), 101);
}

fn keys_compare_and_set(b: &Backend, url: &str) {
    let a = b.open(url);
    let c = b.open(url);
    let k = |id: &str| SigningKey {
        id: id.into(),
        secret: [1; 32],
        not_after: T0,
    };
    let seen = a.keys().unwrap();
    assert!(a
        .replace_keys(seen.version, &[k("a")], 1)
        .unwrap()
        .is_some());
    // c read before a wrote: its write is refused, and it sees a's.
    assert_eq!(c.replace_keys(seen.version, &[k("c")], 2).unwrap(), None);
    let now = c.keys().unwrap();
    assert_eq!(now.keys, vec![k("a")]);
    assert_eq!(now.next_rotation, Some(1));
    assert!(c
        .replace_keys(now.version, &[k("a"), k("c")], 2)
        .unwrap()
        .is_some());
    assert_eq!(a.keys().unwrap().keys.len(), 2);
}

fn steering_after_restart(b: &Backend, url: &str) {
    let clock = Arc::new(ManualClock::new(T0));
    let client: IpAddr = "10.1.2.3".parse().unwrap();
    let c = catalog(2, "x");
    let objects: Vec<String> = c.titles[0].renditions[0]
        .objects
        .iter()
        .map(|o| o.id.clone())
        .collect();
    let (token0, kid, generation, epoch) = {
        let mut s = state(url, &clock, b);
        s.set_catalog(c.clone()).unwrap();
        s.register("emb", registration(Role::Embedded)).unwrap();
        let ack = s.health("emb", report(objects.clone())).unwrap();
        let st = s.steer(client, "t0", "http://control/v1/origin").unwrap();
        assert_eq!(st.locations[0].kind, LocationKind::Embedded);
        let kid = s.keys().signing_key(T0).unwrap().id.clone();
        (st.token.clone(), kid, ack.manifest_generation, ack.epoch)
    };
    // A restart a few seconds later, the catalog not sent again.
    clock.advance(3);
    let mut s = state(url, &clock, b);
    assert_eq!(s.epoch(), epoch);
    assert_eq!(s.catalog(), &c);
    assert_eq!(
        s.keys().signing_key(T0 + 3).unwrap().id,
        kid,
        "the signing key survives"
    );
    assert_eq!(
        s.keys().verify_title(&objects[0], &token0, client, T0 + 3),
        Ok(())
    );
    let st = s.steer(client, "t0", "http://control/v1/origin").unwrap();
    assert_eq!(st.locations[0].kind, LocationKind::Embedded, "{st:?}");
    assert_eq!(st.locations[0].appliance.as_deref(), Some("emb"));
    // Same plan, same generation; the appliance needs nothing new.
    let m = s.manifest("emb").unwrap();
    assert_eq!(
        (m.generation, m.epoch.as_str()),
        (generation, epoch.as_str())
    );
    assert_eq!(m.objects.len(), 6);
}

fn two_instances_one_store(b: &Backend, url: &str) {
    // (On SQLite: one file, two connections; SQLite serializes the writers.)
    let clock = Arc::new(ManualClock::new(T0));
    let mut a = state(url, &clock, b);
    let mut c = state(url, &clock, b);
    assert_eq!(a.epoch(), c.epoch());
    assert_eq!(
        a.keys(),
        c.keys(),
        "the second instance adopts the first one's key"
    );
    // Catalog through a, registration and health through c; steering through a sees both.
    let cat = catalog(1, "y");
    let objects: Vec<String> = cat.titles[0].renditions[0]
        .objects
        .iter()
        .map(|o| o.id.clone())
        .collect();
    a.set_catalog(cat).unwrap();
    c.sync().unwrap();
    c.register("emb", registration(Role::Embedded)).unwrap();
    let ack = c.health("emb", report(objects)).unwrap();
    a.sync().unwrap();
    let st = a
        .steer(
            "10.9.9.9".parse().unwrap(),
            "t0",
            "http://control/v1/origin",
        )
        .unwrap();
    assert_eq!(st.locations[0].appliance.as_deref(), Some("emb"));
    assert_eq!(
        a.manifest("emb").unwrap().generation,
        ack.manifest_generation
    );
    // A scheduled rotation happens once, whichever instance sees it due first.
    clock.advance(1000);
    a.tick().unwrap();
    c.sync().unwrap();
    c.tick().unwrap();
    assert_eq!(a.keys(), c.keys());
    assert_eq!(a.keys().keys.len(), 2, "{:?}", a.public_keys());
    assert_eq!(a.counters.rotations + c.counters.rotations, 1);
    // A forced rotation through c reaches a.
    c.rotate_keys().unwrap();
    a.sync().unwrap();
    assert_eq!(a.keys(), c.keys());
}

/// A database written by the binary before held sets were stored (schema 1) gains the held-set
/// tables at start and keeps everything else.
fn a_version_1_database_is_migrated(b: &Backend, url: &str) {
    let v1 = &edgeplane_control::cloud::store::migrations::MIGRATIONS[0];
    assert_eq!(v1.version, 1);
    let setup = format!(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
         applied_at BIGINT NOT NULL); {} \
         INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'v1', 0); \
         INSERT INTO store_meta (name, value) VALUES ('epoch', 'e1'); \
         UPDATE counters SET value = 7 WHERE name = 'fleet'; \
         INSERT INTO appliances (id, seq, registration) VALUES ('emb', 7, '');",
        v1.sql
    );
    match b {
        Backend::Sqlite(_) => {
            let path = url.strip_prefix("sqlite://").unwrap();
            rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(&setup)
                .unwrap();
        }
        Backend::Postgres(_) => {
            postgres::Client::connect(url, postgres::NoTls)
                .unwrap()
                .batch_execute(&setup)
                .unwrap();
        }
    }
    let s = b.open(url);
    assert_eq!((s.schema_version(), s.epoch()), (2, "e1"));
    let rows = s.appliances_since(0).unwrap();
    assert_eq!(
        (rows.len(), rows[0].seq, rows[0].held.is_none()),
        (1, 7, true)
    );
    assert_eq!(s.held_set("emb").unwrap(), None);
    let clock = Arc::new(ManualClock::new(T0));
    let mut st = CloudState::open(config(url), clock, Arc::new(s)).unwrap();
    st.register("emb", registration(Role::Embedded)).unwrap();
    let ack = st
        .health("emb", held_report(1, &["a"], &[], &[], true))
        .unwrap();
    assert_eq!(ack.held_seq, Some(1));
    assert_eq!(st.store().held_set("emb").unwrap().unwrap().1, ["a"]);
}

/// Runs `f` on a thread and waits for it at most 60 s: a hang detector (the calls return within
/// the store's connect and statement timeouts, far below it), not a timing assertion.
fn returns<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: the store call hung"))
}

/// A PostgreSQL restart under an open store: the next call connects again and succeeds (the
/// transaction is retried once); with the server down a call fails cleanly with `Unavailable`
/// (a 503 to the client) instead of hanging, and once the server is back the store works again.
#[test]
fn a_postgres_restart_does_not_hang_the_store() {
    let pg = PgServer::start();
    let url = pg.create_database("restart");
    let store = Arc::new(Store::open(Some(&url), &PathBuf::from("/nonexistent")).unwrap());
    let v1 = store.put_catalog(&catalog(1, "a")).unwrap();
    store
        .put_registration("emb", &registration(Role::Embedded))
        .unwrap();

    pg.restart();
    let s = store.clone();
    let v2 = returns("a write after a restart", move || {
        s.put_catalog(&catalog(2, "b"))
    })
    .unwrap_or_else(|e| panic!("after a restart: {e}\n{}", pg.log()));
    assert!(v2 > v1);
    pg.restart();
    let s = store.clone();
    let (version, cat) = returns("a read after a restart", move || s.catalog())
        .unwrap()
        .expect("the catalog");
    assert_eq!((version, cat), (v2, catalog(2, "b")));

    pg.stop();
    let s = store.clone();
    let e = returns("a write with the server down", move || {
        s.put_health("emb", &report(vec!["x".into()]), T0)
    })
    .expect_err("a write with the server down");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    let line = e.to_string();
    assert!(line.starts_with("postgres unavailable: "), "{line}");
    let s = store.clone();
    let e = returns("a read with the server down", move || s.versions())
        .expect_err("a read with the server down");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");

    pg.start_again();
    let s = store.clone();
    let seq = returns("a write after the server came back", move || {
        s.put_health("emb", &report(vec!["y".into()]), T0)
    })
    .unwrap();
    let rows = store.appliances_since(0).unwrap();
    assert_eq!(rows[0].seq, seq);
    assert_eq!(rows[0].health.as_ref().unwrap().0.objects, ["y"]);
}

/// A health report in the digest form: `now` is what the appliance holds after `added` and
/// `removed`, `full` its full list when sent.
fn held_report(
    seq: u64,
    now: &[&str],
    added: &[&str],
    removed: &[&str],
    full: bool,
) -> HealthReport {
    let d = HeldDigest::of(now.iter().copied());
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    HealthReport {
        healthy: true,
        serving_bps: 10,
        held: Some(HeldReport {
            seq,
            count: d.count(),
            digest: d.hex(),
            added: v(added),
            removed: v(removed),
            full: full.then(|| v(now)),
        }),
        ..Default::default()
    }
}

fn held_sets_survive_and_follow_instances(b: &Backend, url: &str) {
    let clock = Arc::new(ManualClock::new(T0));
    let mut a = state(url, &clock, b);
    let mut c = state(url, &clock, b);
    a.register("emb", registration(Role::Embedded)).unwrap();
    // The first report: the service knows nothing and asks for the list.
    let ack = a
        .health(
            "emb",
            held_report(1, &["o1", "o2"], &["o1", "o2"], &[], false),
        )
        .unwrap();
    assert!(ack.send_full);
    let ack = a
        .health("emb", held_report(2, &["o1", "o2"], &[], &[], true))
        .unwrap();
    assert_eq!((ack.held_seq, ack.send_full), (Some(2), false));
    // A delta through a: stored as rows, not as the list.
    let ack = a
        .health(
            "emb",
            held_report(3, &["o1", "o3"], &["o3"], &["o2"], false),
        )
        .unwrap();
    assert_eq!(ack.held_seq, Some(3));
    let (meta, objects) = a
        .store()
        .held_set("emb")
        .unwrap()
        .expect("a stored held set");
    assert_eq!(objects, ["o1", "o3"]);
    assert_eq!((meta.seq, meta.count), (3, 2));
    assert_eq!(meta.digest, HeldDigest::of(["o1", "o3"]).hex());
    // The other instance sees the set without any report of its own.
    c.sync().unwrap();
    let v = c.held("emb").unwrap();
    assert_eq!(v.objects, ["o1", "o3"]);
    assert!(v.in_sync);
    // A report through c continues from there: a delta, no full list.
    let ack = c
        .health(
            "emb",
            held_report(4, &["o1", "o3", "o4"], &["o4"], &[], false),
        )
        .unwrap();
    assert_eq!((ack.held_seq, ack.send_full), (Some(4), false));
    a.sync().unwrap();
    assert_eq!(a.held("emb").unwrap().objects, ["o1", "o3", "o4"]);
    // A delta that does not match is not stored: the stored set stays the last confirmed one.
    let ack = a
        .health(
            "emb",
            held_report(5, &["o1", "o3", "o4", "zz"], &[], &[], false),
        )
        .unwrap();
    assert!(ack.send_full);
    assert_eq!(
        a.store().held_set("emb").unwrap().unwrap().1,
        ["o1", "o3", "o4"]
    );
    // A restart: the stored set is confirmed at once; the next delta needs no full list.
    drop(a);
    drop(c);
    let mut r = state(url, &clock, b);
    let v = r.held("emb").unwrap();
    assert_eq!(v.objects, ["o1", "o3", "o4"]);
    assert!(v.in_sync);
    let ack = r
        .health("emb", held_report(6, &["o3", "o4"], &[], &["o1"], false))
        .unwrap();
    assert_eq!((ack.held_seq, ack.send_full), (Some(6), false));
    // A full list replaces the stored rows.
    let ack = r
        .health("emb", held_report(7, &["p1"], &[], &[], true))
        .unwrap();
    assert_eq!(ack.held_seq, Some(7));
    assert_eq!(r.store().held_set("emb").unwrap().unwrap().1, ["p1"]);
    drop(r);
    let r = state(url, &clock, b);
    assert_eq!(r.held("emb").unwrap().objects, ["p1"]);
}

/// Not a test: prints how fast each backend takes health reports and catalog writes (one
/// transaction each), for the report in docs. `cargo test -p edgeplane-control --test store --
/// --ignored --nocapture write_rates`.
#[test]
#[ignore = "a measurement; prints numbers"]
fn write_rates() {
    let sqlite = Backend::Sqlite(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap());
    let pg = Backend::Postgres(PgServer::start());
    for (name, b) in [("sqlite", &sqlite), ("postgres", &pg)] {
        let s = b.open(&b.fresh("rates"));
        let r = report((0..100).map(|i| format!("t{i}-0-x")).collect());
        let n = 2000;
        let t = std::time::Instant::now();
        for i in 0..n {
            s.put_health(if i % 2 == 0 { "emb" } else { "ix" }, &r, T0 + i)
                .unwrap();
        }
        let health = n as f64 / t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for i in 0..200 {
            s.manifest_generation("emb", &format!("p{i}")).unwrap();
        }
        let generations = 200.0 / t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for _ in 0..2000 {
            s.versions().unwrap();
        }
        let syncs = 2000.0 / t.elapsed().as_secs_f64();
        println!(
            "{name}: {health:.0} health reports/s (100 objects each, relaxed commit), \
             {generations:.0} generation bumps/s (durable commit), {syncs:.0} change checks/s"
        );
        // Held sets: a full list of 100,000 ids once, then reports whose delta is 10 ids in and
        // 10 out, against the same reports on an appliance holding 1,000 ids: the delta's cost
        // must not depend on the set's size.
        let digest = "0".repeat(64);
        for (app, size) in [("emb", 100_000usize), ("ix", 1_000)] {
            let full: Vec<String> = (0..size).map(|i| format!("o{i:07}")).collect();
            let t = std::time::Instant::now();
            let w = HeldWrite {
                change: HeldChange::Full(&full),
                seq: 1,
                count: size as u64,
                digest: &digest,
            };
            s.put_health_held(app, &r, T0, Some(&w)).unwrap();
            let full_secs = t.elapsed().as_secs_f64();
            let n = 300;
            let t = std::time::Instant::now();
            for k in 0..n {
                let added: Vec<String> = (0..10).map(|j| format!("n{k}-{j}")).collect();
                let removed: Vec<String> = (0..10).map(|j| format!("o{:07}", k * 10 + j)).collect();
                let w = HeldWrite {
                    change: HeldChange::Delta {
                        added: &added,
                        removed: &removed,
                    },
                    seq: 2 + k as u64,
                    count: size as u64,
                    digest: &digest,
                };
                s.put_health_held(app, &r, T0, Some(&w)).unwrap();
            }
            let deltas = n as f64 / t.elapsed().as_secs_f64();
            println!(
                "{name}: held set of {size}: full list {full_secs:.2} s, \
                 {deltas:.0} reports/s with a 10+10 delta"
            );
        }
    }
}
