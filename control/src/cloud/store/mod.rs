//! The control service's durable state: catalog, fleet registry (registrations and the last
//! health report of each appliance, what steering needs), manifest generations and the signing
//! keys with their rotation schedule.
//!
//! [`Store`] holds the logic once, in SQL both databases speak; a [`Backend`] runs the SQL:
//! [`sqlite`] (the embedded default, a file under `state_dir`) or [`postgres`] (shared by several
//! control-service instances). Every call is synchronous and blocking: the server runs them on
//! tokio's blocking threads (`spawn_blocking`), never on its event loop.
//!
//! Several instances on one PostgreSQL stay consistent because every change is one transaction
//! that bumps a row of `counters` (`catalog`, `fleet`, `keys`): an instance reads the counters
//! before each request and reloads only what changed; the counter row's lock orders the writers,
//! so `appliances.seq` values become visible in order. Manifest generations live in one row per
//! appliance and only ever grow.

pub mod migrations;
pub mod postgres;
pub mod sqlite;

use std::path::Path;
use std::sync::Mutex;

use edgeplane_api::{Catalog, HealthReport, Registration};
use edgeplane_signing::SigningKey;

/// A value going into or coming out of the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    /// SQL NULL (results only).
    Null,
    /// A 64-bit integer (`BIGINT`).
    Int(i64),
    /// Text.
    Text(String),
}

impl Val {
    fn int(&self) -> Result<i64, StoreError> {
        match self {
            Val::Int(i) => Ok(*i),
            other => Err(StoreError::Corrupt(format!(
                "expected an integer, got {other:?}"
            ))),
        }
    }

    fn text(&self) -> Result<&str, StoreError> {
        match self {
            Val::Text(s) => Ok(s),
            other => Err(StoreError::Corrupt(format!("expected text, got {other:?}"))),
        }
    }
}

/// What the store could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `[store] url` is not one this binary opens.
    #[error("store.url {0:?}: want sqlite:///path/to/file.db or postgres://user@host/db")]
    Url(String),
    /// The database was written by a newer edgeplane.
    #[error("store schema version {found} is newer than this edgeplane supports ({supported}); run the newer edgeplane, or point [store] url at another database")]
    TooNew {
        /// The database's version.
        found: i64,
        /// The newest this binary knows.
        supported: i64,
    },
    /// The state directory for the default SQLite file could not be made.
    #[error("state_dir {path}: {source}")]
    StateDir {
        /// The directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database refused or failed a statement.
    #[error("{backend}: {message}")]
    Db {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// Its message.
        message: String,
    },
    /// The connection to the database broke and could not be made again (PostgreSQL
    /// restarting or unreachable): nothing was written; answered with 503.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        /// `postgres`.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// A row that does not parse (written by hand, or by a broken binary).
    #[error("store holds a malformed value: {0}")]
    Corrupt(String),
}

/// Runs SQL on one database connection. Statements use `$1`, `$2`, … placeholders and only the
/// SQL both backends accept.
pub trait Backend: Send {
    /// `sqlite` or `postgres`.
    fn name(&self) -> &'static str;
    /// Runs statements without parameters, `;`-separated.
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
    /// Runs one statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    /// Runs one statement that returns rows.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>, StoreError>;
    /// Starts a transaction that will write (SQLite takes its write lock now, so two writers
    /// never deadlock on an upgrade).
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Starts a write transaction whose commit need not reach the disk before it returns (a
    /// crash of the process loses nothing; a power cut may lose the last few, never consistency):
    /// for health reports, which are replaced every interval anyway.
    fn begin_relaxed(&mut self) -> Result<(), StoreError>;
    /// Ends a transaction begun by either `begin`.
    fn commit(&mut self) -> Result<(), StoreError> {
        self.batch("COMMIT")
    }
    /// Abandons a transaction begun by either `begin`.
    fn rollback(&mut self) -> Result<(), StoreError> {
        self.batch("ROLLBACK")
    }
    /// Inside a transaction: waits for the lock that makes migrations run one instance at a
    /// time (PostgreSQL: an advisory lock; SQLite: the write lock `begin` took already).
    fn lock_migrations(&mut self) -> Result<(), StoreError>;
    /// After a failed call: if the connection is broken, connects again; whether it did (the
    /// failed transaction is then run once more). SQLite's file never breaks that way.
    fn recover(&mut self) -> bool {
        false
    }
}

/// One appliance's stored registry entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ApplianceRow {
    /// The appliance id.
    pub id: String,
    /// The change sequence number of its last write.
    pub seq: u64,
    /// Its last registration.
    pub registration: Option<Registration>,
    /// Its last health report and when it arrived.
    pub health: Option<(HealthReport, u64)>,
    /// Its stored held set's summary (none before its first held-set change).
    pub held: Option<HeldMeta>,
}

