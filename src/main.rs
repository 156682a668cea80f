//! The `meshaudit` binary: parse, validate, run. Errors end here, with context, via anyhow.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use meshaudit::config::{ServeConfig, ServeOptions};
use meshaudit::loadgen::LoadgenOptions;
use meshaudit::store::postgres::url::DatabaseUrl;

#[derive(Parser)]
#[command(
    name = "meshaudit",
    version,
    about = "Identity-tagged audit trail for an Istio service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the collector: Envoy gRPC Access Log Service in, audit records out to Parquet
    /// (and Postgres, with --database-url).
    Serve(ServeOptions),
    /// Stream generated Istio-shaped ALS entries at a collector; prints what was sent as JSON.
    Loadgen(LoadgenOptions),
    /// Create or upgrade the Postgres schema (table audit_records and its partitions).
    Migrate {
        /// postgres://USER:PASSWORD@HOST:PORT/DATABASE; the role must be able to create tables.
        #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
        database_url: DatabaseUrl,
    },
    /// Write an access report for SOC 2 auditors (HTML, CSV, JSON and a SHA-256 manifest) over
    /// a time range, from Postgres (--database-url) or the Parquet files (--data-dir).
    Report(meshaudit::report::ReportOptions),
    /// Check stored records against their signed digests: reports every record or file
    /// modified, deleted, inserted or reordered, broken chains and bad signatures. Exit 0: all
    /// verified (or an empty store); 1: findings; 2: could not verify, or nothing to verify.
    Verify(meshaudit::verify::VerifyOptions),
    /// Print the public key of the digest signing key (PEM), for `meshaudit verify --public-key`.
    PublicKey {
        /// The signing key [default: DATA_DIR/_keys/digest-signing-key.pem].
        #[arg(long, value_name = "FILE")]
        signing_key: Option<PathBuf>,
        /// The collector's data dir, to find the default signing key.
        #[arg(long, value_name = "DIR", default_value = meshaudit::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Write the public key to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Create the signing key (mode 0600) if it does not exist yet.
        #[arg(long)]
        generate: bool,
    },
    /// The directory snapshot (--directory FILE of serve and report).
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// In-process ceilings of join and Parquet encoding on one core (used by scripts/bench).
    #[command(hide = true)]
    BenchCeilings(meshaudit::ceiling::CeilingOptions),
    /// Benchmark hook (issue #6): rows/s of the Postgres sink's write path against a raw binary
    /// COPY of the same synthetic rows, in a throwaway schema. Prints one JSON object.
    #[command(hide = true)]
    BenchPostgres {
        #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
        database_url: DatabaseUrl,
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        #[arg(long, default_value_t = 5000)]
        batch_rows: usize,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Write the snapshot from Microsoft Graph (users, groups, service principals and managed
    /// identities), atomically; later runs fetch only changes (delta queries). Prints a JSON
    /// summary. A failed run leaves the last good snapshot in place.
    Sync(meshaudit::directory_sync::SyncOptions),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshaudit")
        .build()
        .context("cannot start the async runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(opts) => {
            let cfg = ServeConfig::resolve(opts).context("meshaudit serve: bad configuration")?;
            meshaudit::telemetry::init_logging(cfg.log_json);
            runtime()?
                .block_on(meshaudit::serve::run(cfg))
                .context("meshaudit serve failed")?;
        }
        Command::Migrate { database_url } => {
            meshaudit::telemetry::init_logging(false);
            let (before, after) = runtime()?
                .block_on(meshaudit::store::postgres::migrate_url(&database_url))
                .context("meshaudit migrate failed")?;
            match before {
                Some(v) if v == after => println!("schema is up to date (version {after})"),
                Some(v) => println!("schema migrated from version {v} to {after}"),
                None => println!("schema created (version {after})"),
            }
        }
        Command::Verify(opts) => {
            let report = match runtime()?.block_on(meshaudit::verify::run(&opts)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("meshaudit verify: cannot verify: {e}");
                    std::process::exit(2);
                }
            };
            if opts.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.human());
            }
            let code = report.verdict.exit_code();
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::PublicKey {
            signing_key,
            data_dir,
            out,
            generate,
        } => {
            use meshaudit::store::digest::{key::SigningKey, DEFAULT_KEY_PATH};
            meshaudit::telemetry::init_logging(false);
            let path = signing_key.unwrap_or_else(|| data_dir.join(DEFAULT_KEY_PATH));
            let key = if generate {
                SigningKey::load_or_generate(&path).map(|(k, _)| k)
            } else {
                SigningKey::load(&path)
            }
            .with_context(|| format!("meshaudit public-key: reading {}", path.display()))?;
            let pem = key.public().to_pem();
            match out {
                Some(file) => {
                    std::fs::write(&file, &pem)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    eprintln!(
                        "wrote the public key {} to {}",
                        key.public().fingerprint(),
                        file.display()
                    );
                }
                None => print!("{pem}"),
            }
        }
        Command::BenchPostgres {
            database_url,
            rows,
            batch_rows,
        } => {
            let report = runtime()?
                .block_on(meshaudit::store::postgres::bench::run(
                    &database_url,
                    rows,
                    batch_rows,
                ))
                .context("meshaudit bench-postgres failed")?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Loadgen(opts) => {
            meshaudit::telemetry::init_logging(false);
            let report = runtime()?
                .block_on(meshaudit::loadgen::run(&opts))
                .context("meshaudit loadgen failed")?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Report(opts) => {
            meshaudit::telemetry::init_logging(false);
            let summary = runtime()?
                .block_on(meshaudit::report::run(opts))
                .context("meshaudit report failed")?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Directory(DirectoryCommand::Sync(opts)) => {
            meshaudit::telemetry::init_logging(false);
            let summary = runtime()?
                .block_on(meshaudit::directory_sync::run(&opts))
                .context("meshaudit directory sync failed")?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::BenchCeilings(opts) => {
            let ceilings =
                meshaudit::ceiling::run(&opts).context("meshaudit bench-ceilings failed")?;
            println!("{}", serde_json::to_string(&ceilings)?);
        }
    }
    Ok(())
}
