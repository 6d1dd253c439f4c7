//! Versioned schema migrations: sqlx's migrator over the SQL files in `migrations/<dialect>/`,
//! compiled into the binary. Only `airlock migrate` applies them; every other command checks the
//! database's version first and refuses to run against an older (or newer) schema.
//!
//! A migration file is never edited once released: sqlx records each one's checksum and refuses a
//! database whose applied migrations differ from the binary's. Changes go in a new file.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// One migration, in both dialects.
struct Step {
    version: i64,
    description: &'static str,
    postgres: &'static str,
    sqlite: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        version: 1,
        description: "schema",
        postgres: include_str!("../../migrations/postgres/0001_schema.sql"),
        sqlite: include_str!("../../migrations/sqlite/0001_schema.sql"),
    },
    Step {
        version: 2,
        description: "key indexes, outage budget, attempt keys",
        postgres: include_str!("../../migrations/postgres/0002_key_indexes_outage_budget.sql"),
        sqlite: include_str!("../../migrations/sqlite/0002_key_indexes_outage_budget.sql"),
    },
    Step {
        version: 3,
        description: "tenants api keys",
        postgres: include_str!("../../migrations/postgres/0003_tenants_api_keys.sql"),
        sqlite: include_str!("../../migrations/sqlite/0003_tenants_api_keys.sql"),
    },
    Step {
        version: 4,
        description: "audit request id",
        postgres: include_str!("../../migrations/postgres/0004_audit_request_id.sql"),
        sqlite: include_str!("../../migrations/sqlite/0004_audit_request_id.sql"),
    },
    Step {
        version: 5,
        description: "uploads",
        postgres: include_str!("../../migrations/postgres/0005_uploads.sql"),
        sqlite: include_str!("../../migrations/sqlite/0005_uploads.sql"),
    },
    Step {
        version: 6,
        description: "key change notify",
        postgres: include_str!("../../migrations/postgres/0006_key_change_notify.sql"),
        sqlite: include_str!("../../migrations/sqlite/0006_key_change_notify.sql"),
    },
    Step {
        version: 7,
        description: "webhooks",
        postgres: include_str!("../../migrations/postgres/0007_webhooks.sql"),
        sqlite: include_str!("../../migrations/sqlite/0007_webhooks.sql"),
    },
    Step {
        version: 8,
        description: "audit chain",
        postgres: include_str!("../../migrations/postgres/0008_audit_chain.sql"),
        sqlite: include_str!("../../migrations/sqlite/0008_audit_chain.sql"),
    },
    Step {
        version: 9,
        description: "row level security",
        postgres: include_str!("../../migrations/postgres/0009_row_level_security.sql"),
        sqlite: include_str!("../../migrations/sqlite/0009_row_level_security.sql"),
    },
    Step {
        version: 10,
        description: "tenant role queue front",
        postgres: include_str!("../../migrations/postgres/0010_tenant_role_queue_front.sql"),
        sqlite: include_str!("../../migrations/sqlite/0010_tenant_role_queue_front.sql"),
    },
    Step {
        version: 11,
        description: "schemas",
        postgres: include_str!("../../migrations/postgres/0011_schemas.sql"),
        sqlite: include_str!("../../migrations/sqlite/0011_schemas.sql"),
    },
];

/// The version this binary needs.
pub fn latest() -> i64 {
    STEPS.last().map_or(0, |s| s.version)
}

/// The migrations of `dialect` ("postgres" or "sqlite") up to and including `upto`.
#[derive(Debug)]
struct Source {
    dialect: &'static str,
    upto: i64,
}

type Resolved<'s> = Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>>;

impl<'s> MigrationSource<'s> for Source {
    fn resolve(self) -> Resolved<'s> {
        let migrations = STEPS
            .iter()
            .filter(|s| s.version <= self.upto)
            .map(|s| {
                let sql = if self.dialect == "postgres" {
                    s.postgres
                } else {
                    s.sqlite
                };
                Migration::new(
                    s.version,
                    Cow::Borrowed(s.description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// A migrator for `dialect` up to `upto` (tests build older schemas with it).
pub async fn migrator(
    dialect: &'static str,
    upto: i64,
) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source { dialect, upto }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.version, i as i64 + 1);
            assert!(!s.postgres.is_empty() && !s.sqlite.is_empty());
        }
        assert_eq!(latest(), STEPS.len() as i64);
    }
}
