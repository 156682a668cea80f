//! Configuration of `meshaudit serve`.
//!
//! Every setting is declared once, in [`ServeOptions`], and can be given three ways, highest
//! precedence first: a command-line flag (`--data-dir`), an environment variable
//! (`MESHAUDIT_DATA_DIR`), or a key in the TOML file named by `--config` (`data_dir`). Unknown
//! keys and unknown `MESHAUDIT_*` variables are errors, and every error names the setting in all
//! three spellings and says how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use thiserror::Error;

use crate::ingest::peer_auth::PeerAuth;
use crate::ingest::tls::AlsTls;
use crate::join::identity::IdentityConfig;
use crate::join::redact::DEFAULT_PARAMS;
use crate::store::postgres::url::DatabaseUrl;
use crate::store::postgres::PostgresConfig;
use crate::store::spool::FsyncMode;

pub const DEFAULT_ALS_ADDR: &str = "0.0.0.0:9000";
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9001";
/// OTLP's registered gRPC port.
pub const DEFAULT_OTLP_ADDR: &str = "0.0.0.0:4317";
pub const DEFAULT_DATA_DIR: &str = "./meshaudit-data";
/// Envoy opens an ALS stream per worker thread and logger, and each worker has its own
/// connection, so a connection carries a few streams; 100 is HTTP/2's customary value.
pub const DEFAULT_ALS_MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// About 2 workers × 2 loggers (HTTP, TCP) per sidecar: ~1000 sidecars per replica.
pub const DEFAULT_ALS_MAX_STREAMS: usize = 4096;
/// Envoy flushes a busy stream every second; 5 minutes without one means an idle proxy or a
/// peer that is gone. Reopening costs Envoy one stream on its open connection.
pub const DEFAULT_ALS_STREAM_IDLE_TIMEOUT_SECS: u64 = 300;
/// Half an hour (± 10 %): streams rebalance across replicas within that after a scale-up, at a
/// cost of one reconnect per stream per half hour.
pub const DEFAULT_ALS_MAX_STREAM_AGE_SECS: u64 = 1800;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}. Fix: point --config (MESHAUDIT_CONFIG) at a readable TOML file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}Fix: use only the keys listed by `meshaudit serve --help`, spelled with underscores (data_dir, not data-dir)")]
    Parse { path: PathBuf, message: String },
    #[error("unknown environment variable {name}: meshaudit has no such setting. Fix: remove it, or use one of: {known} (Kubernetes service-link variables, such as MESHAUDIT_SERVICE_HOST=10.96.0.12, are recognised by their values and ignored)")]
    UnknownEnv { name: String, known: String },
    #[error("invalid setting {key} (flag --{flag}, env {env}): {problem}. Fix: {fix}")]
    Invalid {
        key: &'static str,
        flag: String,
        env: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    fn invalid(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            flag: key.replace('_', "-"),
            env: format!("MESHAUDIT_{}", key.to_ascii_uppercase()),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The settings of `meshaudit serve`, as flags, environment variables and TOML keys.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// TOML file with any of these settings (keys spelled with underscores).
    #[arg(long, env = "MESHAUDIT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address of the Envoy gRPC Access Log Service listener [default: 0.0.0.0:9000].
    #[arg(long, env = "MESHAUDIT_ALS_ADDR", value_name = "HOST:PORT")]
    pub als_addr: Option<SocketAddr>,

    /// Address of the admin HTTP listener: /healthz, /readyz, /metrics [default: 0.0.0.0:9001].
    #[arg(long, env = "MESHAUDIT_ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<SocketAddr>,

    /// Directory for Parquet files (dt=YYYY-MM-DD/hour=HH/) [default: ./meshaudit-data].
    #[arg(long, env = "MESHAUDIT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Ed25519 key (PEM PKCS#8) that signs the tamper-evidence digests; generated (mode 0600)
    /// if missing. Keep it where whoever can edit the data cannot read it, e.g. a Secret
    /// [default: DATA_DIR/_keys/digest-signing-key.pem].
    #[arg(long, env = "MESHAUDIT_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Largest ALS message accepted, in bytes; larger ones end their stream [default: 4194304].
    #[arg(long, env = "MESHAUDIT_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,

    /// Messages queued for the spool writer before stream reads wait [default: 1024].
    #[arg(long, env = "MESHAUDIT_BUFFER_MESSAGES", value_name = "N")]
    pub buffer_messages: Option<usize>,

    /// Parquet file size at which a file is closed and a new one started [default: 134217728].
    #[arg(long, env = "MESHAUDIT_PARQUET_MAX_FILE_BYTES", value_name = "BYTES")]
    pub parquet_max_file_bytes: Option<u64>,

    /// Age at which an open Parquet file is closed, in seconds [default: 60].
    #[arg(long, env = "MESHAUDIT_PARQUET_MAX_FILE_AGE_SECS", value_name = "SECS")]
    pub parquet_max_file_age_secs: Option<u64>,

    /// Rows per Parquet row group; bounds the writer's memory [default: 16384].
    #[arg(long, env = "MESHAUDIT_PARQUET_ROW_GROUP_ROWS", value_name = "ROWS")]
    pub parquet_row_group_rows: Option<usize>,

    /// zstd compression level of Parquet files, 1-22 [default: 3].
    #[arg(long, env = "MESHAUDIT_PARQUET_ZSTD_LEVEL", value_name = "LEVEL")]
    pub parquet_zstd_level: Option<i32>,

    /// Query-string parameters whose values are replaced by REDACTED (comma-separated; replaces
    /// the default list: code, access_token, id_token, refresh_token, client_secret, token, ...).
    #[arg(
        long,
        env = "MESHAUDIT_REDACT_PARAMS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub redact_params: Option<Vec<String>>,

    /// PEM certificate chain for TLS on the ALS listener; needs --als-tls-key [default: none,
    /// plaintext h2c].
    #[arg(long, env = "MESHAUDIT_ALS_TLS_CERT", value_name = "FILE")]
    pub als_tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --als-tls-cert.
    #[arg(long, env = "MESHAUDIT_ALS_TLS_KEY", value_name = "FILE")]
    pub als_tls_key: Option<PathBuf>,

    /// PEM CA bundle: ALS clients must present a certificate it issued (mutual TLS).
    #[arg(long, env = "MESHAUDIT_ALS_TLS_CLIENT_CA", value_name = "FILE")]
    pub als_tls_client_ca: Option<PathBuf>,

    /// SPIFFE IDs allowed to send logs (comma-separated or repeated); a path segment `*`
    /// matches any one segment. Needs --als-tls-client-ca [default: any certificate of the CA].
    #[arg(
        long,
        env = "MESHAUDIT_ALS_ALLOWED_SPIFFE_ID",
        value_name = "SPIFFE_ID",
        value_delimiter = ','
    )]
    pub als_allowed_spiffe_id: Option<Vec<String>>,

    /// Trust domains whose SPIFFE IDs may all send logs (comma-separated or repeated). Needs
    /// --als-tls-client-ca.
    #[arg(
        long,
        env = "MESHAUDIT_ALS_ALLOWED_TRUST_DOMAIN",
        value_name = "DOMAIN",
        value_delimiter = ','
    )]
    pub als_allowed_trust_domain: Option<Vec<String>>,

    /// HTTP/2 streams one ALS connection may have open at once [default: 100].
    #[arg(
        long,
        env = "MESHAUDIT_ALS_MAX_STREAMS_PER_CONNECTION",
        value_name = "N"
    )]
    pub als_max_streams_per_connection: Option<u32>,

    /// ALS streams this replica serves at once; more are refused with RESOURCE_EXHAUSTED
    /// [default: 4096].
    #[arg(long, env = "MESHAUDIT_ALS_MAX_STREAMS", value_name = "N")]
    pub als_max_streams: Option<usize>,

    /// Seconds an ALS stream may go without a message before it is ended, 0 = never
    /// [default: 300].
    #[arg(
        long,
        env = "MESHAUDIT_ALS_STREAM_IDLE_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    pub als_stream_idle_timeout_secs: Option<u64>,

    /// Seconds (± 10 %) after which an ALS stream is ended so Envoy reconnects and streams
    /// rebalance across replicas, 0 = never [default: 1800].
    #[arg(long, env = "MESHAUDIT_ALS_MAX_STREAM_AGE_SECS", value_name = "SECS")]
    pub als_max_stream_age_secs: Option<u64>,

    /// Seconds allowed on SIGTERM to finish writing before exiting [default: 30].
    #[arg(long, env = "MESHAUDIT_SHUTDOWN_TIMEOUT_SECS", value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,

    /// Log format: text or json [default: text].
    #[arg(long, env = "MESHAUDIT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Entra tenant id (GUID) whose access tokens the collector verifies itself, v1 and v2
    /// issuers (repeatable, or comma-separated) [default: none, raw tokens are not trusted].
    #[arg(
        long,
        env = "MESHAUDIT_ENTRA_TENANT",
        value_name = "TENANT_ID",
        value_delimiter = ','
    )]
    pub entra_tenant: Option<Vec<String>>,

    /// Audience a verified token must name: the API's client id (GUID) and/or App ID URI
    /// (repeatable, or comma-separated). Required with --entra-tenant.
    #[arg(
        long,
        env = "MESHAUDIT_AUDIENCE",
        value_name = "AUD",
        value_delimiter = ','
    )]
    pub audience: Option<Vec<String>>,

    /// JWKS URL used for every tenant instead of Entra's keys endpoints (e.g. a local mirror;
    /// plain http is allowed, with a warning) [default: Entra's per-tenant endpoints].
    #[arg(long, env = "MESHAUDIT_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,

    /// Logged request headers that may carry a raw bearer token, in order; `none` turns raw
    /// tokens off [default: authorization]. Their values are never stored.
    #[arg(
        long,
        env = "MESHAUDIT_TOKEN_HEADER",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub token_header: Option<Vec<String>>,

    /// Logged request headers carrying claims a proxy forwarded (Istio outputPayloadToHeader,
    /// base64url JSON). Name one only if a proxy on the path always sets or strips it
    /// [default: none].
    #[arg(
        long,
        env = "MESHAUDIT_PAYLOAD_HEADER",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub payload_header: Option<Vec<String>>,

    /// Clock skew allowed when checking a token's exp/nbf against the request time [default: 60].
    #[arg(long, env = "MESHAUDIT_CLOCK_SKEW_SECS", value_name = "SECS")]
    pub clock_skew_secs: Option<u64>,

    /// Seconds between scheduled refreshes of each signing key set [default: 3600].
    #[arg(long, env = "MESHAUDIT_JWKS_REFRESH_SECS", value_name = "SECS")]
    pub jwks_refresh_secs: Option<u64>,

    /// Least seconds between two fetches of one key set triggered by unknown key ids
    /// [default: 30].
    #[arg(long, env = "MESHAUDIT_JWKS_MIN_REFRESH_SECS", value_name = "SECS")]
    pub jwks_min_refresh_secs: Option<u64>,

    /// Timeout of a key fetch, and the longest a record waits for one [default: 5000].
    #[arg(long, env = "MESHAUDIT_JWKS_TIMEOUT_MS", value_name = "MS")]
    pub jwks_timeout_ms: Option<u64>,

    /// Directory snapshot (JSON: group and application names, managed identities), reloaded
    /// when it changes [default: none].
    #[arg(long, env = "MESHAUDIT_DIRECTORY", value_name = "FILE")]
    pub directory: Option<PathBuf>,

    /// Memory for cached token verifications, in MiB [default: 64].
    #[arg(long, env = "MESHAUDIT_TOKEN_CACHE_MIB", value_name = "MIB")]
    pub token_cache_mib: Option<u64>,
    /// Postgres to write audit_records to, beside Parquet: postgres://USER:PASSWORD@HOST:PORT/DB.
    /// Also read from DATABASE_URL (lowest precedence). Never logged with its password.
    #[arg(
        long,
        env = "MESHAUDIT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<DatabaseUrl>,

    /// Apply the database migrations at start-up (needs a role that owns the schema) [default: false].
    #[arg(long, env = "MESHAUDIT_MIGRATE_ON_START", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub migrate_on_start: Option<bool>,

    /// Drop Postgres day partitions older than this many days; 0 keeps everything [default: 0].
    #[arg(long, env = "MESHAUDIT_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<u32>,

    /// Records per Postgres transaction (one binary COPY and one digest row each) [default: 1000;
    /// 5000 measured the same CPU per record and 33 MiB more peak RSS at max rate].
    #[arg(long, env = "MESHAUDIT_POSTGRES_BATCH_ROWS", value_name = "ROWS")]
    pub postgres_batch_rows: Option<usize>,

    /// Directory of the durable spool, on local disk [default: DATA_DIR/_spool].
    #[arg(long, env = "MESHAUDIT_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Spool size at which ingest slows until the sinks catch up [default: 1073741824].
    #[arg(long, env = "MESHAUDIT_SPOOL_MAX_BYTES", value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,

    /// Size at which a spool segment file is closed and a new one started [default: 67108864].
    #[arg(long, env = "MESHAUDIT_SPOOL_SEGMENT_BYTES", value_name = "BYTES")]
    pub spool_segment_bytes: Option<u64>,

    /// When an accepted batch is on disk: `interval` (written to the OS, fsync every
    /// spool_fsync_interval_ms: a killed process loses nothing; a power loss up to one interval)
    /// or `always` (fsynced before it is accepted: nothing is lost) [default: interval].
    #[arg(long, env = "MESHAUDIT_SPOOL_FSYNC", value_name = "MODE")]
    pub spool_fsync: Option<String>,

    /// With spool_fsync = interval, the longest time between fsyncs, in ms [default: 100].
    #[arg(long, env = "MESHAUDIT_SPOOL_FSYNC_INTERVAL_MS", value_name = "MS")]
    pub spool_fsync_interval_ms: Option<u64>,

    /// ALS connections open at once (plaintext or TLS), capped by what the open-files limit
    /// allows; more are closed at once [default: 4096].
    #[arg(long, env = "MESHAUDIT_ALS_MAX_CONNECTIONS", value_name = "N")]
    pub als_max_connections: Option<usize>,

    /// Seconds a new ALS connection has to finish its TLS handshake and send the HTTP/2
    /// preface before it is closed [default: 10].
    #[arg(
        long,
        env = "MESHAUDIT_ALS_HANDSHAKE_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    pub als_handshake_timeout_secs: Option<u64>,

    /// Seconds between HTTP/2 keepalive pings on an ALS connection that received nothing,
    /// 0 = no pings [default: 60].
    #[arg(
        long,
        env = "MESHAUDIT_ALS_KEEPALIVE_INTERVAL_SECS",
        value_name = "SECS"
    )]
    pub als_keepalive_interval_secs: Option<u64>,

    /// Seconds to wait for a keepalive ping's acknowledgement before closing the connection
    /// [default: 20].
    #[arg(
        long,
        env = "MESHAUDIT_ALS_KEEPALIVE_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    pub als_keepalive_timeout_secs: Option<u64>,

    /// Seconds an admin connection has to send a request's headers; also how long an idle
    /// keep-alive connection stays open [default: 5].
    #[arg(
        long,
        env = "MESHAUDIT_ADMIN_HEADER_READ_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    pub admin_header_read_timeout_secs: Option<u64>,

    /// Seconds an admin connection may move no bytes (e.g. a client that does not read its
    /// response) before it is closed [default: 30].
    #[arg(long, env = "MESHAUDIT_ADMIN_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub admin_idle_timeout_secs: Option<u64>,

    /// How far before its receive time an entry's start_time may be; an earlier one is stored
    /// with start_time = received_at and the reported seconds in start_time_reported_secs
    /// [default: 604800, 7 days].
    #[arg(long, env = "MESHAUDIT_START_TIME_MAX_PAST_SECS", value_name = "SECS")]
    pub start_time_max_past_secs: Option<u64>,

    /// How far after its receive time an entry's start_time may be; a later one is stored with
    /// start_time = received_at and the reported seconds in start_time_reported_secs [default: 3600].
    #[arg(
        long,
        env = "MESHAUDIT_START_TIME_MAX_FUTURE_SECS",
        value_name = "SECS"
    )]
    pub start_time_max_future_secs: Option<u64>,

    /// Address of the OTLP logs listener (gRPC `LogsService/Export`, for Envoy's OpenTelemetry
    /// access logger and OpenTelemetry Collectors), or `off`. Same TLS, allow-list and limits
    /// as the ALS listener [default: 0.0.0.0:4317].
    #[arg(long, env = "MESHAUDIT_OTLP_ADDR", value_name = "HOST:PORT|off")]
    pub otlp_addr: Option<String>,
    /// Write Parquet files to object storage: az://CONTAINER/PREFIX, abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX,
    /// s3://BUCKET/PREFIX or gs://BUCKET/PREFIX; credentials from the cloud's usual environment
    /// (docs/storage.md). Without it, Parquet stays in --data-dir.
    #[arg(long, env = "MESHAUDIT_PARQUET_URL", value_name = "URL")]
    pub parquet_url: Option<String>,
}

