//! The shared backend: PostgreSQL through the synchronous `postgres` client (tokio-postgres
//! underneath, with a runtime of its own per connection; the store is only ever called on
//! blocking threads). Transactions run at READ COMMITTED; the store's row-level patterns
//! (counter rows bumped first, compare-and-set updates) keep concurrent instances consistent.

use std::collections::HashMap;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use postgres::{Client, Config, NoTls, Statement};

use super::{Backend, StoreError, Val};

/// How long connecting may take (unless the URL sets `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server cancels any statement running longer (`statement_timeout`, also lock waits).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalives (idle, interval; 3 probes) and `TCP_USER_TIMEOUT`: a server that vanished
/// without closing the connection (host down, network cut) breaks it within about half a
/// minute instead of never.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL connection, made again when it breaks.
pub struct Postgres {
    config: Config,
    client: Client,
    /// Prepared statements by SQL text (the store uses a handful): one round trip per
    /// statement instead of two.
    prepared: HashMap<String, Statement>,
}

fn err(e: postgres::Error) -> StoreError {
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    // A closed connection, or the server going away (class 08: connection exception, 57:
    // operator intervention such as a shutdown or a statement timeout).
    let gone = e.is_closed()
        || e.as_db_error()
            .is_some_and(|d| matches!(&d.code().code()[..2], "08" | "57"));
    if gone {
        StoreError::Unavailable {
            backend: "postgres",
            message,
        }
    } else {
        StoreError::Db {
            backend: "postgres",
            message,
        }
    }
}

/// The migration lock's key (`pg_advisory_xact_lock`): any constant unique to edgeplane.
const MIGRATION_LOCK: i64 = 0x6564_6765_706c_616e; // "edgeplan"

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or any libpq-style
    /// connection string the `postgres` crate accepts; TLS is not supported).
    /// Connecting takes at most [`CONNECT_TIMEOUT`], statements at most [`STATEMENT_TIMEOUT`],
    /// and TCP keepalives find a vanished server (the URL may set other values).
    pub fn connect(url: &str) -> Result<Postgres, StoreError> {
        let mut config: Config = url.parse().map_err(|e| StoreError::Db {
            backend: "postgres",
            message: format!("store.url: {e}"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(3)
            .tcp_user_timeout(USER_TIMEOUT);
        let timeout = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
        let options = match config.get_options() {
            Some(o) if o.contains("statement_timeout") => o.to_owned(),
            Some(o) => format!("{o} {timeout}"),
            None => timeout,
        };
        config.options(&options);
        let client = Self::open(&config)?;
        Ok(Postgres {
            config,
            client,
            prepared: HashMap::new(),
        })
    }

    fn open(config: &Config) -> Result<Client, StoreError> {
        config.connect(NoTls).map_err(|e| StoreError::Unavailable {
            backend: "postgres",
            message: format!("connecting: {e}"),
        })
    }

    /// A failed call's error: `Unavailable` when the connection is gone.
    fn fail(&self, e: postgres::Error) -> StoreError {
        match err(e) {
            StoreError::Db { message, .. } if self.client.is_closed() => StoreError::Unavailable {
                backend: "postgres",
                message,
            },
            e => e,
        }
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql);
        let s = s.map_err(|e| self.fail(e))?;
        self.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn bind(p: &[Val]) -> Vec<Box<dyn ToSql + Sync>> {
    p.iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Val::Null => Box::new(Option::<String>::None),
                Val::Int(i) => Box::new(*i),
                Val::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let r = self.client.batch_execute(sql);
        r.map_err(|e| self.fail(e))
    }

    fn execute(&mut self, sql: &str, p: &[Val]) -> Result<u64, StoreError> {
        let b = bind(p);
        let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|x| x.as_ref()).collect();
        let st = self.statement(sql)?;
        let r = self.client.execute(&st, &refs);
        r.map_err(|e| self.fail(e))
    }

    fn query(&mut self, sql: &str, p: &[Val]) -> Result<Vec<Vec<Val>>, StoreError> {
        let b = bind(p);
        let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|x| x.as_ref()).collect();
        let st = self.statement(sql)?;
        let rows = self.client.query(&st, &refs);
        let rows = rows.map_err(|e| self.fail(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut r = Vec::with_capacity(row.len());
            for (c, col) in row.columns().iter().enumerate() {
                let ty = col.type_();
                let v = if *ty == Type::INT8 {
                    row.try_get::<_, Option<i64>>(c).map_err(err)?.map(Val::Int)
                } else if *ty == Type::INT4 {
                    row.try_get::<_, Option<i32>>(c)
                        .map_err(err)?
                        .map(|i| Val::Int(i.into()))
                } else {
                    row.try_get::<_, Option<String>>(c)
                        .map_err(err)?
                        .map(Val::Text)
                };
                r.push(v.unwrap_or(Val::Null));
            }
            out.push(r);
        }
        Ok(out)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.batch("BEGIN")
    }

    fn begin_relaxed(&mut self) -> Result<(), StoreError> {
        // The commit returns before the WAL is flushed; the database stays consistent.
        self.batch("BEGIN; SET LOCAL synchronous_commit = off")
    }

    fn recover(&mut self) -> bool {
        if !self.client.is_closed() {
            return false;
        }
        match Self::open(&self.config) {
            Ok(client) => {
                self.client = client;
                self.prepared.clear();
                tracing::info!("store: connected to postgres again");
                true
            }
            Err(e) => {
                tracing::warn!("store: {e}");
                false
            }
        }
    }

    fn lock_migrations(&mut self) -> Result<(), StoreError> {
        self.client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map(|_| ())
            .map_err(err)
    }
}
