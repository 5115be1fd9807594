//! The embedded backend: one SQLite file (rusqlite with the bundled library, so nothing is
//! needed on the host), in WAL mode with `synchronous = FULL`: a committed change survives a
//! crash or power loss, and a `kill -9` mid-write leaves the last committed state.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

use super::{Backend, StoreError, Val};

/// A SQLite connection.
pub struct Sqlite {
    conn: Connection,
    /// The open transaction was begun relaxed (restore `synchronous = FULL` after it).
    relaxed: bool,
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Db {
        backend: "sqlite",
        message: e.to_string(),
    }
}

/// `$1` → `?1`: the backends share SQL written with PostgreSQL's placeholders.
fn placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

fn params(p: &[Val]) -> Vec<Value> {
    p.iter()
        .map(|v| match v {
            Val::Null => Value::Null,
            Val::Int(i) => Value::Integer(*i),
            Val::Text(s) => Value::Text(s.clone()),
        })
        .collect()
}

impl Sqlite {
    /// Back to `synchronous = FULL` after a relaxed transaction.
    fn restore(&mut self) -> Result<(), StoreError> {
        if std::mem::take(&mut self.relaxed) {
            self.batch("PRAGMA synchronous = FULL")?;
        }
        Ok(())
    }

    /// Opens (creating) the database file at `path`.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::Db {
            backend: "sqlite",
            message: format!("{}: {e}", path.display()),
        })?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        Ok(Sqlite {
            conn,
            relaxed: false,
        })
    }

    /// A private in-memory database.
    pub fn memory() -> Result<Sqlite, StoreError> {
        Ok(Sqlite {
            conn: Connection::open_in_memory().map_err(err)?,
            relaxed: false,
        })
    }
}

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(err)
    }

    fn execute(&mut self, sql: &str, p: &[Val]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(&placeholders(sql)).map_err(err)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params(p)))
            .map_err(err)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, p: &[Val]) -> Result<Vec<Vec<Val>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&placeholders(sql)).map_err(err)?;
        let cols = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params(p)))
            .map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut r = Vec::with_capacity(cols);
            for c in 0..cols {
                r.push(match row.get_ref(c).map_err(err)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(i) => Val::Int(i),
                    ValueRef::Real(f) => Val::Int(f as i64),
                    ValueRef::Text(b) | ValueRef::Blob(b) => {
                        Val::Text(String::from_utf8_lossy(b).into_owned())
                    }
                });
            }
            out.push(r);
        }
        Ok(out)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.batch("BEGIN IMMEDIATE")
    }

    fn begin_relaxed(&mut self) -> Result<(), StoreError> {
        // WAL with synchronous = NORMAL: the commit is in the log, fsynced at the next
        // checkpoint (or the next FULL commit). The setting cannot change inside a transaction.
        self.relaxed = true;
        self.batch("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE")
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let r = self.batch("COMMIT");
        self.restore()?;
        r
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        let r = self.batch("ROLLBACK");
        self.restore()?;
        r
    }

    fn lock_migrations(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
