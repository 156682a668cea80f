//! The Postgres sink: batches of spooled records into `audit_records`, exactly once.
//!
//! Each batch is one transaction. First a binary COPY straight into `audit_records` under a
//! savepoint: COPY is the fastest way in, and a batch is new unless it is replayed. If the
//! server refuses it (a row is already stored), back to the savepoint and the idempotent path:
//! COPY into a per-connection temporary staging table, then `INSERT ... SELECT ... ON CONFLICT
//! (record_id, start_time) DO NOTHING`, so a batch replayed after a crash or an outage, or an
//! entry a client sent twice, never duplicates a row. A failed batch is rolled
//! back whole and retried by the pipeline; nothing is acknowledged to the spool before COMMIT.
//!
//! The partition of every day in a batch is created before the COPY (and days ahead on a
//! timer), so rows never land in the default partition except those without a start_time.

pub mod bench;
pub mod copy;
pub mod reject;
pub mod schema;
pub mod url;

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};
use thiserror::Error;
use tracing::{debug, info, warn};

use self::url::DatabaseUrl;
use crate::record::{AuditRecord, COLUMNS};
use crate::store::digest::postgres::{PgDigests, Prepared};
use crate::store::digest::Signer;
use crate::store::metrics::StoreMetrics;
use crate::store::spool::Frame;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often partitions ahead are created and retention applied.
const MAINTAIN_EVERY: Duration = Duration::from_secs(3600);
const STAGING: &str = "meshaudit_staging";

#[derive(Debug, Error)]
pub enum PgError {
    #[error("invalid database URL {url}: {reason}. Fix: use postgres://USER:PASSWORD@HOST:PORT/DATABASE in --database-url (or DATABASE_URL)")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach Postgres at {target}: {reason}. Fix: check the host and port in --database-url and that the server is up and reachable")]
    Unreachable { target: String, reason: String },
    #[error("Postgres refused the login of user `{user}` at {target}: {reason}. Fix: check the user name and password in --database-url (or DATABASE_URL) and pg_hba.conf")]
    Auth {
        user: String,
        target: String,
        reason: String,
    },
    #[error("Postgres at {target} has no database `{database}`. Fix: create it (createdb {database}) or correct the database name in --database-url")]
    NoDatabase { target: String, database: String },
    #[error("Postgres role `{role}` lacks {what}. Fix: {fix}")]
    Permission {
        role: String,
        what: String,
        fix: String,
    },
    #[error("Postgres denied {context}: {reason}. Fix: grant the collector's role INSERT on audit_records, TEMPORARY on the database and EXECUTE on the meshaudit_* functions (`meshaudit migrate` needs an owner role)")]
    Denied {
        context: &'static str,
        reason: String,
    },
    #[error("the database has schema version {database} but this meshaudit binary knows only up to {binary}. Fix: run a meshaudit release that supports schema {database}; never point an older collector at a newer schema")]
    SchemaTooNew { database: i64, binary: i64 },
    #[error("the database schema is {} but this binary writes version {binary}. Fix: run `meshaudit migrate --database-url URL` (with an owner role), or start with --migrate-on-start", .database.map_or("missing".to_owned(), |v| format!("at version {v}")))]
    SchemaMissing { database: Option<i64>, binary: i64 },
    #[error("Postgres server version {version} is too old. Fix: use PostgreSQL 15 or newer (the schema uses UNIQUE NULLS NOT DISTINCT)")]
    ServerTooOld { version: i64 },
    #[error("migrating the database failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The database refused the data (SQLSTATE class 22, 23 or 54000), not the connection:
    /// retrying the same rows cannot succeed (see [`reject`]).
    #[error("Postgres refused the data while {context} (SQLSTATE {sqlstate}): {reason}")]
    Data {
        context: &'static str,
        sqlstate: String,
        reason: String,
    },
    #[error("Postgres error while {context}: {reason}")]
    Query {
        context: &'static str,
        reason: String,
    },
    #[error("cannot open a TLS connection to Postgres at {target}: {reason}. Fix: check sslmode in --database-url; for a private CA add sslrootcert=/path/ca.pem; sslmode=verify-full also checks the host name")]
    Tls { target: String, reason: String },
    #[error("timed out after {0:?} connecting to Postgres at {1}. Fix: check the host and port in --database-url and network policies")]
    Timeout(Duration, String),
}