impl ServeOptions {
    /// Fills every setting not given on the command line or in the environment from `file`.
    fn or(self, file: ServeOptions) -> ServeOptions {
        ServeOptions {
            config: self.config,
            als_addr: self.als_addr.or(file.als_addr),
            admin_addr: self.admin_addr.or(file.admin_addr),
            data_dir: self.data_dir.or(file.data_dir),
            signing_key: self.signing_key.or(file.signing_key),
            max_message_bytes: self.max_message_bytes.or(file.max_message_bytes),
            buffer_messages: self.buffer_messages.or(file.buffer_messages),
            parquet_max_file_bytes: self.parquet_max_file_bytes.or(file.parquet_max_file_bytes),
            parquet_max_file_age_secs: self
                .parquet_max_file_age_secs
                .or(file.parquet_max_file_age_secs),
            parquet_row_group_rows: self.parquet_row_group_rows.or(file.parquet_row_group_rows),
            parquet_zstd_level: self.parquet_zstd_level.or(file.parquet_zstd_level),
            redact_params: self.redact_params.or(file.redact_params),
            shutdown_timeout_secs: self.shutdown_timeout_secs.or(file.shutdown_timeout_secs),
            log_format: self.log_format.or(file.log_format),
            als_tls_cert: self.als_tls_cert.or(file.als_tls_cert),
            als_tls_key: self.als_tls_key.or(file.als_tls_key),
            als_tls_client_ca: self.als_tls_client_ca.or(file.als_tls_client_ca),
            als_allowed_spiffe_id: self.als_allowed_spiffe_id.or(file.als_allowed_spiffe_id),
            als_allowed_trust_domain: self
                .als_allowed_trust_domain
                .or(file.als_allowed_trust_domain),
            als_max_streams_per_connection: self
                .als_max_streams_per_connection
                .or(file.als_max_streams_per_connection),
            als_max_streams: self.als_max_streams.or(file.als_max_streams),
            als_stream_idle_timeout_secs: self
                .als_stream_idle_timeout_secs
                .or(file.als_stream_idle_timeout_secs),
            als_max_stream_age_secs: self
                .als_max_stream_age_secs
                .or(file.als_max_stream_age_secs),
            entra_tenant: self.entra_tenant.or(file.entra_tenant),
            audience: self.audience.or(file.audience),
            jwks_url: self.jwks_url.or(file.jwks_url),
            token_header: self.token_header.or(file.token_header),
            payload_header: self.payload_header.or(file.payload_header),
            clock_skew_secs: self.clock_skew_secs.or(file.clock_skew_secs),
            jwks_refresh_secs: self.jwks_refresh_secs.or(file.jwks_refresh_secs),
            jwks_min_refresh_secs: self.jwks_min_refresh_secs.or(file.jwks_min_refresh_secs),
            jwks_timeout_ms: self.jwks_timeout_ms.or(file.jwks_timeout_ms),
            directory: self.directory.or(file.directory),
            token_cache_mib: self.token_cache_mib.or(file.token_cache_mib),
            database_url: self.database_url.or(file.database_url),
            migrate_on_start: self.migrate_on_start.or(file.migrate_on_start),
            retention_days: self.retention_days.or(file.retention_days),
            postgres_batch_rows: self.postgres_batch_rows.or(file.postgres_batch_rows),
            spool_dir: self.spool_dir.or(file.spool_dir),
            spool_max_bytes: self.spool_max_bytes.or(file.spool_max_bytes),
            spool_segment_bytes: self.spool_segment_bytes.or(file.spool_segment_bytes),
            spool_fsync: self.spool_fsync.or(file.spool_fsync),
            spool_fsync_interval_ms: self
                .spool_fsync_interval_ms
                .or(file.spool_fsync_interval_ms),
            als_max_connections: self.als_max_connections.or(file.als_max_connections),
            als_handshake_timeout_secs: self
                .als_handshake_timeout_secs
                .or(file.als_handshake_timeout_secs),
            als_keepalive_interval_secs: self
                .als_keepalive_interval_secs
                .or(file.als_keepalive_interval_secs),
            als_keepalive_timeout_secs: self
                .als_keepalive_timeout_secs
                .or(file.als_keepalive_timeout_secs),
            admin_header_read_timeout_secs: self
                .admin_header_read_timeout_secs
                .or(file.admin_header_read_timeout_secs),
            admin_idle_timeout_secs: self
                .admin_idle_timeout_secs
                .or(file.admin_idle_timeout_secs),
            start_time_max_past_secs: self
                .start_time_max_past_secs
                .or(file.start_time_max_past_secs),
            start_time_max_future_secs: self
                .start_time_max_future_secs
                .or(file.start_time_max_future_secs),
            otlp_addr: self.otlp_addr.or(file.otlp_addr),
            parquet_url: self.parquet_url.or(file.parquet_url),
        }
    }
}

