//! The store's schema, versioned. Each migration is applied once, in order, in one transaction
//! with its row in `schema_migrations`; a database whose newest applied version is greater than
//! [`LATEST`] was written by a newer binary, and this one refuses to start on it.
//!
//! The SQL is the common subset of SQLite and PostgreSQL (`BIGINT`, `TEXT`, primary keys,
//! `ON CONFLICT`), so one list serves both backends. Never edit a released migration: add one.

/// One schema step.
pub struct Migration {
    /// Its version (1, 2, …, without gaps).
    pub version: i64,
    /// What it does, for the log.
    pub name: &'static str,
    /// The statements, `;`-separated.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "catalog, fleet, manifests, signing keys",
        sql: r#"
CREATE TABLE store_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('catalog', 0), ('fleet', 0), ('keys', 0);
CREATE TABLE catalog (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE appliances (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    registration TEXT NOT NULL DEFAULT '',
    health TEXT NOT NULL DEFAULT '',
    health_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX appliances_seq ON appliances (seq);
CREATE TABLE manifests (
    appliance TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    plan_hash TEXT NOT NULL
);
CREATE TABLE signing_keys (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    not_after BIGINT NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name: "held sets",
        sql: r#"
CREATE TABLE held (
    appliance TEXT NOT NULL,
    object TEXT NOT NULL,
    PRIMARY KEY (appliance, object)
);
CREATE TABLE held_meta (
    appliance TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    count BIGINT NOT NULL,
    digest TEXT NOT NULL,
    changed BIGINT NOT NULL
);
"#,
    },
];

/// The newest schema version this binary knows.
pub const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
        }
        assert_eq!(LATEST, MIGRATIONS.len() as i64);
    }
}