/// Turns a driver error into one that says what to fix. The URL is never part of the text.
pub(crate) fn classify(e: sqlx::Error, context: &'static str) -> PgError {
    let reason = url::redact(&e.to_string());
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("42501") {
            return PgError::Denied { context, reason };
        }
        if let Some(sqlstate) = db.code().filter(|c| reject::is_data_sqlstate(c)) {
            return PgError::Data {
                context,
                sqlstate: sqlstate.into_owned(),
                reason: url::redact(db.message()),
            };
        }
    }
    PgError::Query { context, reason }
}

/// Like [`classify`], for the connection step, where more can be said.
fn classify_connect(e: sqlx::Error, opts: &PgConnectOptions) -> PgError {
    let target = target(opts);
    let reason = url::redact(&e.to_string());
    match &e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) if code.starts_with("28") => PgError::Auth {
                user: opts.get_username().to_owned(),
                target,
                reason,
            },
            Some("3D000") => PgError::NoDatabase {
                target,
                database: opts.get_database().unwrap_or_default().to_owned(),
            },
            Some("42501") => PgError::Denied {
                context: "the connection",
                reason,
            },
            _ => PgError::Query {
                context: "connecting",
                reason,
            },
        },
        sqlx::Error::Tls(_) => PgError::Tls { target, reason },
        // rustls reports a rejected server certificate as an I/O error of the handshake.
        sqlx::Error::Io(e) if e.to_string().contains("certificate") => {
            PgError::Tls { target, reason }
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => PgError::Unreachable { target, reason },
        _ => PgError::Query {
            context: "connecting",
            reason,
        },
    }
}

fn target(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or(opts.get_username())
    )
}

impl PgError {
    /// True for errors that retrying cannot fix without an operator.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            PgError::Auth { .. }
                | PgError::NoDatabase { .. }
                | PgError::Permission { .. }
                | PgError::Denied { .. }
                | PgError::SchemaTooNew { .. }
                | PgError::SchemaMissing { .. }
                | PgError::BadUrl { .. }
                | PgError::Tls { .. }
        )
    }
}

/// Parses the URL into driver options (no password in any error).
pub fn connect_options(url: &DatabaseUrl) -> Result<PgConnectOptions, PgError> {
    url.connect_options()
        .map(|o| o.application_name("meshaudit"))
        .map_err(|reason| PgError::BadUrl {
            url: url.to_string(),
            reason,
        })
}

/// One connection, with a clear error on every way it can fail.
pub async fn connect(opts: &PgConnectOptions) -> Result<PgConnection, PgError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(opts)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(classify_connect(e, opts)),
        Err(_) => Err(PgError::Timeout(CONNECT_TIMEOUT, target(opts))),
    }
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: DatabaseUrl,
    pub migrate_on_start: bool,
    /// Drop day partitions older than this many days; None keeps everything.
    pub retention_days: Option<u32>,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub inserted: u64,
    /// Rows already present (replays, re-sent entries).
    pub duplicates: u64,
}

pub struct PostgresSink {
    opts: PgConnectOptions,
    target: String,
    retention_days: Option<u32>,
    conn: Option<PgConnection>,
    /// Days (since 1970-01-01) whose partition is known to exist.
    known_days: HashSet<i64>,
    next_maintenance: Instant,
    buf: Vec<u8>,
    /// The write path's statements (taken out while a batch is written).
    sql: Sql,
    /// The batch digests (docs/tamper-evidence.md); None only in tests and benchmarks.
    digests: Option<PgDigests>,
    metrics: Arc<StoreMetrics>,
}

impl PostgresSink {
    /// Connects, migrates when configured to, and checks the schema version and privileges, so
    /// a bad URL, a wrong password, a missing grant or a newer schema fail at start-up.
    pub async fn start(cfg: &PostgresConfig, metrics: Arc<StoreMetrics>) -> Result<Self, PgError> {
        Self::start_with(cfg, metrics, None).await
    }

    /// [`PostgresSink::start`] with digests: every batch (and every retention run, the first
    /// one at start-up included) inserts its signed digest into `audit_digests` in its own
    /// transaction, chained to this collector instance's previous one.
    pub async fn start_signed(
        cfg: &PostgresConfig,
        metrics: Arc<StoreMetrics>,
        signer: Signer,
    ) -> Result<Self, PgError> {
        Self::start_with(cfg, metrics, Some(PgDigests::new(signer))).await
    }

