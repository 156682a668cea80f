//! `meshaudit serve`: builds every component from a validated [`ServeConfig`], runs them, and
//! drains on SIGTERM/SIGINT.
//!
//! Order matters: sinks are opened and listeners bound before the collector reports ready, so a
//! bad data dir or a taken port fails at start-up with a clear message. On a signal: readiness
//! drops, every ALS stream ends with UNAVAILABLE (Envoy reconnects to another replica), the
//! listener closes, the spool takes its last batches, and every sink drains what is spooled
//! within the shutdown deadline; what a sink could not take (Postgres down) stays in the spool
//! and is delivered at the next start. The exit is 0 either way: nothing accepted is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, AdminTimeouts};
use crate::config::ServeConfig;
use crate::ingest::conn::{self, ConnLimits, OpenFiles};
use crate::ingest::limits::StreamLimits;
use crate::ingest::otlp::{ExportHandler, OtlpServer};
use crate::ingest::service::{AlsServer, StreamHandler};
use crate::join::identity::{IdentityError, IdentityResolver};
use crate::join::redact::Redactor;
use crate::join::Joiner;
use crate::store::digest::files::ParquetChain;
use crate::store::digest::{DigestError, Signer};
use crate::store::metrics::SinkId;
use crate::store::object::ObjectTarget;
use crate::store::parquet::{ParquetConfig, ParquetError, ParquetSink};
use crate::store::pipeline;
use crate::store::postgres::{PgError, PostgresSink};
use crate::store::spool::{Spool, SpoolConfig, SpoolError};
use crate::telemetry::{self, Metrics};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Object(#[from] crate::store::object::ObjectError),
    #[error("cannot listen on {what} {addr}: {source}. Fix: choose a free port with {flag}")]
    Bind {
        what: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start OpenTelemetry export: {0}. Fix: check OTEL_EXPORTER_OTLP_ENDPOINT")]
    Otel(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("the ALS server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

pub async fn run(cfg: ServeConfig) -> Result<(), ServeError> {
    let metrics = Metrics::new();
    // Before anything is opened: every connection, file and socket draws on this limit.
    let open_files = conn::raise_open_files_limit();
    let max_connections = als_connection_bound(&cfg, open_files, &metrics);
    let otel = telemetry::init_otel(&metrics)?;
    // Before anything is opened: a bad directory snapshot fails start-up at once.
    let identity = IdentityResolver::new(&cfg.identity, Arc::clone(&metrics))?;

    let sink = ParquetSink::new(
        ParquetConfig {
            data_dir: cfg.data_dir.clone(),
            max_file_bytes: cfg.parquet_max_file_bytes,
            max_file_age: cfg.parquet_max_file_age,
            row_group_rows: cfg.parquet_row_group_rows,
            zstd_level: cfg.parquet_zstd_level,
        },
        Arc::clone(&metrics),
    )?;
    let mut sinks = vec![SinkId::Parquet];
    if cfg.postgres.is_some() {
        sinks.push(SinkId::Postgres);
    }
    let (spool, appender) = Spool::open(
        SpoolConfig {
            dir: cfg.spool_dir.clone(),
            max_bytes: cfg.spool_max_bytes,
            segment_bytes: cfg.spool_segment_bytes,
            fsync: cfg.spool_fsync,
            queue_batches: cfg.buffer_messages,
            sinks: sinks.clone(),
        },
        Arc::clone(&metrics.store),
        tokio::runtime::Handle::current(),
    )?;
    // The spool dir exists now (Spool::open creates it).
    crate::store::disk::warn_if_bound_exceeds_free_space(&cfg.spool_dir, cfg.spool_max_bytes);
    // Tamper evidence (docs/tamper-evidence.md): one signed digest chain per sink. The instance
    // id lives in the spool directory, which this process now holds the lock of.
    let signer = Signer::start(&cfg.signing_key, &cfg.spool_dir)?;
    let sink = sink.with_digests(ParquetChain::open(&cfg.data_dir, signer.clone())?);
    let postgres = match &cfg.postgres {
        Some(pg) => Some((
            PostgresSink::start_signed(pg, Arc::clone(&metrics.store), signer.clone()).await?,
            cfg.postgres_batch_rows,
        )),
        None => None,
    };
    let object = match &cfg.parquet_url {
        Some(url) => {
            let o = ObjectTarget::from_url(url, &cfg.data_dir)?;
            o.check_writable().await?;
            info!(parquet_url = %o.shown(), "parquet files go to object storage; the data dir holds them only until the store confirmed each");
            Some(o)
        }
        None => None,
    };
    let pipeline = pipeline::start(
        spool,
        appender,
        (sink, object),
        postgres,
        cfg.parquet_row_group_rows,
        Arc::clone(&metrics),
        tokio::runtime::Handle::current(),
    )
    .map_err(ServeError::Thread)?;

    let bind = |what, flag, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                what,
                flag,
                addr,
                source,
            })
    };
    let als_listener = bind("the ALS address", "--als-addr", cfg.als_addr).await?;
    let admin_listener = bind("the admin address", "--admin-addr", cfg.admin_addr).await?;
    let als_addr = als_listener.local_addr().unwrap_or(cfg.als_addr);
    let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin_addr);
    let otlp_listener = match cfg.otlp_addr {
        Some(addr) => Some(bind("the OTLP address", "--otlp-addr", addr).await?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let admin_task = {
        let state = AdminState {
            ready: Arc::clone(&ready),
            metrics: Arc::clone(&metrics),
            sinks,
        };
        tokio::spawn(admin::serve(
            admin_listener,
            admin::router(state),
            AdminTimeouts {
                header_read: cfg.hardening.admin_header_read_timeout,
                idle: cfg.hardening.admin_idle_timeout,
            },
            Arc::clone(&metrics),
            shutdown.clone(),
        ))
    };

    // Signing keys are loaded (bounded wait) before the collector reports ready.
    identity.start(&shutdown).await;
    let handler = Arc::new(StreamHandler {
        joiner: Arc::new(
            Joiner::new(Redactor::new(cfg.redact_params.iter().map(String::as_str)))
                .with_identity(identity)
                .with_start_window(cfg.hardening.start_time_window, Arc::clone(&metrics)),
        ),
        out: pipeline.appender.clone(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        peers: cfg.als_peers.clone(),
        limits: StreamLimits::new(
            cfg.als_max_streams,
            cfg.als_stream_idle_timeout,
            cfg.als_max_stream_age,
        ),
    });
    // The OTLP receiver shares the ALS listener's settings, peer check, join and spool.
    let otlp_handler = Arc::new(ExportHandler {
        joiner: Arc::clone(&handler.joiner),
        out: pipeline.appender.clone(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        peers: cfg.als_peers.clone(),
        limits: StreamLimits::new(cfg.als_max_streams, None, None),
    });
    // One server configuration for both listeners.
    let server = || {
        tonic::transport::Server::builder()
            // Per connection, HTTP/2 itself makes the client queue streams over the limit.
            .max_concurrent_streams(cfg.als_max_streams_per_connection)
            // A connection that receives nothing for the interval is pinged; one that does not
            // answer within the timeout (a dead or fake peer) is closed and frees its slot.
            .http2_keepalive_interval(cfg.hardening.als_keepalive_interval)
            .http2_keepalive_timeout(Some(cfg.hardening.als_keepalive_timeout))
    };
    let otlp_router = server().add_service(OtlpServer::new(otlp_handler, cfg.max_message_bytes));
    let router = server().add_service(AlsServer::new(handler, cfg.max_message_bytes));
    let stop = shutdown.clone().cancelled_owned();
    // Both listeners go through one accept loop: the connection bound, the handshake/preface
    // deadline and the out-of-files accounting (ingest::conn).
    let limits = ConnLimits::new(max_connections, cfg.hardening.als_handshake_timeout);
    // The OTLP listener takes its connections from the same budget (one `ConnLimits`).
    let otlp_task = otlp_listener.map(|listener| {
        let addr = listener.local_addr().ok();
        let stop = shutdown.clone().cancelled_owned();
        let task = match &cfg.als_tls {
            None => tokio::spawn(otlp_router.serve_with_incoming_shutdown(
                conn::incoming(
                    listener,
                    Arc::clone(&limits),
                    conn::Plain(Arc::clone(&metrics)),
                    Arc::clone(&metrics),
                    shutdown.clone(),
                ),
                stop,
            )),
            Some(tls) => tokio::spawn(otlp_router.serve_with_incoming_shutdown(
                conn::incoming(
                    listener,
                    Arc::clone(&limits),
                    tls.upgrade(Arc::clone(&metrics)),
                    Arc::clone(&metrics),
                    shutdown.clone(),
                ),
                stop,
            )),
        };
        (addr, task)
    });
    let server_task = match &cfg.als_tls {
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            conn::incoming(
                als_listener,
                limits,
                conn::Plain(Arc::clone(&metrics)),
                Arc::clone(&metrics),
                shutdown.clone(),
            ),
            stop,
        )),
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            conn::incoming(
                als_listener,
                limits,
                tls.upgrade(Arc::clone(&metrics)),
                Arc::clone(&metrics),
                shutdown.clone(),
            ),
            stop,
        )),
    };

    let term = sigterm();
    ready.store(true, Ordering::Release);
    info!(
        %als_addr,
        otlp_addr = ?otlp_task.as_ref().and_then(|(a, _)| *a),
        %admin_addr,
        data_dir = %cfg.data_dir.display(),
        spool_dir = %cfg.spool_dir.display(),
        spool_fsync = ?cfg.spool_fsync,
        postgres = cfg.postgres.as_ref().map(|p| p.url.to_string()),
        "meshaudit collector ready"
    );
    match &cfg.als_tls {
        None => {
            warn!(%als_addr, "ALS listener is plaintext (h2c); inside the mesh, Istio mTLS protects it")
        }
        Some(tls) if !tls.client_auth() => {
            warn!(%als_addr, "ALS listener uses TLS without client certificates: any client that can connect may write; set --als-tls-client-ca to require them")
        }
        Some(_) if !cfg.als_peers.has_allow_list() => {
            warn!(%als_addr, "ALS listener requires client certificates, but any certificate of the client CA may write; restrict with --als-allowed-spiffe-id or --als-allowed-trust-domain")
        }
        Some(_) => {
            info!(%als_addr, "ALS listener requires client certificates whose SPIFFE ID is on the allow-list")
        }
    }

    wait_for_signal(term).await;
    info!("shutting down: ending ALS streams and draining the sinks");
    ready.store(false, Ordering::Release);
    shutdown.cancel();

    let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout;
    match tokio::time::timeout_at(deadline, server_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => error!(error = %e, "ALS server ended with an error"),
        Ok(Err(e)) => error!(error = %e, "ALS server task failed"),
        Err(_) => error!("ALS server did not stop within the shutdown deadline"),
    }
    if let Some((_, task)) = otlp_task {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => error!(error = %e, "OTLP server ended with an error"),
            Ok(Err(e)) => error!(error = %e, "OTLP server task failed"),
            Err(_) => error!("OTLP server did not stop within the shutdown deadline"),
        }
    }
    // Accepted batches are in the spool whatever happens now; the drain only decides whether
    // the sinks have them before exit or at the next start.
    let drained = pipeline.drain(deadline).await;
    if !drained.complete {
        warn!(
            behind_bytes = drained.behind_bytes,
            "not every sink took everything before the shutdown deadline; the spool keeps the rest for the next start"
        );
    }
    let _ = admin_task.await;
    otel.shutdown();
    if drained.behind_bytes > 0 {
        warn!(
            records_in_spool = drained.behind_records,
            counted_all = drained.behind_records_exact,
            bytes_in_spool = drained.behind_bytes,
            parquet_records_written = metrics.parquet_records_written.load(Ordering::Relaxed),
            "meshaudit stopped with {}{} records in the spool that a sink has not taken; they will be delivered at the next start (keep the spool directory)",
            if drained.behind_records_exact { "" } else { "at least " },
            drained.behind_records,
        );
    } else {
        info!(
            records = metrics.parquet_records_written.load(Ordering::Relaxed),
            "meshaudit stopped cleanly"
        );
    }
    Ok(())
}