/// Validated settings with defaults applied: what the collector runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub als_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The digest signing key (store::digest).
    pub signing_key: PathBuf,
    pub max_message_bytes: usize,
    pub buffer_messages: usize,
    pub parquet_max_file_bytes: u64,
    pub parquet_max_file_age: Duration,
    pub parquet_row_group_rows: usize,
    pub parquet_zstd_level: i32,
    pub redact_params: Vec<String>,
    pub shutdown_timeout: Duration,
    pub log_json: bool,
    /// TLS on the ALS listener; `None` = plaintext h2c.
    pub als_tls: Option<AlsTls>,
    /// Which TLS peers may write.
    pub als_peers: PeerAuth,
    pub als_max_streams_per_connection: u32,
    pub als_max_streams: usize,
    /// `None` = never.
    pub als_stream_idle_timeout: Option<Duration>,
    /// `None` = never.
    pub als_max_stream_age: Option<Duration>,
    pub identity: IdentityConfig,
    /// The Postgres sink, when a database URL is given.
    pub postgres: Option<PostgresConfig>,
    pub postgres_batch_rows: usize,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub spool_segment_bytes: u64,
    pub spool_fsync: FsyncMode,
    /// Connections, deadlines and the start-time window (issue 15).
    pub hardening: Hardening,
    /// The OTLP logs listener; `None` = off.
    pub otlp_addr: Option<SocketAddr>,
    /// Object storage for Parquet (store::object); None keeps it in `data_dir`.
    pub parquet_url: Option<String>,
}

