//! The `meshaudit` binary: parse, validate, run. Errors end here, with context, via anyhow.

use anyhow::Context;
use clap::{Parser, Subcommand};

use meshaudit::config::{ServeConfig, ServeOptions};
use meshaudit::loadgen::LoadgenOptions;

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

// Parsed once at start-up: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the collector: Envoy gRPC Access Log Service in, audit records out to Parquet.
    Serve(ServeOptions),
    /// Stream generated Istio-shaped ALS entries at a collector; prints what was sent as JSON.
    Loadgen(LoadgenOptions),
    /// In-process ceilings of join and Parquet encoding on one core (used by scripts/bench).
    #[command(hide = true)]
    BenchCeilings(meshaudit::ceiling::CeilingOptions),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(opts) => {
            let cfg = ServeConfig::resolve(opts).context("meshaudit serve: bad configuration")?;
            meshaudit::telemetry::init_logging(cfg.log_json);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("meshaudit")
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(meshaudit::serve::run(cfg))
                .context("meshaudit serve failed")?;
        }
        Command::Loadgen(opts) => {
            meshaudit::telemetry::init_logging(false);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("meshaudit-loadgen")
                .build()
                .context("cannot start the async runtime")?;
            let report = rt
                .block_on(meshaudit::loadgen::run(&opts))
                .context("meshaudit loadgen failed")?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::BenchCeilings(opts) => {
            let ceilings =
                meshaudit::ceiling::run(&opts).context("meshaudit bench-ceilings failed")?;
            println!("{}", serde_json::to_string(&ceilings)?);
        }
    }
    Ok(())
}