    async fn start_with(
        cfg: &PostgresConfig,
        metrics: Arc<StoreMetrics>,
        digests: Option<PgDigests>,
    ) -> Result<Self, PgError> {
        let opts = connect_options(&cfg.url)?;
        let cols = copy::column_list();
        let insert_sql = format!(
            "INSERT INTO audit_records ({cols}) SELECT {cols} FROM {STAGING} \
             ON CONFLICT (record_id, start_time) DO NOTHING"
        );
        let mut sink = PostgresSink {
            target: target(&opts),
            opts,
            retention_days: cfg.retention_days,
            conn: None,
            known_days: HashSet::new(),
            next_maintenance: Instant::now(),
            buf: Vec::new(),
            sql: Sql {
                direct_copy: format!("COPY audit_records ({cols}) FROM STDIN WITH (FORMAT binary)"),
                staging_copy: format!("COPY {STAGING} ({cols}) FROM STDIN WITH (FORMAT binary)"),
                insert_returning: format!("{insert_sql} RETURNING record_id"),
                insert: insert_sql,
            },
            digests,
            metrics,
        };
        let mut conn = connect(&sink.opts).await?;
        if cfg.migrate_on_start {
            schema::migrate(&mut conn).await?;
        }
        sink.conn = Some(conn);
        sink.ready_connection().await?;
        sink.maintain_if_due().await?;
        info!(target = %sink.target, schema = schema::SCHEMA_VERSION, "postgres sink ready");
        Ok(sink)
    }