/// The summary of one appliance's stored held set (`held_meta`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldMeta {
    /// The appliance's report sequence number that last changed the set.
    pub seq: u64,
    /// The number of objects.
    pub count: u64,
    /// The set's digest (hex, `HeldDigest`).
    pub digest: String,
    /// The store change (`appliances.seq`) that last changed the set: an instance whose copy
    /// is older reloads the set.
    pub changed: u64,
}

/// A change to an appliance's held set, written with its health report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldChange<'a> {
    /// The full list: replaces the stored set.
    Full(&'a [String]),
    /// Objects added and removed: the write costs rows in proportion to them.
    Delta {
        /// Added objects.
        added: &'a [String],
        /// Removed objects.
        removed: &'a [String],
    },
}

/// A held-set write: the change and the set's summary after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldWrite<'a> {
    /// What changed.
    pub change: HeldChange<'a>,
    /// The appliance's report sequence number.
    pub seq: u64,
    /// The number of objects after the change.
    pub count: u64,
    /// The digest after the change (hex).
    pub digest: &'a str,
}

/// The change counters: each grows whenever its part of the state changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    /// Catalog uploads.
    pub catalog: u64,
    /// Registrations and health reports.
    pub fleet: u64,
    /// Key set changes (rotations, configured keys added).
    pub keys: u64,
}

/// The stored key set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKeys {
    /// The `keys` counter this set belongs to (compare-and-set token).
    pub version: u64,
    /// Every key still stored.
    pub keys: Vec<SigningKey>,
    /// When the next scheduled rotation is due (none before the first key).
    pub next_rotation: Option<u64>,
}

/// The store.
pub struct Store {
    conn: Mutex<Box<dyn Backend>>,
    epoch: String,
    schema_version: i64,
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn i(v: u64) -> Val {
    Val::Int(v.min(i64::MAX as u64) as i64)
}

fn t(s: impl Into<String>) -> Val {
    Val::Text(s.into())
}

fn json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializable")
}

