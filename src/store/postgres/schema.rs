//! Schema management: the embedded migrations, the version check, privileges, partitions and
//! retention.
//!
//! Migrations are embedded with `include_str!` and handed to sqlx's [`Migrator`] (no `macros`
//! feature: it would compile sqlx a second time). A database whose schema is newer than this
//! binary is refused, never "migrated" backwards.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, SqlSafeStr};
use tracing::info;

use super::{classify, PgError};
use crate::store::digest::postgres::PgDigests;

/// (version, description, SQL). Append only; never edit an applied migration (its checksum is
/// recorded in `_sqlx_migrations`).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "audit_records",
        include_str!("../../../migrations/0001_audit_records.sql"),
    ),
    (
        2,
        "audit_digests",
        include_str!("../../../migrations/0002_audit_digests.sql"),
    ),
    (
        3,
        "start_time_reported",
        include_str!("../../../migrations/0003_start_time_reported.sql"),
    ),
    (
        4,
        "audit_rejects",
        include_str!("../../../migrations/0004_audit_rejects.sql"),
    ),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = 4;

/// The oldest server that has everything the schema uses (UNIQUE NULLS NOT DISTINCT).
const MIN_SERVER_VERSION: i64 = 150000;

/// Days of partitions kept ready ahead of today (UTC).
pub const PARTITIONS_AHEAD_DAYS: i32 = 7;

pub fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(v, d, sql)| {
            Migration::new(
                *v,
                (*d).into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// The latest applied migration, or None when the database has no meshaudit schema.
pub async fn applied_version(conn: &mut PgConnection) -> Result<Option<i64>, PgError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(e, "reading the schema version"))?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(e, "reading the schema version"))
}

async fn check_server_version(conn: &mut PgConnection) -> Result<(), PgError> {
    let v: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(e, "reading the server version"))?;
    let v: i64 = v.trim().parse().unwrap_or(0);
    if v < MIN_SERVER_VERSION {
        return Err(PgError::ServerTooOld { version: v });
    }
    Ok(())
}

/// Applies missing migrations. Refuses a schema newer than this binary.
/// Returns (version before, version after).
pub async fn migrate(conn: &mut PgConnection) -> Result<(Option<i64>, i64), PgError> {
    check_server_version(conn).await?;
    let before = applied_version(conn).await?;
    if let Some(v) = before {
        if v > SCHEMA_VERSION {
            return Err(PgError::SchemaTooNew {
                database: v,
                binary: SCHEMA_VERSION,
            });
        }
    }
    migrator()
        .run_direct(None, conn, false)
        .await
        .map_err(PgError::Migrate)?;
    if before != Some(SCHEMA_VERSION) {
        info!(from = ?before, to = SCHEMA_VERSION, "database schema migrated");
    }
    Ok((before, SCHEMA_VERSION))
}

