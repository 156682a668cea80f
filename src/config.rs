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
use crate::join::redact::DEFAULT_PARAMS;

pub const DEFAULT_ALS_ADDR: &str = "0.0.0.0:9000";
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9001";
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
    #[error("unknown environment variable {name}: meshaudit has no such setting. Fix: remove it, or use one of: {known}")]
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

    /// Largest ALS message accepted, in bytes; larger ones end their stream [default: 4194304].
    #[arg(long, env = "MESHAUDIT_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,

    /// Accepted messages held in memory before stream reads wait [default: 1024].
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
}

impl ServeOptions {
    /// Fills every setting not given on the command line or in the environment from `file`.
    fn or(self, file: ServeOptions) -> ServeOptions {
        ServeOptions {
            config: self.config,
            als_addr: self.als_addr.or(file.als_addr),
            admin_addr: self.admin_addr.or(file.admin_addr),
            data_dir: self.data_dir.or(file.data_dir),
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
        }
    }
}

/// Validated settings with defaults applied: what the collector runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub als_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
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
}

impl ServeConfig {
    /// Merges flags/env over the config file, applies defaults and validates.
    pub fn resolve(cli: ServeOptions) -> Result<ServeConfig, ConfigError> {
        check_env_names(std::env::vars().map(|(k, _)| k))?;
        let opts = match cli.config.clone() {
            Some(path) => {
                let file = read_file(&path)?;
                cli.or(file)
            }
            None => cli,
        };
        let parse_addr = |s: &str| {
            s.parse::<SocketAddr>()
                .expect("default address literal is valid")
        };
        let (als_tls, als_peers) = resolve_als_tls(&opts)?;
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let cfg = ServeConfig {
            als_addr: opts
                .als_addr
                .unwrap_or_else(|| parse_addr(DEFAULT_ALS_ADDR)),
            admin_addr: opts
                .admin_addr
                .unwrap_or_else(|| parse_addr(DEFAULT_ADMIN_ADDR)),
            data_dir: opts
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
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
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
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
fn check_env_names(names: impl Iterator<Item = String>) -> Result<(), ConfigError> {
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
    for name in names {
        if name.starts_with("MESHAUDIT_") && !known.contains(&name) {
            return Err(ConfigError::UnknownEnv {
                name,
                known: known.join(", "),
            });
        }
    }
    Ok(())
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

    #[test]
    fn unknown_env_var_is_refused() {
        let err =
            check_env_names(["MESHAUDIT_DATA_DIRR".to_owned()].into_iter()).expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("MESHAUDIT_DATA_DIRR") && msg.contains("MESHAUDIT_DATA_DIR"),
            "{msg}"
        );
        check_env_names(["MESHAUDIT_DATA_DIR".to_owned(), "PATH".to_owned()].into_iter())
            .expect("known");
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
