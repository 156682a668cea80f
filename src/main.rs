//! The `meshaudit` binary: parse, validate, run. Errors end here, with context, via anyhow.

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
        Command::BenchCeilings(opts) => {
            let ceilings =
                meshaudit::ceiling::run(&opts).context("meshaudit bench-ceilings failed")?;
            println!("{}", serde_json::to_string(&ceilings)?);
        }
    }
    Ok(())
}