/// Bounds on what a client can make the collector hold or the database do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// Before the open-files cap (`serve` applies it).
    pub als_max_connections: usize,
    pub als_handshake_timeout: Duration,
    /// `None` = no pings.
    pub als_keepalive_interval: Option<Duration>,
    pub als_keepalive_timeout: Duration,
    pub admin_header_read_timeout: Duration,
    pub admin_idle_timeout: Duration,
    pub start_time_window: crate::join::traffic::StartWindow,
}

pub const DEFAULT_ALS_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_ALS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_ALS_KEEPALIVE_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_ALS_KEEPALIVE_TIMEOUT_SECS: u64 = 20;
pub const DEFAULT_ADMIN_HEADER_READ_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_ADMIN_IDLE_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_START_TIME_MAX_PAST_SECS: u64 = 7 * 86_400;
pub const DEFAULT_START_TIME_MAX_FUTURE_SECS: u64 = 3600;

/// A setting `key` in `range`, or the error naming it.
fn in_range(
    key: &'static str,
    v: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{v} is outside {}..={}", range.start(), range.end()),
            format!("use a value in that range ({default} is the default)"),
        ))
    }
}

fn resolve_hardening(o: &ServeOptions) -> Result<Hardening, ConfigError> {
    let secs = Duration::from_secs;
    let max_connections = in_range(
        "als_max_connections",
        o.als_max_connections.map(|n| n as u64),
        DEFAULT_ALS_MAX_CONNECTIONS as u64,
        1..=1_000_000,
    )?;
    let keepalive = in_range(
        "als_keepalive_interval_secs",
        o.als_keepalive_interval_secs,
        DEFAULT_ALS_KEEPALIVE_INTERVAL_SECS,
        0..=3600,
    )?;
    Ok(Hardening {
        als_max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        als_handshake_timeout: secs(in_range(
            "als_handshake_timeout_secs",
            o.als_handshake_timeout_secs,
            DEFAULT_ALS_HANDSHAKE_TIMEOUT_SECS,
            1..=300,
        )?),
        als_keepalive_interval: (keepalive > 0).then(|| secs(keepalive)),
        als_keepalive_timeout: secs(in_range(
            "als_keepalive_timeout_secs",
            o.als_keepalive_timeout_secs,
            DEFAULT_ALS_KEEPALIVE_TIMEOUT_SECS,
            1..=300,
        )?),
        admin_header_read_timeout: secs(in_range(
            "admin_header_read_timeout_secs",
            o.admin_header_read_timeout_secs,
            DEFAULT_ADMIN_HEADER_READ_TIMEOUT_SECS,
            1..=300,
        )?),
        admin_idle_timeout: secs(in_range(
            "admin_idle_timeout_secs",
            o.admin_idle_timeout_secs,
            DEFAULT_ADMIN_IDLE_TIMEOUT_SECS,
            1..=3600,
        )?),
        start_time_window: crate::join::traffic::StartWindow {
            max_past: secs(in_range(
                "start_time_max_past_secs",
                o.start_time_max_past_secs,
                DEFAULT_START_TIME_MAX_PAST_SECS,
                60..=3650 * 86_400,
            )?),
            max_future: secs(in_range(
                "start_time_max_future_secs",
                o.start_time_max_future_secs,
                DEFAULT_START_TIME_MAX_FUTURE_SECS,
                0..=7 * 86_400,
            )?),
        },
    })
}

/// `otlp_addr`: `off` (any case) turns the listener off; otherwise a socket address.
fn resolve_otlp_addr(v: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    let v = v.unwrap_or(DEFAULT_OTLP_ADDR).trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse::<SocketAddr>().map(Some).map_err(|_| {
        ConfigError::invalid(
            "otlp_addr",
            format!("`{v}` is neither HOST:PORT nor off"),
            "give an IP address and port such as 0.0.0.0:4317, or off to serve no OTLP listener",
        )
    })
}

/// `DATABASE_URL` is honoured as the conventional fallback, below every meshaudit spelling.
const DATABASE_URL_ENV: &str = "DATABASE_URL";