impl Store {
    /// Opens `url` (`sqlite:///abs/path.db`, `sqlite::memory:`, `postgres://…`), or with no url
    /// the SQLite file `state_dir/control.db`, and migrates it.
    pub fn open(url: Option<&str>, state_dir: &Path) -> Result<Store, StoreError> {
        let backend: Box<dyn Backend> = match url {
            None => {
                std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
                    path: state_dir.display().to_string(),
                    source,
                })?;
                Box::new(sqlite::Sqlite::open(&state_dir.join("control.db"))?)
            }
            Some(":memory:") | Some("sqlite::memory:") => Box::new(sqlite::Sqlite::memory()?),
            Some(u) if u.starts_with("sqlite://") => {
                let path = &u["sqlite://".len()..];
                if path.is_empty() {
                    return Err(StoreError::Url(u.to_string()));
                }
                if let Some(dir) = Path::new(path).parent() {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::StateDir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                Box::new(sqlite::Sqlite::open(Path::new(path))?)
            }
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Box::new(postgres::Postgres::connect(u)?)
            }
            Some(u) => return Err(StoreError::Url(u.to_string())),
        };
        Store::with_backend(backend)
    }

    /// An in-memory SQLite store (tests and benches: nothing survives).
    pub fn memory() -> Store {
        Store::with_backend(Box::new(
            sqlite::Sqlite::memory().expect("in-memory SQLite"),
        ))
        .expect("migrating an empty in-memory database")
    }

    /// Migrates the database behind `backend` and opens it.
    pub fn with_backend(mut backend: Box<dyn Backend>) -> Result<Store, StoreError> {
        let (epoch, schema_version) = migrate(backend.as_mut())?;
        Ok(Store {
            conn: Mutex::new(backend),
            epoch,
            schema_version,
        })
    }

    /// This database's identity: made when its schema was created, the same for every instance
    /// on it and across restarts; a new database has a new one. Manifests carry it.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The schema version after migrating.
    pub fn schema_version(&self) -> i64 {
        self.schema_version
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.conn().name()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Box<dyn Backend>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one write transaction: committed when it returns `Ok`, rolled back otherwise.
    fn tx<R>(
        &self,
        f: impl Fn(&mut dyn Backend) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.tx_with(false, f)
    }

    fn tx_with<R>(
        &self,
        relaxed: bool,
        f: impl Fn(&mut dyn Backend) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut c = self.conn();
        let c: &mut dyn Backend = c.as_mut();
        match tx_once(c, relaxed, &f) {
            // A broken connection (a restarted PostgreSQL): the transaction did not commit, or
            // its commit was lost with the connection; every write here is safe to repeat, so
            // it runs once more on a new connection.
            Err(e) if c.recover() => {
                tracing::warn!("store: {e}; connected again, retrying the transaction once");
                tx_once(c, relaxed, &f)
            }
            r => r,
        }
    }

    /// Runs a read on the connection, once more on a new connection if it broke.
    fn read<R>(
        &self,
        f: impl Fn(&mut dyn Backend) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut c = self.conn();
        let c: &mut dyn Backend = c.as_mut();
        match f(c) {
            Err(e) if c.recover() => {
                tracing::warn!("store: {e}; connected again, reading once more");
                f(c)
            }
            r => r,
        }
    }

    /// The change counters.
    pub fn versions(&self) -> Result<Versions, StoreError> {
        let rows = self.read(|c| c.query("SELECT name, value FROM counters", &[]))?;
        let mut v = Versions::default();
        for r in rows {
            let n = u(r[1].int()?);
            match r[0].text()? {
                "catalog" => v.catalog = n,
                "fleet" => v.fleet = n,
                "keys" => v.keys = n,
                _ => {}
            }
        }
        Ok(v)
    }

    /// The catalog and its version (`None` before the first upload).
    pub fn catalog(&self) -> Result<Option<(u64, Catalog)>, StoreError> {
        let rows = self.read(|c| c.query("SELECT version, body FROM catalog WHERE id = 1", &[]))?;
        match rows.first() {
            None => Ok(None),
            Some(r) => Ok(Some((u(r[0].int()?), json("catalog", r[1].text()?)?))),
        }
    }

    /// Replaces the catalog; its new version.
    pub fn put_catalog(&self, catalog: &Catalog) -> Result<u64, StoreError> {
        let body = to_json(catalog);
        self.tx(|c| {
            let version = bump(c, "catalog")?;
            c.execute(
                "INSERT INTO catalog (id, version, body) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body",
                &[i(version), t(body.as_str())],
            )?;
            Ok(version)
        })
    }

    /// Records a registration; the change's sequence number.
    pub fn put_registration(&self, id: &str, reg: &Registration) -> Result<u64, StoreError> {
        let body = to_json(reg);
        self.tx(|c| {
            let seq = bump(c, "fleet")?;
            c.execute(
                "INSERT INTO appliances (id, seq, registration) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, registration = excluded.registration",
                &[t(id), i(seq), t(body.as_str())],
            )?;
            Ok(seq)
        })
    }

    /// Records a health report received at `at`; the change's sequence number. Committed
    /// without waiting for the disk (the next report replaces it within an interval).
    pub fn put_health(&self, id: &str, report: &HealthReport, at: u64) -> Result<u64, StoreError> {
        self.put_health_held(id, report, at, None)
    }

    /// [`Store::put_health`] with a change to the appliance's held set, in the same
    /// transaction: a delta inserts and deletes its rows, a full list replaces the set.
    pub fn put_health_held(
        &self,
        id: &str,
        report: &HealthReport,
        at: u64,
        held: Option<&HeldWrite<'_>>,
    ) -> Result<u64, StoreError> {
        let body = to_json(report);
        self.tx_with(true, |c| {
            let seq = bump(c, "fleet")?;
            c.execute(
                "INSERT INTO appliances (id, seq, health, health_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, health = excluded.health, \
                 health_at = excluded.health_at",
                &[t(id), i(seq), t(body.as_str()), i(at)],
            )?;
            if let Some(h) = held {
                write_held(c, id, seq, h)?;
            }
            Ok(seq)
        })
    }

    /// Appliance `id`'s stored held set, sorted, and its summary (`None` if none is stored).
    pub fn held_set(&self, id: &str) -> Result<Option<(HeldMeta, Vec<String>)>, StoreError> {
        self.read(|c| {
            let meta = c.query(
                "SELECT seq, count, digest, changed FROM held_meta WHERE appliance = $1",
                &[t(id)],
            )?;
            let Some(m) = meta.first() else {
                return Ok(None);
            };
            let meta = HeldMeta {
                seq: u(m[0].int()?),
                count: u(m[1].int()?),
                digest: m[2].text()?.to_string(),
                changed: u(m[3].int()?),
            };
            let rows = c.query(
                "SELECT object FROM held WHERE appliance = $1 ORDER BY object",
                &[t(id)],
            )?;
            let objects = rows
                .iter()
                .map(|r| r[0].text().map(str::to_string))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((meta, objects)))
        })
    }

    /// Appliances written after sequence number `after`, oldest change first.
    pub fn appliances_since(&self, after: u64) -> Result<Vec<ApplianceRow>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                "SELECT a.id, a.seq, a.registration, a.health, a.health_at, \
             m.seq, m.count, m.digest, m.changed FROM appliances a \
             LEFT JOIN held_meta m ON m.appliance = a.id \
             WHERE a.seq > $1 ORDER BY a.seq",
                &[i(after)],
            )
        })?;
        rows.iter()
            .map(|r| {
                let id = r[0].text()?.to_string();
                let reg = r[2].text()?;
                let health = r[3].text()?;
                Ok(ApplianceRow {
                    seq: u(r[1].int()?),
                    registration: if reg.is_empty() {
                        None
                    } else {
                        Some(json(&format!("registration of {id}"), reg)?)
                    },
                    health: if health.is_empty() {
                        None
                    } else {
                        Some((json(&format!("health of {id}"), health)?, u(r[4].int()?)))
                    },
                    held: match &r[5] {
                        Val::Null => None,
                        _ => Some(HeldMeta {
                            seq: u(r[5].int()?),
                            count: u(r[6].int()?),
                            digest: r[7].text()?.to_string(),
                            changed: u(r[8].int()?),
                        }),
                    },
                    id,
                })
            })
            .collect()
    }

    /// The manifest generation of `appliance` for a plan whose digest is `plan_hash`: the
    /// stored one when the plan is unchanged, else one more than it (1 for the first plan).
    /// Generations never go down, across restarts and instances.
    pub fn manifest_generation(&self, appliance: &str, plan_hash: &str) -> Result<u64, StoreError> {
        self.tx(|c| {
            c.execute(
                "INSERT INTO manifests (appliance, generation, plan_hash) VALUES ($1, 1, $2) \
                 ON CONFLICT (appliance) DO NOTHING",
                &[t(appliance), t(plan_hash)],
            )?;
            c.execute(
                "UPDATE manifests SET generation = generation + 1, plan_hash = $2 \
                 WHERE appliance = $1 AND plan_hash <> $2",
                &[t(appliance), t(plan_hash)],
            )?;
            let rows = c.query(
                "SELECT generation FROM manifests WHERE appliance = $1",
                &[t(appliance)],
            )?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::Corrupt(format!("no manifest row for {appliance}")))?;
            Ok(u(row[0].int()?))
        })
    }

    /// The stored key set.
    pub fn keys(&self) -> Result<StoredKeys, StoreError> {
        self.read(|c| {
            let version = c.query("SELECT value FROM counters WHERE name = 'keys'", &[])?;
            let version = u(version
                .first()
                .ok_or_else(|| StoreError::Corrupt("no keys counter".into()))?[0]
                .int()?);
            let rows = c.query(
                "SELECT id, secret, not_after FROM signing_keys ORDER BY not_after, id",
                &[],
            )?;
            let keys = rows
                .iter()
                .map(|r| {
                    let id = r[0].text()?.to_string();
                    let mut secret = [0u8; 32];
                    hex::decode_to_slice(r[1].text()?, &mut secret)
                        .map_err(|e| StoreError::Corrupt(format!("secret of key {id}: {e}")))?;
                    Ok(SigningKey {
                        id,
                        secret,
                        not_after: u(r[2].int()?),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let next = c.query(
                "SELECT value FROM store_meta WHERE name = 'next_rotation'",
                &[],
            )?;
            let next_rotation = match next.first() {
                None => None,
                Some(r) => Some(
                    r[0].text()?
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("next_rotation: {e}")))?,
                ),
            };
            Ok(StoredKeys {
                version,
                keys,
                next_rotation,
            })
        })
    }

    /// Replaces the key set and the rotation schedule if nobody changed them since `expected`
    /// was read (`Ok(None)` then: read again and redo). The new version on success.
    pub fn replace_keys(
        &self,
        expected: u64,
        keys: &[SigningKey],
        next_rotation: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.tx(|c| {
            let rows = c.query(
                "UPDATE counters SET value = value + 1 WHERE name = 'keys' AND value = $1 \
                 RETURNING value",
                &[i(expected)],
            )?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let version = u(row[0].int()?);
            c.execute("DELETE FROM signing_keys", &[])?;
            for k in keys {
                c.execute(
                    "INSERT INTO signing_keys (id, secret, not_after) VALUES ($1, $2, $3)",
                    &[t(k.id.clone()), t(hex::encode(k.secret)), i(k.not_after)],
                )?;
            }
            c.execute(
                "INSERT INTO store_meta (name, value) VALUES ('next_rotation', $1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[t(next_rotation.to_string())],
            )?;
            Ok(Some(version))
        })
    }
}

/// One transaction: committed when `f` returns `Ok`, rolled back otherwise.
fn tx_once<R>(
    c: &mut dyn Backend,
    relaxed: bool,
    f: &impl Fn(&mut dyn Backend) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    if relaxed {
        c.begin_relaxed()?;
    } else {
        c.begin()?;
    }
    match f(c) {
        Ok(r) => {
            c.commit()?;
            Ok(r)
        }
        Err(e) => {
            let _ = c.rollback();
            Err(e)
        }
    }
}

/// Applies a held-set change inside the caller's transaction; `seq` is the write's change number.
fn write_held(
    c: &mut dyn Backend,
    id: &str,
    seq: u64,
    h: &HeldWrite<'_>,
) -> Result<(), StoreError> {
    match h.change {
        HeldChange::Full(objects) => {
            c.execute("DELETE FROM held WHERE appliance = $1", &[t(id)])?;
            insert_held(c, id, objects)?;
        }
        HeldChange::Delta { added, removed } => {
            for chunk in removed.chunks(HELD_CHUNK) {
                let list = (0..chunk.len())
                    .map(|n| format!("${}", n + 2))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut params = Vec::with_capacity(chunk.len() + 1);
                params.push(t(id));
                params.extend(chunk.iter().map(|o| t(o.as_str())));
                c.execute(
                    &format!("DELETE FROM held WHERE appliance = $1 AND object IN ({list})"),
                    &params,
                )?;
            }
            insert_held(c, id, added)?;
        }
    }
    c.execute(
        "INSERT INTO held_meta (appliance, seq, count, digest, changed) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (appliance) DO UPDATE SET seq = excluded.seq, count = excluded.count, \
         digest = excluded.digest, changed = excluded.changed",
        &[t(id), i(h.seq), i(h.count), t(h.digest), i(seq)],
    )?;
    Ok(())
}

/// Held ids per statement (well below SQLite's and PostgreSQL's parameter limits).
const HELD_CHUNK: usize = 400;

/// Inserts held rows, many per statement (a full list of millions is thousands of statements,
/// not millions).
fn insert_held(c: &mut dyn Backend, id: &str, objects: &[String]) -> Result<(), StoreError> {
    for chunk in objects.chunks(HELD_CHUNK) {
        let mut sql = String::from("INSERT INTO held (appliance, object) VALUES ");
        let mut params = Vec::with_capacity(chunk.len() + 1);
        params.push(t(id));
        for (n, o) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("($1, ${})", n + 2));
            params.push(t(o.clone()));
        }
        sql.push_str(" ON CONFLICT (appliance, object) DO NOTHING");
        c.execute(&sql, &params)?;
    }
    Ok(())
}