/// Start-up check for a writer: the schema is exactly this binary's, the role may write.
/// Privileges are checked before they are needed, so each missing grant is named with its fix.
pub async fn check_writable(conn: &mut PgConnection) -> Result<(), PgError> {
    check_server_version(conn).await?;
    let row = sqlx::query(
        "SELECT current_user::text, \
                to_regclass('_sqlx_migrations') IS NOT NULL, \
                to_regclass('audit_records') IS NOT NULL, \
                to_regclass('audit_digests') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| classify(e, "checking the schema"))?;
    let role: String = row.get(0);
    if !(row.get::<bool, _>(1) && row.get::<bool, _>(2)) {
        return Err(PgError::SchemaMissing {
            database: None,
            binary: SCHEMA_VERSION,
        });
    }
    if !row.get::<bool, _>(3) {
        // An older schema: the version check below names the fix.
        return Err(PgError::SchemaMissing {
            database: applied_version(conn).await?,
            binary: SCHEMA_VERSION,
        });
    }
    let row = sqlx::query(
        "SELECT has_table_privilege('_sqlx_migrations', 'SELECT'), \
                has_table_privilege('audit_records', 'INSERT'), \
                has_database_privilege(current_database(), 'TEMPORARY'), \
                has_function_privilege('meshaudit_ensure_partition(date)', 'EXECUTE'), \
                has_table_privilege('audit_digests', 'INSERT'), \
                has_table_privilege('audit_digests', 'SELECT'), \
                to_regclass('audit_rejects') IS NULL OR has_table_privilege('audit_rejects', 'INSERT')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| classify(e, "checking privileges"))?;
    let checks = [
        (
            row.get::<bool, _>(0),
            "SELECT on table _sqlx_migrations (to check the schema version)",
            "GRANT SELECT ON _sqlx_migrations TO",
        ),
        (
            row.get::<bool, _>(1),
            "INSERT on table audit_records",
            "GRANT INSERT ON audit_records TO",
        ),
        (
            row.get::<bool, _>(2),
            "TEMPORARY on the database (for the COPY staging table)",
            "GRANT TEMPORARY ON DATABASE <db> TO",
        ),
        (
            row.get::<bool, _>(3),
            "EXECUTE on function meshaudit_ensure_partition(date)",
            "GRANT EXECUTE ON FUNCTION meshaudit_ensure_partition(date) TO",
        ),
        (
            row.get::<bool, _>(4) && row.get::<bool, _>(5),
            "INSERT and SELECT on table audit_digests (each batch's signed digest, chained to this collector's previous one)",
            "GRANT INSERT, SELECT ON audit_digests TO",
        ),
        (
            row.get::<bool, _>(6),
            "INSERT on table audit_rejects (records the database refused for a data reason)",
            "GRANT INSERT ON audit_rejects TO",
        ),
    ];
    for (ok, what, grant) in checks {
        if !ok {
            return Err(PgError::Permission {
                fix: format!("{grant} {role}"),
                role: role.clone(),
                what: what.to_owned(),
            });
        }
    }
    match applied_version(conn).await? {
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        Some(v) if v > SCHEMA_VERSION => Err(PgError::SchemaTooNew {
            database: v,
            binary: SCHEMA_VERSION,
        }),
        have => Err(PgError::SchemaMissing {
            database: have,
            binary: SCHEMA_VERSION,
        }),
    }
}

/// Creates the partitions from yesterday to PARTITIONS_AHEAD_DAYS ahead (UTC).
pub async fn ensure_partitions_ahead(conn: &mut PgConnection) -> Result<(), PgError> {
    let sql = format!(
        "SELECT meshaudit_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, \
         (now() AT TIME ZONE 'UTC')::date + {PARTITIONS_AHEAD_DAYS})"
    );
    sqlx::query(AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(e, "creating partitions ahead"))?;
    Ok(())
}

/// Creates the partition of a day given as days since 1970-01-01.
pub async fn ensure_partition(conn: &mut PgConnection, unix_day: i64) -> Result<(), PgError> {
    sqlx::query("SELECT meshaudit_ensure_partition(date '1970-01-01' + $1::int)")
        .bind(unix_day as i32)
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(e, "creating a day partition"))?;
    Ok(())
}

/// Drops the day partitions older than `days` full days (UTC). Returns the names dropped.
/// With `digests`, a signed retention digest records the cutoff in the same transaction, so
/// `meshaudit verify` tells rows retention dropped from rows someone deleted.
pub async fn apply_retention(
    conn: &mut PgConnection,
    days: u32,
    digests: Option<&mut PgDigests>,
) -> Result<Vec<String>, PgError> {
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| classify(e, "applying retention"))?;
    let cutoff_day: i32 = sqlx::query_scalar(
        "SELECT ((now() AT TIME ZONE 'UTC')::date - $1::int) - date '1970-01-01'",
    )
    .bind(days as i32)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| classify(e, "applying retention"))?;
    let dropped: Vec<String> =
        sqlx::query_scalar("SELECT meshaudit_drop_partitions_before(date '1970-01-01' + $1::int)")
            .bind(cutoff_day)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| classify(e, "applying retention"))?;
    if let (false, Some(d)) = (dropped.is_empty(), digests) {
        d.append_retention(&mut tx, i64::from(cutoff_day)).await?;
    }
    tx.commit()
        .await
        .map_err(|e| classify(e, "applying retention"))?;
    for name in &dropped {
        info!(partition = %name, retention_days = days, "dropped audit_records partition past retention");
    }
    Ok(dropped)
}