/// `als_max_connections`, capped by what the open-files limit leaves after the collector's own
/// files ([`conn::connection_budget`]); a cap is a WARN, since it means the configured number
/// would have run the process out of descriptors.
fn als_connection_bound(cfg: &ServeConfig, open_files: OpenFiles, metrics: &Metrics) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let wanted = cfg.hardening.als_max_connections;
    let bound = match conn::connection_budget(open_files) {
        Some(budget) if budget < wanted => {
            warn!(
                als_max_connections = wanted,
                open_files_limit = ?open_files.soft,
                used = budget,
                reserve = conn::FD_RESERVE,
                "the open-files limit (RLIMIT_NOFILE) allows fewer ALS connections than als_max_connections; raise the limit (ulimit -n, or the container runtime's nofile) to serve more"
            );
            budget
        }
        _ => wanted,
    };
    metrics.als_connections_limit.store(bound as u64, Relaxed);
    metrics
        .open_files_limit
        .store(open_files.soft.unwrap_or(0), Relaxed);
    info!(
        als_max_connections = bound,
        open_files_limit = ?open_files.soft,
        "ALS connection limit"
    );
    bound.max(1)
}

/// Installed before the collector reports ready: a SIGTERM that comes right after /readyz
/// answers 200 must drain, not kill the process with the default action.
fn sigterm() -> std::io::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::terminate())
}

async fn wait_for_signal(term: std::io::Result<tokio::signal::unix::Signal>) {
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => { if let Err(e) = r { warn!(error = %e, "cannot listen for SIGINT"); } }
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the collector");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
