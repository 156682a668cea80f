//! `meshaudit bench-ceilings` (hidden; run by scripts/bench): what one core can do in-process,
//! with no network and no disk, on the load generator's corpus. These are the ceilings the
//! end-to-end figures are compared with:
//!
//! - `join`: decode StreamAccessLogsMessages (subset types) and join every entry into a record;
//! - `spool_encode`: those records encoded into spool frames (one per ALS message);
//! - `digest`: the canonical encoding and SHA-256 of each record (tamper evidence);
//! - `parquet_encode`: Arrow batches plus zstd Parquet encoding of those records, into memory,
//!   with the collector's own writer settings.
//!
//! Each runs on the calling thread for at least `--seconds` and reports records per second and
//! CPU microseconds per record (thread CPU time, so other load on the machine does not count).

use std::time::{Duration, Instant};

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use prost::Message;
use serde::Serialize;
use thiserror::Error;

use crate::ingest::wire::stream_access_logs_message::LogEntries;
use crate::ingest::wire::{Identifier, Node, StreamAccessLogsMessage};
use crate::join::{JoinError, Joiner, StreamContext};
use crate::loadgen::corpus::{Corpus, CorpusSpec};
use crate::record::id::EntryType;
use crate::record::{arrow as record_arrow, AuditRecord};
use crate::store::digest::canonical::Encoder;
use crate::store::spool::frame;

#[derive(Debug, Clone, clap::Args)]
pub struct CeilingOptions {
    /// Minimum measuring time per ceiling, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Distinct tokens in the corpus.
    #[arg(long, default_value_t = 1000)]
    pub tokens: usize,
    /// Rows per Parquet row group (the collector's default).
    #[arg(long, default_value_t = 16_384)]
    pub row_group_rows: usize,
    /// zstd level (the collector's default).
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
}

#[derive(Debug, Error)]
pub enum CeilingError {
    #[error("corpus message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("parquet encoding failed: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow batch failed: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

#[derive(Debug, Serialize)]
pub struct Ceiling {
    pub records: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub cpu_us_per_record: f64,
}

#[derive(Debug, Serialize)]
pub struct Ceilings {
    pub join: Ceiling,
    /// Encoding records into spool frames (what the ingest task does before handing them over).
    pub spool_encode: Ceiling,
    /// The canonical encoding and SHA-256 of each record (tamper evidence; once per record,
    /// shared by the sinks).
    pub digest: Ceiling,
    pub parquet_encode: Ceiling,
    pub parquet_bytes_per_record: f64,
}

pub fn run(opts: &CeilingOptions) -> Result<Ceilings, CeilingError> {
    let corpus = Corpus::generate(&CorpusSpec {
        tokens: opts.tokens,
        deny_ratio: 0.05,
        seed: 11,
        now_unix: 1_772_446_504,
    });
    let messages: Vec<Bytes> = corpus
        .http
        .iter()
        .chain(corpus.tcp.iter())
        .map(|m| m.bytes.clone())
        .collect();
    let ctx = StreamContext::from_identifier(&Identifier {
        node: Some(Node {
            id: Bytes::from_static(
                b"sidecar~10.1.2.3~checkout-7d9f.orders~orders.svc.cluster.local",
            ),
            cluster: Bytes::from_static(b"checkout.orders"),
        }),
        log_name: Bytes::from_static(b"http_envoy_accesslog"),
    });
    let joiner = Joiner::default();
    let min = Duration::from_secs_f64(opts.seconds);

    // (a) decode + join.
    let mut records: Vec<AuditRecord> = Vec::new();
    let (mut n, started, cpu0) = (0u64, Instant::now(), thread_cpu());
    while started.elapsed() < min {
        for m in &messages {
            let msg = StreamAccessLogsMessage::decode(m.clone())?;
            let (kind, entries) = match &msg.log_entries {
                Some(LogEntries::HttpLogs(h)) => (EntryType::Http, &h.log_entry),
                Some(LogEntries::TcpLogs(t)) => (EntryType::Tcp, &t.log_entry),
                None => continue,
            };
            for e in entries {
                let rec = joiner.join(&ctx, kind, e, 1_772_446_505_000_000)?;
                if records.len() < 50_000 {
                    records.push(rec);
                }
                n += 1;
            }
        }
    }
    let join = ceiling(n, started, cpu0);

    // Spool frames of about one ALS message's records each (the loadgen corpus: ~6 entries).
    let (mut n, started, cpu0) = (0u64, Instant::now(), thread_cpu());
    while started.elapsed() < min {
        for chunk in records.chunks(6) {
            std::hint::black_box(frame::encode(chunk));
            n += chunk.len() as u64;
        }
    }
    let spool_encode = ceiling(n, started, cpu0);

    // Tamper evidence: one canonical hash per record.
    let mut enc = Encoder::new();
    let (mut n, started, cpu0) = (0u64, Instant::now(), thread_cpu());
    while started.elapsed() < min {
        for r in &records {
            std::hint::black_box(enc.record(r));
        }
        n += records.len() as u64;
    }
    let digest = ceiling(n, started, cpu0);

    // (b) Arrow + Parquet encoding of the same records, in row groups like the sink's.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(opts.zstd_level)?))
        .set_max_row_group_row_count(Some(opts.row_group_rows))
        .build();
    let (mut n, mut bytes, started, cpu0) = (0u64, 0u64, Instant::now(), thread_cpu());
    while started.elapsed() < min {
        let mut w = ArrowWriter::try_new(Vec::new(), record_arrow::schema(), Some(props.clone()))?;
        for chunk in records.chunks(4096) {
            w.write(&record_arrow::to_record_batch(chunk)?)?;
        }
        bytes += w.into_inner()?.len() as u64;
        n += records.len() as u64;
    }
    let parquet_encode = ceiling(n, started, cpu0);
    Ok(Ceilings {
        join,
        spool_encode,
        digest,
        parquet_encode,
        parquet_bytes_per_record: bytes as f64 / n.max(1) as f64,
    })
}

fn ceiling(records: u64, started: Instant, cpu0: Duration) -> Ceiling {
    let seconds = started.elapsed().as_secs_f64();
    let cpu = thread_cpu().saturating_sub(cpu0).as_secs_f64();
    Ceiling {
        records,
        seconds,
        records_per_sec: records as f64 / seconds,
        cpu_us_per_record: cpu * 1e6 / records.max(1) as f64,
    }
}

/// CPU time of the calling thread, from /proc (Linux); zero where unavailable.
fn thread_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th there.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux for /proc accounting.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