    /// Checks a fresh connection and creates its staging table.
    async fn ready_connection(&mut self) -> Result<&mut PgConnection, PgError> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c = connect(&self.opts).await?;
                self.conn.insert(c)
            }
        };
        let result = async {
            schema::check_writable(conn).await?;
            // Declared from COLUMNS rather than `LIKE audit_records`, which would need SELECT on
            // the table; constraints are checked by the INSERT into audit_records.
            let cols: Vec<String> = COLUMNS
                .iter()
                .map(|c| format!("{} {}", c.name, c.column_type().sql()))
                .collect();
            let sql = format!(
                "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ({}) ON COMMIT DELETE ROWS",
                cols.join(", ")
            );
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .map_err(|e| classify(e, "creating the staging table"))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.conn = None;
            return Err(e);
        }
        // Just assigned above.
        self.conn.as_mut().ok_or(PgError::Query {
            context: "connecting",
            reason: "connection lost".into(),
        })
    }

    async fn conn(&mut self) -> Result<&mut PgConnection, PgError> {
        if self.conn.is_none() {
            self.ready_connection().await?;
            self.known_days.clear();
            info!(target = %self.target, "postgres sink reconnected");
        }
        self.conn.as_mut().ok_or(PgError::Query {
            context: "connecting",
            reason: "connection lost".into(),
        })
    }

    /// Partitions ahead and retention, hourly. Errors are returned (and retried by the caller).
    pub async fn maintain_if_due(&mut self) -> Result<(), PgError> {
        if Instant::now() < self.next_maintenance {
            return Ok(());
        }
        let retention = self.retention_days;
        let mut digests = self.digests.take();
        let result = async {
            let conn = self.conn().await?;
            schema::ensure_partitions_ahead(conn).await?;
            if let Some(days) = retention {
                schema::apply_retention(conn, days, digests.as_mut()).await?;
            }
            Ok(())
        }
        .await;
        self.digests = digests;
        if let Err(e) = &result {
            self.drop_connection_on(e);
            return result;
        }
        // Dropped partitions must be created again if an old record still arrives.
        self.known_days.clear();
        self.next_maintenance = Instant::now() + MAINTAIN_EVERY;
        Ok(())
    }

    /// Writes records in one transaction; all or nothing.
    pub async fn write<'a, I>(&mut self, records: I) -> Result<Written, PgError>
    where
        I: IntoIterator<Item = &'a AuditRecord> + Clone,
    {
        let hash_here = records.clone();
        let result = self
            .write_inner(records, move |d: &mut PgDigests| {
                d.prepare(hash_here.into_iter())
            })
            .await;
        if let Err(e) = &result {
            self.after_failure(e);
        }
        result
    }

    /// Writes spool frames' records in one transaction, all or nothing, with the canonical
    /// hashes the frames share with the other sinks (each record is hashed once, not per sink).
    pub async fn write_frames(&mut self, frames: &[Arc<Frame>]) -> Result<Written, PgError> {
        let records = frames.iter().flat_map(|f| f.records.iter());
        let result = self
            .write_inner(records, |_: &mut PgDigests| {
                PgDigests::prepare_hashed(
                    frames
                        .iter()
                        .flat_map(|f| f.records.iter().zip(f.hashes().iter())),
                )
            })
            .await;
        if let Err(e) = &result {
            self.after_failure(e);
        }
        result
    }

    fn after_failure(&mut self, e: &PgError) {
        match e {
            // The transaction was rolled back and the connection is sound; only the digest
            // chain's head must be read again (reject.rs splits the batch on this connection).
            PgError::Data { .. } => {
                if let Some(d) = &mut self.digests {
                    d.invalidate();
                }
            }
            e => self.drop_connection_on(e),
        }
    }

    fn drop_connection_on(&mut self, e: &PgError) {
        // The connection may be mid-COPY or mid-transaction; a new one is the simple safe state.
        // The caller logs the failure; this only notes the reconnect.
        debug!(target = %self.target, error = %e, "dropping the postgres connection after a failure");
        self.conn = None;
        // A COMMIT may have landed or not: read the digest chain's head again.
        if let Some(d) = &mut self.digests {
            d.invalidate();
        }
    }

    async fn write_inner<'a, I, P>(&mut self, records: I, prepare: P) -> Result<Written, PgError>
    where
        I: IntoIterator<Item = &'a AuditRecord> + Clone,
        P: FnOnce(&mut PgDigests) -> Prepared<'a>,
    {
        self.ensure_days(records.clone()).await?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        copy::header(&mut buf);
        let mut n = 0u64;
        let mut digests = self.digests.take();
        // With digests, only the first copy of each record_id is offered, so that the row
        // stored is the one hashed (see store::digest::postgres).
        let prepared = match &mut digests {
            Some(d) => {
                let p = prepare(d);
                p.rows.iter().for_each(|(r, _)| copy::row(&mut buf, r));
                n = records.into_iter().count() as u64;
                Some(p)
            }
            None => {
                for r in records {
                    copy::row(&mut buf, r);
                    n += 1;
                }
                None
            }
        };
        copy::trailer(&mut buf);
        let sql = std::mem::take(&mut self.sql);
        let metrics = Arc::clone(&self.metrics);
        let conn = self.conn().await;
        let result = match (conn, &mut digests, &prepared) {
            (Ok(conn), Some(d), Some(p)) => {
                copy_and_insert(conn, &sql, &buf, Some((d, p)), &metrics).await
            }
            (Ok(conn), _, _) => copy_and_insert(conn, &sql, &buf, None, &metrics).await,
            (Err(e), _, _) => Err(e),
        };
        self.digests = digests;
        self.sql = sql;
        self.buf = buf;
        let inserted = result?;
        let w = Written {
            inserted,
            duplicates: n - inserted.min(n),
        };
        self.metrics
            .postgres_rows_inserted
            .fetch_add(w.inserted, Relaxed);
        self.metrics
            .postgres_rows_duplicate
            .fetch_add(w.duplicates, Relaxed);
        Ok(w)
    }

    async fn ensure_days<'a, I>(&mut self, records: I) -> Result<(), PgError>
    where
        I: IntoIterator<Item = &'a AuditRecord>,
    {
        let mut missing: Vec<i64> = Vec::new();
        for r in records {
            if let Some(us) = r.start_time {
                let day = us.div_euclid(86_400_000_000);
                if !self.known_days.contains(&day) && !missing.contains(&day) {
                    missing.push(day);
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let conn = self.conn().await?;
        for day in &missing {
            schema::ensure_partition(conn, *day).await?;
        }
        if self.known_days.len() > 10_000 {
            self.known_days.clear();
        }
        self.known_days.extend(missing);
        Ok(())
    }
}

/// One transaction: first the optimistic path, a binary COPY straight into audit_records under
/// a savepoint (a batch is new unless it is replayed after a crash or an outage, or repeats an
/// entry); if the server refuses it (a row already stored: unique violation, or any other
/// database error), back to the savepoint and the idempotent path: COPY into staging, INSERT
/// ... ON CONFLICT DO NOTHING (with `digest`: RETURNING the ids it inserted). Either way the
/// batch's digest (`digest`: the INSERT ... RETURNING statement, the chain, the batch) is
/// written in the same transaction. A data error of the staging path is what reject.rs splits.
async fn copy_and_insert(
    conn: &mut PgConnection,
    sql: &Sql,
    data: &[u8],
    digest: Option<(&mut PgDigests, &Prepared<'_>)>,
    metrics: &StoreMetrics,
) -> Result<u64, PgError> {
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| classify(e, "starting a transaction"))?;
    sqlx::query(AssertSqlSafe(SAVEPOINT))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify(e, "setting a savepoint"))?;
    match copy_direct(&mut tx, &sql.direct_copy, data).await {
        Ok(rows) => {
            if let Some((digests, prepared)) = digest {
                digests.append(&mut tx, prepared, None).await?;
            }
            tx.commit().await.map_err(|e| classify(e, "committing"))?;
            return Ok(rows);
        }
        // The server refused the rows (most often: some are already stored); the connection
        // is sound and the transaction goes on from the savepoint.
        Err(sqlx::Error::Database(db)) => {
            metrics.postgres_batches_staged.fetch_add(1, Relaxed);
            let sqlstate = db.code().unwrap_or_default();
            if sqlstate == UNIQUE_VIOLATION {
                debug!("direct COPY refused (rows already stored); inserting through staging");
            } else if !WARNED_OTHER_REFUSAL.swap(true, Relaxed) {
                // Not a replay: something refuses every direct COPY (a trigger, row-level
                // security, a lock timeout), and each batch then pays for both paths.
                warn!(sqlstate = %sqlstate, reason = %url::redact(db.message()), "postgres refused a direct COPY into audit_records for a reason other than rows already stored; batches go through the slower staging path (counted in meshaudit_postgres_batches_staged_total; logged once)");
            }
            sqlx::query(AssertSqlSafe(ROLLBACK_TO_SAVEPOINT))
                .execute(&mut *tx)
                .await
                .map_err(|e| classify(e, "rolling back to the savepoint"))?;
        }
        Err(e) => return Err(classify(e, "copying into audit_records")),
    }
    let mut copy = tx
        .copy_in_raw(&sql.staging_copy)
        .await
        .map_err(|e| classify(e, "starting COPY"))?;
    copy.send(data)
        .await
        .map_err(|e| classify(e, "sending COPY data"))?;
    copy.finish()
        .await
        .map_err(|e| classify(e, "finishing COPY"))?;
    let inserted = match digest {
        None => sqlx::query(AssertSqlSafe(sql.insert.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, "inserting from staging"))?
            .rows_affected(),
        Some((digests, prepared)) => {
            let ids: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql.insert_returning.as_str()))
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| classify(e, "inserting from staging"))?;
            let n = ids.len() as u64;
            digests.append(&mut tx, prepared, Some(ids)).await?;
            n
        }
    };
    tx.commit().await.map_err(|e| classify(e, "committing"))?;
    Ok(inserted)
}

