//! The shared backend: PostgreSQL through the synchronous `postgres` client (tokio-postgres
//! underneath, with a runtime of its own per connection; the store is only ever called on
//! blocking threads). Transactions run at READ COMMITTED; the store's row-level patterns
//! (counter rows bumped first, compare-and-set updates) keep concurrent instances consistent.

use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::{Backend, StoreError, Val};

/// A PostgreSQL connection.
pub struct Postgres {
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
    StoreError::Db {
        backend: "postgres",
        message,
    }
}

/// The migration lock's key (`pg_advisory_xact_lock`): any constant unique to edgeplane.
const MIGRATION_LOCK: i64 = 0x6564_6765_706c_616e; // "edgeplan"

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or any libpq-style
    /// connection string the `postgres` crate accepts; TLS is not supported).
    pub fn connect(url: &str) -> Result<Postgres, StoreError> {
        let client = Client::connect(url, NoTls).map_err(|e| StoreError::Db {
            backend: "postgres",
            message: format!("connecting: {e}"),
        })?;
        Ok(Postgres {
            client,
            prepared: HashMap::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(err)?;
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
        self.client.batch_execute(sql).map_err(err)
    }

    fn execute(&mut self, sql: &str, p: &[Val]) -> Result<u64, StoreError> {
        let b = bind(p);
        let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|x| x.as_ref()).collect();
        let st = self.statement(sql)?;
        self.client.execute(&st, &refs).map_err(err)
    }

    fn query(&mut self, sql: &str, p: &[Val]) -> Result<Vec<Vec<Val>>, StoreError> {
        let b = bind(p);
        let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|x| x.as_ref()).collect();
        let st = self.statement(sql)?;
        let rows = self.client.query(&st, &refs).map_err(err)?;
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

    fn lock_migrations(&mut self) -> Result<(), StoreError> {
        self.client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map(|_| ())
            .map_err(err)
    }
}