impl ServeConfig {
    /// Merges flags/env over the config file, applies defaults and validates.
    pub fn resolve(cli: ServeOptions) -> Result<ServeConfig, ConfigError> {
        check_env_names(std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        }))?;
        let opts = match cli.config.clone() {
            Some(path) => {
                let file = read_file(&path)?;
                cli.or(file)
            }
            None => cli,
        };
        let database_url = opts.database_url.clone().or_else(|| {
            std::env::var(DATABASE_URL_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .map(DatabaseUrl::new)
        });
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let spool_fsync = match opts.spool_fsync.as_deref() {
            None | Some("interval") => FsyncMode::Interval(Duration::from_millis(
                opts.spool_fsync_interval_ms.unwrap_or(100),
            )),
            Some("always") => FsyncMode::Always,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "spool_fsync",
                    format!("`{other}` is not a durability mode"),
                    "use interval (the default: fsync every spool_fsync_interval_ms) or always (fsync before a batch is accepted)",
                ))
            }
        };
        let parse_addr = |s: &str| {
            s.parse::<SocketAddr>()
                .expect("default address literal is valid")
        };
        let (als_tls, als_peers) = resolve_als_tls(&opts)?;
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let identity = resolve_identity(&opts)?;
        let hardening = resolve_hardening(&opts)?;
        let cfg = ServeConfig {
            als_addr: opts
                .als_addr
                .unwrap_or_else(|| parse_addr(DEFAULT_ALS_ADDR)),
            admin_addr: opts
                .admin_addr
                .unwrap_or_else(|| parse_addr(DEFAULT_ADMIN_ADDR)),
            spool_dir: opts
                .spool_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("_spool")),
            signing_key: opts
                .signing_key
                .clone()
                .unwrap_or_else(|| data_dir.join(crate::store::digest::DEFAULT_KEY_PATH)),
            data_dir,
            max_message_bytes: opts.max_message_bytes.unwrap_or(4 << 20),
            buffer_messages: opts.buffer_messages.unwrap_or(1024),
            parquet_max_file_bytes: opts.parquet_max_file_bytes.unwrap_or(128 << 20),
            parquet_max_file_age: Duration::from_secs(opts.parquet_max_file_age_secs.unwrap_or(60)),
            parquet_row_group_rows: opts.parquet_row_group_rows.unwrap_or(16_384),
            parquet_zstd_level: opts.parquet_zstd_level.unwrap_or(3),
            redact_params: opts
                .redact_params
                .unwrap_or_else(|| DEFAULT_PARAMS.iter().map(|s| (*s).to_owned()).collect()),
            shutdown_timeout: Duration::from_secs(opts.shutdown_timeout_secs.unwrap_or(30)),
            log_json: match opts.log_format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(ConfigError::invalid(
                        "log_format",
                        format!("`{other}` is not a log format"),
                        "use text or json",
                    ))
                }
            },
            als_tls,
            als_peers,
            als_max_streams_per_connection: opts
                .als_max_streams_per_connection
                .unwrap_or(DEFAULT_ALS_MAX_STREAMS_PER_CONNECTION),
            als_max_streams: opts.als_max_streams.unwrap_or(DEFAULT_ALS_MAX_STREAMS),
            als_stream_idle_timeout: secs(
                opts.als_stream_idle_timeout_secs
                    .unwrap_or(DEFAULT_ALS_STREAM_IDLE_TIMEOUT_SECS),
            ),
            als_max_stream_age: secs(
                opts.als_max_stream_age_secs
                    .unwrap_or(DEFAULT_ALS_MAX_STREAM_AGE_SECS),
            ),
            identity,
            postgres: database_url.map(|url| PostgresConfig {
                url,
                migrate_on_start: opts.migrate_on_start.unwrap_or(false),
                retention_days: opts.retention_days.filter(|d| *d > 0),
            }),
            postgres_batch_rows: opts.postgres_batch_rows.unwrap_or(1000),
            spool_max_bytes: opts.spool_max_bytes.unwrap_or(1 << 30),
            spool_segment_bytes: opts.spool_segment_bytes.unwrap_or(64 << 20),
            spool_fsync,
            hardening,
            otlp_addr: resolve_otlp_addr(opts.otlp_addr.as_deref())?,
            parquet_url: match opts.parquet_url.clone() {
                Some(u) if !crate::store::object::ObjectTarget::is_object_url(&u) => {
                    return Err(ConfigError::invalid(
                        "parquet_url",
                        format!(
                            "`{}` is not an object storage URL",
                            u.split('?').next().unwrap_or("")
                        ),
                        "use az://, abfss://, s3:// or gs://; for a local directory use --data-dir",
                    ))
                }
                u => u,
            },
        };
        if cfg.postgres.is_none() {
            if opts.migrate_on_start == Some(true) {
                return Err(ConfigError::invalid(
                    "migrate_on_start",
                    "is set but no database is configured",
                    "set --database-url (or DATABASE_URL), or drop migrate_on_start",
                ));
            }
            if opts.retention_days.is_some_and(|d| d > 0) {
                return Err(ConfigError::invalid(
                    "retention_days",
                    "applies to Postgres partitions but no database is configured",
                    "set --database-url (or DATABASE_URL), or drop retention_days",
                ));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(otlp) = self.otlp_addr.filter(|a| a.port() != 0) {
            for (other, flag) in [
                (self.als_addr, "--als-addr"),
                (self.admin_addr, "--admin-addr"),
            ] {
                if otlp == other {
                    return Err(ConfigError::invalid(
                        "otlp_addr",
                        format!("{otlp} is also the address of {flag}"),
                        format!(
                            "give --otlp-addr and {flag} different ports, or set --otlp-addr off"
                        ),
                    ));
                }
            }
        }
        if self.als_addr == self.admin_addr && self.als_addr.port() != 0 {
            return Err(ConfigError::invalid(
                "admin_addr",
                format!("{} is also the ALS address", self.admin_addr),
                "give --als-addr and --admin-addr different ports",
            ));
        }
        if self.max_message_bytes < 16 << 10 {
            return Err(ConfigError::invalid(
                "max_message_bytes",
                format!(
                    "{} is smaller than one Envoy batch (16384 bytes by default)",
                    self.max_message_bytes
                ),
                "use at least 65536; the default 4194304 suits Envoy's defaults",
            ));
        }
        if self.buffer_messages == 0 {
            return Err(ConfigError::invalid(
                "buffer_messages",
                "must be at least 1",
                "use a value such as 1024",
            ));
        }
        if self.parquet_row_group_rows == 0 {
            return Err(ConfigError::invalid(
                "parquet_row_group_rows",
                "must be at least 1",
                "use a value such as 16384",
            ));
        }
        if self.parquet_max_file_age.is_zero() {
            return Err(ConfigError::invalid(
                "parquet_max_file_age_secs",
                "must be at least 1",
                "use a value such as 60",
            ));
        }
        if !(1..=22).contains(&self.parquet_zstd_level) {
            return Err(ConfigError::invalid(
                "parquet_zstd_level",
                format!("{} is outside zstd's levels", self.parquet_zstd_level),
                "use a level from 1 to 22 (3 is the default)",
            ));
        }
        if self.als_max_streams == 0 {
            return Err(ConfigError::invalid(
                "als_max_streams",
                "must be at least 1",
                "use a value such as 4096",
            ));
        }
        if self.als_max_streams_per_connection == 0 {
            return Err(ConfigError::invalid(
                "als_max_streams_per_connection",
                "must be at least 1",
                "use a value such as 100",
            ));
        }
        if let Some(pg) = &self.postgres {
            if let Err(e) = crate::store::postgres::connect_options(&pg.url) {
                return Err(ConfigError::invalid(
                    "database_url",
                    e.to_string(),
                    "use postgres://USER:PASSWORD@HOST:PORT/DATABASE",
                ));
            }
        }
        if self.postgres_batch_rows == 0 {
            return Err(ConfigError::invalid(
                "postgres_batch_rows",
                "must be at least 1",
                "use a value such as 5000",
            ));
        }
        if self.spool_segment_bytes < 64 << 10 {
            return Err(ConfigError::invalid(
                "spool_segment_bytes",
                format!("{} is too small", self.spool_segment_bytes),
                "use at least 65536; the default is 67108864",
            ));
        }
        if self.spool_max_bytes < 2 * self.spool_segment_bytes {
            return Err(ConfigError::invalid(
                "spool_max_bytes",
                format!(
                    "{} is less than two segments ({} bytes each)",
                    self.spool_max_bytes, self.spool_segment_bytes
                ),
                "raise spool_max_bytes (default 1073741824) or lower spool_segment_bytes",
            ));
        }
        if let FsyncMode::Interval(every) = self.spool_fsync {
            if every.is_zero() || every > Duration::from_secs(10) {
                return Err(ConfigError::invalid(
                    "spool_fsync_interval_ms",
                    format!("{} ms is outside 1..=10000", every.as_millis()),
                    "use a value such as 100, or spool_fsync = always",
                ));
            }
        }
        if self.redact_params.iter().any(|p| p.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "redact_params",
                "contains an empty name",
                "list names separated by commas, without empty entries",
            ));
        }
        Ok(())
    }
}