const SAVEPOINT: &str = "SAVEPOINT meshaudit_direct";
const UNIQUE_VIOLATION: &str = "23505";
static WARNED_OTHER_REFUSAL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT meshaudit_direct";

/// The direct COPY; its server-side refusal is returned as is for [`copy_and_insert`] to tell
/// from a connection failure.
async fn copy_direct(
    conn: &mut PgConnection,
    copy_sql: &str,
    data: &[u8],
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(copy_sql).await?;
    copy.send(data).await?;
    copy.finish().await
}

/// The statements of the write path, built once per sink.
#[derive(Debug, Default)]
struct Sql {
    /// COPY straight into audit_records (the optimistic path).
    direct_copy: String,
    /// COPY into the connection's staging table (the idempotent path).
    staging_copy: String,
    /// INSERT from staging ... ON CONFLICT DO NOTHING.
    insert: String,
    /// The same, RETURNING record_id (for the digest of what was inserted).
    insert_returning: String,
}

/// Raw COPY of `records` straight into `table` (no staging, no conflict handling): the
/// baseline the benchmark (issue #6) compares [`PostgresSink::write`] against.
pub async fn raw_copy(
    conn: &mut PgConnection,
    table: &str,
    records: &[AuditRecord],
) -> Result<u64, PgError> {
    let mut buf = Vec::new();
    copy::header(&mut buf);
    for r in records {
        copy::row(&mut buf, r);
    }
    copy::trailer(&mut buf);
    let sql = format!(
        "COPY {table} ({}) FROM STDIN WITH (FORMAT binary)",
        copy::column_list()
    );
    let mut copy = conn
        .copy_in_raw(&sql)
        .await
        .map_err(|e| classify(e, "starting COPY"))?;
    copy.send(buf.as_slice())
        .await
        .map_err(|e| classify(e, "sending COPY data"))?;
    copy.finish()
        .await
        .map_err(|e| classify(e, "finishing COPY"))
}

/// `meshaudit migrate`: connects and applies the missing migrations.
pub async fn migrate_url(url: &DatabaseUrl) -> Result<(Option<i64>, i64), PgError> {
    let opts = connect_options(url)?;
    let mut conn = connect(&opts).await?;
    let result = schema::migrate(&mut conn).await;
    let _ = conn.close().await;
    result
}