/// Adds one to a counter inside the caller's transaction (locking its row until commit); the
/// new value.
fn bump(c: &mut dyn Backend, name: &str) -> Result<u64, StoreError> {
    let rows = c.query(
        "UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value",
        &[t(name)],
    )?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt(format!("no counter {name}")))?;
    Ok(u(row[0].int()?))
}

/// Applies the missing migrations; the database's epoch and schema version.
fn migrate(c: &mut dyn Backend) -> Result<(String, i64), StoreError> {
    use migrations::{LATEST, MIGRATIONS};
    c.begin()?;
    let r = (|| {
        c.lock_migrations()?;
        c.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )?;
        let rows = c.query("SELECT MAX(version) FROM schema_migrations", &[])?;
        let current = match rows.first().map(|r| &r[0]) {
            Some(Val::Int(v)) => *v,
            _ => 0,
        };
        if current > LATEST {
            return Err(StoreError::TooNew {
                found: current,
                supported: LATEST,
            });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            c.batch(m.sql)?;
            c.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[Val::Int(m.version), t(m.name), i(now)],
            )?;
            tracing::info!("store: applied migration {} ({})", m.version, m.name);
        }
        let mut fresh = [0u8; 16];
        rand::fill(&mut fresh);
        c.execute(
            "INSERT INTO store_meta (name, value) VALUES ('epoch', $1) ON CONFLICT (name) DO NOTHING",
            &[t(hex::encode(fresh))],
        )?;
        let rows = c.query("SELECT value FROM store_meta WHERE name = 'epoch'", &[])?;
        let epoch = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("no epoch".into()))?[0]
            .text()?
            .to_string();
        Ok((epoch, LATEST))
    })();
    match r {
        Ok(v) => {
            c.batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = c.batch("ROLLBACK");
            Err(e)
        }
    }
}