/// TLS files and the SPIFFE allow-list: read, parsed and cross-checked now, so a bad file or a
/// policy that could never be enforced stops the collector at start-up.
fn resolve_als_tls(opts: &ServeOptions) -> Result<(Option<AlsTls>, PeerAuth), ConfigError> {
    let ids = opts.als_allowed_spiffe_id.as_deref().unwrap_or_default();
    let domains = opts.als_allowed_trust_domain.as_deref().unwrap_or_default();
    let tls = match (&opts.als_tls_cert, &opts.als_tls_key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "als_tls_key",
                "--als-tls-cert is set but its private key is not",
                "give both --als-tls-cert and --als-tls-key, or neither for plaintext",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "als_tls_cert",
                "--als-tls-key is set but its certificate is not",
                "give both --als-tls-cert and --als-tls-key, or neither for plaintext",
            ))
        }
        (Some(cert), Some(key)) => Some(
            AlsTls::load(cert, key, opts.als_tls_client_ca.as_deref())
                .map_err(|e| ConfigError::invalid(e.key(), e.to_string(), e.fix()))?,
        ),
    };
    if tls.is_none() && opts.als_tls_client_ca.is_some() {
        return Err(ConfigError::invalid(
            "als_tls_client_ca",
            "client certificates need TLS, which is off",
            "also give --als-tls-cert and --als-tls-key",
        ));
    }
    if !tls.as_ref().is_some_and(AlsTls::client_auth) {
        if ids.is_empty() && domains.is_empty() {
            return Ok((tls, PeerAuth::default()));
        }
        let key = if ids.is_empty() {
            "als_allowed_trust_domain"
        } else {
            "als_allowed_spiffe_id"
        };
        return Err(ConfigError::invalid(
            key,
            "an allow-list needs client certificates to check, and --als-tls-client-ca is not set",
            "give --als-tls-client-ca (with --als-tls-cert and --als-tls-key), or drop the allow-list",
        ));
    }
    let peers = PeerAuth::require_cert(ids, domains).map_err(|e| {
        let key = if ids.contains(&e.value) {
            "als_allowed_spiffe_id"
        } else {
            "als_allowed_trust_domain"
        };
        ConfigError::invalid(
            key,
            e.to_string(),
            "write SPIFFE IDs as spiffe://cluster.local/ns/NAMESPACE/sa/ACCOUNT (a whole segment may be *) and trust domains as cluster.local",
        )
    })?;
    Ok((tls, peers))
}

/// The identity settings with defaults applied, validated.
fn resolve_identity(o: &ServeOptions) -> Result<IdentityConfig, ConfigError> {
    use crate::join::identity as id;
    let mut tenants: Vec<String> = Vec::new();
    for t in o.entra_tenant.iter().flatten().map(|t| t.trim()) {
        if !is_guid(t) {
            return Err(ConfigError::invalid(
                "entra_tenant",
                format!("`{t}` is not a tenant id"),
                "use the Directory (tenant) ID, a GUID such as 11111111-2222-3333-4444-555555555555 (token issuers carry the GUID, never a domain name)",
            ));
        }
        let t = t.to_ascii_lowercase();
        if !tenants.contains(&t) {
            tenants.push(t);
        }
    }
    let audiences: Vec<String> = o
        .audience
        .iter()
        .flatten()
        .map(|a| a.trim().to_owned())
        .collect();
    if audiences.iter().any(String::is_empty) {
        return Err(ConfigError::invalid(
            "audience",
            "contains an empty value",
            "list audiences separated by commas, without empty entries",
        ));
    }
    if !tenants.is_empty() && audiences.is_empty() {
        return Err(ConfigError::invalid(
            "audience",
            "is required with entra_tenant: a token is only verified if it was issued for this API",
            "give the API's client id and/or App ID URI, e.g. --audience 7f1b2c3d-0000-4000-8000-00000000a001 --audience api://orders-api",
        ));
    }
    if tenants.is_empty() && !audiences.is_empty() {
        return Err(ConfigError::invalid(
            "entra_tenant",
            "is required when audience is set",
            "give the tenant id(s) whose tokens to verify with --entra-tenant",
        ));
    }
    let jwks_url = match &o.jwks_url {
        None => None,
        Some(u) => {
            let url = reqwest::Url::parse(u.trim()).map_err(|e| {
                ConfigError::invalid(
                    "jwks_url",
                    format!("`{u}` is not a URL: {e}"),
                    "give an absolute http(s) URL, e.g. https://keys.example/discovery/v2.0/keys",
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(
                    "jwks_url",
                    format!("scheme `{}` is not http or https", url.scheme()),
                    "give an http(s) URL",
                ));
            }
            if tenants.is_empty() {
                return Err(ConfigError::invalid(
                    "jwks_url",
                    "is set but no entra_tenant is, so no key would ever be used",
                    "add --entra-tenant, or remove --jwks-url",
                ));
            }
            Some(url.to_string())
        }
    };
    let headers = |key: &'static str, given: &Option<Vec<String>>, default: &[&str]| {
        let names: Vec<String> = match given {
            None => default.iter().map(|s| (*s).to_owned()).collect(),
            Some(v) if v.len() == 1 && v[0].trim().eq_ignore_ascii_case("none") => Vec::new(),
            Some(v) => v.iter().map(|n| n.trim().to_ascii_lowercase()).collect(),
        };
        match names
            .iter()
            .find(|n| http::HeaderName::from_bytes(n.as_bytes()).is_err())
        {
            Some(bad) => Err(ConfigError::invalid(
                key,
                format!("`{bad}` is not a header name"),
                "list header names (letters, digits, '-') separated by commas, or `none`",
            )),
            None => Ok(names),
        }
    };
    let token_headers = headers("token_header", &o.token_header, &[id::DEFAULT_TOKEN_HEADER])?;
    let payload_headers = headers("payload_header", &o.payload_header, &[])?;
    if let Some(both) = payload_headers.iter().find(|p| token_headers.contains(p)) {
        return Err(ConfigError::invalid(
            "payload_header",
            format!("`{both}` is also a token_header"),
            "a header carries either a raw token or forwarded claims: name it in one list only",
        ));
    }
    let clock_skew = in_range(
        "clock_skew_secs",
        o.clock_skew_secs,
        id::DEFAULT_CLOCK_SKEW_SECS,
        0..=600,
    )?;
    let refresh = in_range(
        "jwks_refresh_secs",
        o.jwks_refresh_secs,
        id::DEFAULT_JWKS_REFRESH_SECS,
        60..=86_400,
    )?;
    let min_refresh = in_range(
        "jwks_min_refresh_secs",
        o.jwks_min_refresh_secs,
        id::DEFAULT_JWKS_MIN_REFRESH_SECS,
        1..=refresh,
    )?;
    let timeout = in_range(
        "jwks_timeout_ms",
        o.jwks_timeout_ms,
        id::DEFAULT_JWKS_TIMEOUT_MS,
        100..=60_000,
    )?;
    let cache_mib = in_range(
        "token_cache_mib",
        o.token_cache_mib,
        id::DEFAULT_TOKEN_CACHE_MIB,
        1..=65_536,
    )?;
    Ok(IdentityConfig {
        entra_tenants: tenants,
        audiences,
        jwks_url,
        token_headers,
        payload_headers,
        clock_skew: Duration::from_secs(clock_skew),
        jwks_refresh: Duration::from_secs(refresh),
        jwks_min_refresh: Duration::from_secs(min_refresh),
        jwks_timeout: Duration::from_millis(timeout),
        directory: o.directory.clone(),
        token_cache_bytes: cache_mib << 20,
    })
}

