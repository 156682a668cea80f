//! The `meshaudit` binary: parse, validate, run. Errors end here, with context, via anyhow.

use anyhow::Context;
use clap::{Parser, Subcommand};

use meshaudit::config::{ServeConfig, ServeOptions};

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

#[derive(Subcommand)]
enum Command {
    /// Run the collector: Envoy gRPC Access Log Service in, audit records out to Parquet.
    Serve(ServeOptions),
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
    }
    Ok(())
}