/// `8-4-4-4-12` hex digits.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn read_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Every `MESHAUDIT_*` variable must name a setting: a typo would otherwise be silently ignored.
/// Kubernetes service-link variables are the exception ([`is_service_link`]).
fn check_env_names(vars: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
    use clap::CommandFactory;
    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        opts: ServeOptions,
    }
    let cmd = Probe::command();
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for (name, value) in vars {
        if name.starts_with("MESHAUDIT_")
            && !known.contains(&name)
            && !is_service_link(&name, &value)
        {
            return Err(ConfigError::UnknownEnv {
                name,
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

/// A variable Kubernetes injects for a Service whose name maps to `MESHAUDIT...` (the Service
/// `meshaudit` that deploy/ creates, or `meshaudit-x`): the Service name upper-cased with dashes
/// as underscores, then `_SERVICE_HOST` (an IP), `_SERVICE_PORT` / `_SERVICE_PORT_<PORT NAME>`
/// (a port), `_PORT` / `_PORT_<port>_<PROTO>` (`tcp://IP:port`), or
/// `_PORT_<port>_<PROTO>_PROTO|_PORT|_ADDR` (`tcp`, the port, an IP). Both the name and the
/// value's shape must match, so a mistyped setting (`MESHAUDIT_ADMIN_PORT=9001`) still fails.
pub fn is_service_link(name: &str, value: &str) -> bool {
    let parts: Vec<&str> = name.split('_').collect();
    let service_ok = |n: usize| {
        n >= 1
            && parts[0] == "MESHAUDIT"
            && parts[..n]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    let ip = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let port = |v: &str| v.parse::<u16>().is_ok_and(|p| p > 0);
    let proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    let url = |v: &str| {
        ["tcp://", "udp://", "sctp://"]
            .iter()
            .find_map(|scheme| v.strip_prefix(scheme))
            .is_some_and(|addr| addr.parse::<std::net::SocketAddr>().is_ok())
    };
    let n = parts.len();
    // <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT
    if n >= 3 && parts[n - 2] == "SERVICE" && service_ok(n - 2) {
        return match parts[n - 1] {
            "HOST" => ip(value),
            "PORT" => port(value),
            _ => false,
        };
    }
    // <SVC>_SERVICE_PORT_<PORT NAME>: the port name may itself contain underscores.
    if let Some(i) = (1..n.saturating_sub(2))
        .find(|&i| parts[i] == "SERVICE" && parts[i + 1] == "PORT" && service_ok(i))
    {
        let port_name = &parts[i + 2..];
        return !port_name.is_empty()
            && port_name
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
            && port(value);
    }
    // <SVC>_PORT
    if n >= 2 && parts[n - 1] == "PORT" && service_ok(n - 1) && url(value) {
        return true;
    }
    // <SVC>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]
    for tail in [3, 4] {
        if n < tail + 1 {
            continue;
        }
        let i = n - tail;
        if parts[i] != "PORT" || !port(parts[i + 1]) || !proto(parts[i + 2]) || !service_ok(i) {
            continue;
        }
        return match (tail, parts.get(i + 3).copied()) {
            (3, _) => url(value),
            (4, Some("PROTO")) => value.eq_ignore_ascii_case(parts[i + 2]),
            (4, Some("PORT")) => value == parts[i + 1],
            (4, Some("ADDR")) => ip(value),
            _ => false,
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_file_key_names_the_key() {
        let err = toml::from_str::<ServeOptions>("data_dir = \"/x\"\ndata-dir = \"/y\"\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("data-dir"), "{err}");
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let file: ServeOptions =
            toml::from_str("data_dir = \"/from-file\"\nbuffer_messages = 7\n").expect("valid");
        let cli = ServeOptions {
            buffer_messages: Some(9),
            ..Default::default()
        };
        let merged = cli.or(file);
        assert_eq!(merged.data_dir, Some(PathBuf::from("/from-file")));
        assert_eq!(merged.buffer_messages, Some(9));
    }

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn kubernetes_service_link_variables_are_ignored() {
        // What Kubernetes injects for deploy/'s Service `meshaudit` (ports grpc-als 9000 and
        // http-admin 9001) and for a Service `meshaudit-db-primary`, in IPv4 and IPv6 clusters.
        let links = [
            ("MESHAUDIT_SERVICE_HOST", "10.96.0.12"),
            ("MESHAUDIT_SERVICE_PORT", "9000"),
            ("MESHAUDIT_SERVICE_PORT_GRPC_ALS", "9000"),
            ("MESHAUDIT_SERVICE_PORT_HTTP_ADMIN", "9001"),
            ("MESHAUDIT_PORT", "tcp://10.96.0.12:9000"),
            ("MESHAUDIT_PORT_9000_TCP", "tcp://10.96.0.12:9000"),
            ("MESHAUDIT_PORT_9000_TCP_PROTO", "tcp"),
            ("MESHAUDIT_PORT_9000_TCP_PORT", "9000"),
            ("MESHAUDIT_PORT_9000_TCP_ADDR", "10.96.0.12"),
            ("MESHAUDIT_PORT_9001_TCP_ADDR", "fd00:10:96::c"),
            ("MESHAUDIT_DB_PRIMARY_SERVICE_HOST", "fd00:10:96::d"),
            ("MESHAUDIT_DB_PRIMARY_PORT", "tcp://[fd00:10:96::d]:5432"),
            (
                "MESHAUDIT_DB_PRIMARY_PORT_5432_TCP",
                "tcp://[fd00:10:96::d]:5432",
            ),
            ("MESHAUDIT_DB_PRIMARY_PORT_5432_UDP_PROTO", "udp"),
        ];
        for (k, v) in links {
            assert!(is_service_link(k, v), "{k}={v}");
        }
        check_env_names(env(&links)).expect("service links ignored");
    }

    #[test]
    fn misspelled_settings_that_look_like_service_links_still_fail() {
        for (k, v) in [
            ("MESHAUDIT_ADMIN_PORT", "9001"), // a _PORT link holds tcp://IP:port
            ("MESHAUDIT_ALS_PORT", "0.0.0.0:9000"), // not a URL either
            ("MESHAUDIT_SERVICE_HOST", "meshaudit.svc"), // a host link holds an IP
            ("MESHAUDIT_SERVICE_PORT", "grpc"),
            ("MESHAUDIT_PORT_9000_TCP_PORT", "9001"), // must repeat the port of its name
            ("MESHAUDIT_PORT_9000_TCP_PROTO", "udp"),
            ("MESHAUDIT_PORT_9000_HTTP", "tcp://10.0.0.1:9000"),
            ("MESHAUDIT_SERVICE_HOSTS", "10.0.0.1"),
            ("MESHAUDIT_SERVICE_PORT_", "9000"),
        ] {
            assert!(!is_service_link(k, v), "{k}={v}");
            let err = check_env_names(env(&[(k, v)])).expect_err("typo");
            let msg = err.to_string();
            assert!(msg.contains(k) && msg.contains("Fix:"), "{msg}");
        }
    }

    #[test]
    fn unknown_env_var_is_refused() {
        let err = check_env_names(env(&[("MESHAUDIT_DATA_DIRR", "/x")])).expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("MESHAUDIT_DATA_DIRR") && msg.contains("MESHAUDIT_DATA_DIR"),
            "{msg}"
        );
        check_env_names(env(&[("MESHAUDIT_DATA_DIR", "/x"), ("PATH", "/bin")])).expect("known");
    }

    #[test]
    fn identity_settings() {
        let tid = "11111111-2222-3333-4444-55555555AAAA";
        let file: ServeOptions = toml::from_str(&format!(
            "entra_tenant = [\"{tid}\"]\naudience = [\"api://orders\", \"7f1b2c3d-0000-4000-8000-00000000a001\"]\njwks_url = \"http://127.0.0.1:1/keys\"\ntoken_header = [\"Authorization\", \"x-token\"]\npayload_header = [\"x-jwt-payload\"]\nclock_skew_secs = 30\ndirectory = \"/etc/dir.json\"\n"
        ))
        .expect("valid keys");
        let id = resolve_identity(&ServeOptions::default().or(file)).expect("valid");
        assert_eq!(id.entra_tenants, ["11111111-2222-3333-4444-55555555aaaa"]);
        assert_eq!(id.audiences.len(), 2);
        assert_eq!(id.token_headers, ["authorization", "x-token"]);
        assert_eq!(id.payload_headers, ["x-jwt-payload"]);
        assert_eq!(id.clock_skew, Duration::from_secs(30));
        assert_eq!(id.jwks_min_refresh, Duration::from_secs(30));
        assert_eq!(id.directory.as_deref(), Some(Path::new("/etc/dir.json")));

        let defaults = resolve_identity(&ServeOptions::default()).expect("defaults");
        assert_eq!(defaults, IdentityConfig::default());
        let off = ServeOptions {
            token_header: Some(vec!["none".into()]),
            ..Default::default()
        };
        assert!(resolve_identity(&off)
            .expect("valid")
            .token_headers
            .is_empty());

        let bad = |o: ServeOptions, key: &str| {
            let msg = resolve_identity(&o).expect_err("invalid").to_string();
            assert!(msg.contains(key) && msg.contains("Fix:"), "{msg}");
        };
        let tenant = || Some(vec![tid.to_owned()]);
        let aud = || Some(vec!["api://orders".to_owned()]);
        bad(
            ServeOptions {
                entra_tenant: Some(vec!["contoso.com".into()]),
                audience: aud(),
                ..Default::default()
            },
            "--entra-tenant",
        );
        bad(
            ServeOptions {
                entra_tenant: tenant(),
                ..Default::default()
            },
            "--audience",
        );
        bad(
            ServeOptions {
                audience: aud(),
                ..Default::default()
            },
            "MESHAUDIT_ENTRA_TENANT",
        );
        bad(
            ServeOptions {
                entra_tenant: tenant(),
                audience: aud(),
                jwks_url: Some("ftp://x/keys".into()),
                ..Default::default()
            },
            "--jwks-url",
        );
        bad(
            ServeOptions {
                jwks_url: Some("https://x/keys".into()),
                ..Default::default()
            },
            "--jwks-url",
        );
        bad(
            ServeOptions {
                token_header: Some(vec!["bad header".into()]),
                ..Default::default()
            },
            "--token-header",
        );
        bad(
            ServeOptions {
                payload_header: Some(vec!["authorization".into()]),
                ..Default::default()
            },
            "--payload-header",
        );
        bad(
            ServeOptions {
                clock_skew_secs: Some(3600),
                ..Default::default()
            },
            "--clock-skew-secs",
        );
        bad(
            ServeOptions {
                jwks_refresh_secs: Some(100),
                jwks_min_refresh_secs: Some(200),
                ..Default::default()
            },
            "--jwks-min-refresh-secs",
        );
        bad(
            ServeOptions {
                jwks_timeout_ms: Some(10),
                ..Default::default()
            },
            "--jwks-timeout-ms",
        );
        bad(
            ServeOptions {
                token_cache_mib: Some(0),
                ..Default::default()
            },
            "--token-cache-mib",
        );
    }

    #[test]
    fn storage_settings_are_validated_with_a_fix() {
        let base = || ServeConfig::resolve(ServeOptions::default()).expect("defaults are valid");
        assert_eq!(
            base().spool_fsync,
            FsyncMode::Interval(Duration::from_millis(100))
        );
        let err = ServeConfig::resolve(ServeOptions {
            spool_fsync: Some("sometimes".into()),
            ..Default::default()
        })
        .expect_err("bad mode")
        .to_string();
        assert!(
            err.contains("--spool-fsync") && err.contains("always"),
            "{err}"
        );
        let cfg = ServeConfig {
            spool_max_bytes: 1 << 20,
            ..base()
        };
        let err = cfg
            .validate()
            .expect_err("bound below two segments")
            .to_string();
        assert!(
            err.contains("MESHAUDIT_SPOOL_MAX_BYTES") && err.contains("Fix:"),
            "{err}"
        );
        let err = ServeConfig::resolve(ServeOptions {
            retention_days: Some(30),
            ..Default::default()
        });
        // Without a database (unless the environment names one), retention has nothing to act on.
        if std::env::var_os("DATABASE_URL").is_none() {
            let err = err.expect_err("no database").to_string();
            assert!(
                err.contains("--retention-days") && err.contains("--database-url"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_database_password_never_shows_in_debug_output() {
        let opts = ServeOptions {
            database_url: Some(DatabaseUrl::new("postgres://audit:hunter2@db/mesh")),
            ..Default::default()
        };
        let cfg = ServeConfig::resolve(opts.clone()).expect("valid");
        let shown = format!("{opts:?} {cfg:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("audit:****@db"),
            "{shown}"
        );
    }

    #[test]
    fn connection_and_start_time_settings() {
        let file: ServeOptions = toml::from_str(
            "als_max_connections = 100\nals_handshake_timeout_secs = 3\nals_keepalive_interval_secs = 0\nadmin_idle_timeout_secs = 9\nstart_time_max_past_secs = 86400\nstart_time_max_future_secs = 0\n",
        )
        .expect("valid keys");
        let h = resolve_hardening(&ServeOptions::default().or(file)).expect("valid");
        assert_eq!(h.als_max_connections, 100);
        assert_eq!(h.als_handshake_timeout, Duration::from_secs(3));
        assert_eq!(h.als_keepalive_interval, None, "0 turns pings off");
        assert_eq!(h.admin_idle_timeout, Duration::from_secs(9));
        assert_eq!(
            h.start_time_window,
            crate::join::traffic::StartWindow {
                max_past: Duration::from_secs(86_400),
                max_future: Duration::ZERO,
            }
        );
        let d = resolve_hardening(&ServeOptions::default()).expect("defaults");
        assert_eq!(d.start_time_window, Default::default());
        assert_eq!(d.als_keepalive_interval, Some(Duration::from_secs(60)));
        for (o, flag) in [
            (
                ServeOptions {
                    als_max_connections: Some(0),
                    ..Default::default()
                },
                "--als-max-connections",
            ),
            (
                ServeOptions {
                    als_handshake_timeout_secs: Some(0),
                    ..Default::default()
                },
                "MESHAUDIT_ALS_HANDSHAKE_TIMEOUT_SECS",
            ),
            (
                ServeOptions {
                    admin_header_read_timeout_secs: Some(1000),
                    ..Default::default()
                },
                "--admin-header-read-timeout-secs",
            ),
            (
                ServeOptions {
                    start_time_max_past_secs: Some(10),
                    ..Default::default()
                },
                "start_time_max_past_secs",
            ),
        ] {
            let msg = resolve_hardening(&o).expect_err("invalid").to_string();
            assert!(msg.contains(flag) && msg.contains("Fix:"), "{msg}");
        }
    }

    #[test]
    fn invalid_value_names_flag_env_and_fix() {
        let cfg = ServeConfig {
            parquet_zstd_level: 40,
            ..ServeConfig::resolve(ServeOptions::default()).expect("defaults are valid")
        };
        let msg = cfg.validate().expect_err("level 40").to_string();
        assert!(
            msg.contains("--parquet-zstd-level")
                && msg.contains("MESHAUDIT_PARQUET_ZSTD_LEVEL")
                && msg.contains("Fix:"),
            "{msg}"
        );
    }
}
