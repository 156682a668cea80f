//! `meshaudit loadgen`: streams generated, Istio-shaped ALS entries at a collector, the way a
//! fleet of Envoys would: N concurrent `StreamAccessLogs` client streams spread over M HTTP/2
//! connections, the first message of each stream carrying its Identifier.
//!
//! The generator must never be the bottleneck: every message is encoded once, up front
//! ([`corpus`]), and sending one is a copy into the gRPC frame while overwriting each entry's
//! 12-character `stream_id` placeholder with a unique number (so every entry sent is a distinct
//! record). Without `--rate` each stream sends full ~16 KiB batches as fast as HTTP/2 flow
//! control lets it. With `--rate` each stream produces `rate / streams` entries per second and
//! sends them as Envoy's gRPC access logger does: buffered, flushed every
//! `--flush-interval-ms` (Envoy's `buffer_flush_interval`, 1 s) or as soon as the buffer holds
//! 16 KiB (`buffer_size_bytes`), whichever comes first. At a mesh's normal per-proxy rate a
//! message then carries one or a few entries, not a full batch.
//!
//! A stream carries HTTP and TCP messages mixed in the `--tcp-share` proportion (of entries).
//! Envoy keeps them on separate streams; mixing them here keeps the share exact for any number of
//! streams, and the collector reads each message's type on its own.
//!
//! What is counted as sent: a message handed to the HTTP/2 stream. A stream that ends with OK was
//! read to the end by the collector, so with `errors = 0` the collector accepted every entry
//! reported. `bytes` counts protobuf message bytes (without the 5-byte gRPC frame headers).

pub mod corpus;
pub mod otlp;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use serde::Serialize;
use thiserror::Error;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use corpus::{Corpus, CorpusSpec, PLACEHOLDER};

const METHOD_PATH: &str = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs";
/// Streams are numbered into the top bits of each entry's unique number.
pub const MAX_STREAMS: usize = 4096;
const STREAM_SHIFT: u32 = 36;

/// Options of `meshaudit loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenOptions {
    /// Collector ALS address.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// Concurrent StreamAccessLogs streams (Envoy opens about one per worker thread and logger).
    #[arg(long, value_name = "N")]
    pub streams: usize,
    /// HTTP/2 connections the streams are spread over (at most --streams).
    #[arg(long, value_name = "M")]
    pub connections: usize,
    /// How long to send, in seconds.
    #[arg(long, value_name = "S")]
    pub duration_secs: f64,
    /// Target entries per second over all streams [default: as fast as possible].
    #[arg(long, value_name = "RECORDS_PER_SEC")]
    pub rate: Option<f64>,
    /// With --rate: each stream flushes its buffered entries this often (Envoy's
    /// `buffer_flush_interval`), or sooner once they reach 16 KiB.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub flush_interval_ms: u64,
    /// Distinct fake bearer tokens in the logged authorization headers.
    #[arg(long, value_name = "POOL_SIZE", default_value_t = 1000)]
    pub tokens: usize,
    /// Share of entries denied by an authorizer, 0-1.
    #[arg(long, value_name = "R", default_value_t = 0.05)]
    pub deny_ratio: f64,
    /// Share of entries that are TCP entries, 0-1.
    #[arg(long, value_name = "R", default_value_t = 0.1)]
    pub tcp_share: f64,
    /// Raw-token run: sign every token of the pool with a fresh RSA key, write that key's JWKS
    /// to FILE (serve it to the collector as its --jwks-url), and leave the jwt_authn metadata
    /// out of the entries, so the collector verifies each bearer token itself.
    #[arg(long, value_name = "FILE")]
    pub raw_tokens_jwks_out: Option<std::path::PathBuf>,
    /// Seed of the generated corpus (same seed, same entries).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Send the same requests as OTLP logs (LogsService/Export, the attributes of
    /// docs/otlp-attributes.md) to --target, the collector's otlp_addr; each "stream" is then a
    /// sequence of unary Export calls, one per message.
    #[arg(long, default_value_t = false)]
    pub otlp: bool,
}

#[derive(Debug, Error)]
pub enum LoadgenError {
    #[error("invalid --{flag}: {problem}. Fix: {fix}")]
    Invalid {
        flag: &'static str,
        problem: String,
        fix: &'static str,
    },
    #[error("cannot connect to {target}: {source}. Fix: start the collector or correct --target")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
}

/// What was sent; printed as one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadgenReport {
    pub entries: u64,
    pub http_entries: u64,
    pub tcp_entries: u64,
    pub denied_entries: u64,
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub entries_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Streams that did not end with OK (connection lost, refused by the collector).
    pub errors: u64,
    pub streams: usize,
    pub connections: usize,
    /// Time spent generating and encoding the corpus before sending (not in `seconds`).
    pub generate_seconds: f64,
}

impl LoadgenOptions {
    fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |flag, problem: String, fix| Err(LoadgenError::Invalid { flag, problem, fix });
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return bad(
                "streams",
                format!("{} is out of range", self.streams),
                "use 1 to 4096 streams",
            );
        }
        if self.connections == 0 || self.connections > self.streams {
            return bad(
                "connections",
                format!("{} for {} streams", self.connections, self.streams),
                "use at least 1 and at most --streams connections",
            );
        }
        if !(self.duration_secs.is_finite() && self.duration_secs > 0.0) {
            return bad(
                "duration-secs",
                format!("{}", self.duration_secs),
                "give a positive number of seconds",
            );
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad(
                    "rate",
                    format!("{r}"),
                    "give a positive rate, or omit --rate for the maximum",
                );
            }
        }
        if self.flush_interval_ms == 0 || self.flush_interval_ms > 3_600_000 {
            return bad(
                "flush-interval-ms",
                format!("{}", self.flush_interval_ms),
                "use 1 to 3600000 milliseconds",
            );
        }
        if self.tokens == 0 || self.tokens > corpus::MAX_TOKENS {
            return bad(
                "tokens",
                format!("{} is out of range", self.tokens),
                "use 1 to 20000 tokens",
            );
        }
        for (flag, v) in [
            ("deny-ratio", self.deny_ratio),
            ("tcp-share", self.tcp_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(flag, format!("{v}"), "give a share between 0 and 1");
            }
        }
        Ok(())
    }
}

/// Per-stream counts, shared with the stream's body while tonic sends it.
#[derive(Debug, Default)]
struct Counters {
    http_entries: AtomicU64,
    tcp_entries: AtomicU64,
    denied_entries: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// Generates the corpus, connects, sends for the duration, and reports what was sent.
pub async fn run(opts: &LoadgenOptions) -> Result<LoadgenReport, LoadgenError> {
    opts.validate()?;
    let spec = CorpusSpec {
        tokens: opts.tokens,
        deny_ratio: opts.deny_ratio,
        seed: opts.seed,
        now_unix: chrono::Utc::now().timestamp(),
    };
    let generating = Instant::now();
    let jwks_out = opts.raw_tokens_jwks_out.clone();
    let corpus = tokio::task::spawn_blocking(move || match jwks_out {
        None => Ok(Corpus::generate(&spec)),
        Some(path) => {
            let signer = corpus::RawTokenSigner::generate().map_err(|e| LoadgenError::Invalid {
                flag: "raw-tokens-jwks-out",
                problem: format!("cannot generate an RSA key: {e}"),
                fix: "report this as a bug",
            })?;
            std::fs::write(&path, &signer.jwks).map_err(|e| LoadgenError::Invalid {
                flag: "raw-tokens-jwks-out",
                problem: format!("cannot write {}: {e}", path.display()),
                fix: "give a writable file path",
            })?;
            Ok(Corpus::generate_with(&spec, Some(&signer)))
        }
    })
    .await
    .map_err(|e| LoadgenError::Invalid {
        flag: "seed",
        problem: format!("corpus generation failed: {e}"),
        fix: "report this as a bug",
    })??;
    // Node ids carry a per-run nonce so that two runs never produce the same record ids.
    let nonce = chrono::Utc::now().timestamp_micros() as u64 & 0xff_ffff;
    let corpus = if opts.otlp {
        let node = format!("sidecar~198.51.100.1~loadgen-{nonce:06x}.shop~shop.svc.cluster.local");
        tokio::task::spawn_blocking(move || otlp::convert(&corpus, &node, "orders.shop"))
            .await
            .map_err(|e| LoadgenError::Invalid {
                flag: "otlp",
                problem: format!("corpus conversion failed: {e}"),
                fix: "report this as a bug",
            })?
    } else {
        corpus
    };
    let corpus = Arc::new(corpus);
    let generate_seconds = generating.elapsed().as_secs_f64();

    let endpoint = Endpoint::from_shared(format!("http://{}", opts.target))
        .map_err(|e| LoadgenError::Invalid {
            flag: "target",
            problem: e.to_string(),
            fix: "give HOST:PORT, e.g. 127.0.0.1:9000",
        })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20);
    let mut channels = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        // Each connect() opens its own HTTP/2 connection.
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|source| LoadgenError::Connect {
                    target: opts.target.clone(),
                    source,
                })?,
        );
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(opts.duration_secs);
    let per_stream_rate = opts.rate.map(|r| r / opts.streams as f64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut all = Vec::with_capacity(opts.streams);
    for s in 0..opts.streams {
        let counters = Arc::new(Counters::default());
        all.push(Arc::clone(&counters));
        let plan = StreamPlan {
            index: s,
            corpus: Arc::clone(&corpus),
            // OTLP requests name their proxy in every record: no stream identifier.
            identifier: if opts.otlp {
                Bytes::new()
            } else {
                corpus::identifier_prefix(
                    format!(
                        "sidecar~198.51.100.{}~loadgen-{nonce:06x}-{s}.shop~shop.svc.cluster.local",
                        s % 250 + 1
                    ),
                    "orders.shop".into(),
                    "http_envoy_accesslog",
                )
            },
            tcp_share: opts.tcp_share,
            per_stream_rate,
            // OTLP exporters batch differently; their pre-built requests are paced as they are.
            flush_interval: (!opts.otlp).then(|| Duration::from_millis(opts.flush_interval_ms)),
            deadline,
            counters,
        };
        let channel = channels[s % channels.len()].clone();
        if opts.otlp {
            tasks.spawn(send_exports(channel, plan));
        } else {
            tasks.spawn(send_stream(channel, plan));
        }
    }
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(status)) => {
                errors += 1;
                tracing::warn!(code = ?status.code(), error = %status.message(), "stream failed");
            }
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, "stream task failed");
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();

    let sum = |f: fn(&Counters) -> &AtomicU64| all.iter().map(|c| f(c).load(Relaxed)).sum();
    let http_entries: u64 = sum(|c| &c.http_entries);
    let tcp_entries: u64 = sum(|c| &c.tcp_entries);
    let bytes: u64 = sum(|c| &c.bytes);
    let entries = http_entries + tcp_entries;
    Ok(LoadgenReport {
        entries,
        http_entries,
        tcp_entries,
        denied_entries: sum(|c| &c.denied_entries),
        messages: sum(|c| &c.messages),
        bytes,
        seconds,
        entries_per_sec: entries as f64 / seconds,
        bytes_per_sec: bytes as f64 / seconds,
        errors,
        streams: opts.streams,
        connections: opts.connections,
        generate_seconds,
    })
}

/// Everything one stream needs to produce its messages.
struct StreamPlan {
    index: usize,
    corpus: Arc<Corpus>,
    identifier: Bytes,
    tcp_share: f64,
    per_stream_rate: Option<f64>,
    /// With a rate: Envoy-like buffering, flushed at this interval or at 16 KiB.
    flush_interval: Option<Duration>,
    deadline: Instant,
    counters: Arc<Counters>,
}

/// One message to send: which pre-encoded message, and the numbers its entries get.
struct Outgoing {
    corpus: Arc<Corpus>,
    tcp: bool,
    /// A pre-encoded message of `corpus.http`/`tcp`, or with `run` the first of `run` entries
    /// of `corpus.http_entries`/`tcp_entries` (wrapping around).
    index: usize,
    run: Option<usize>,
    identifier: Option<Bytes>,
    first_entry: u64,
}

/// The entries of one kind a paced stream has buffered since its last flush: `count` entries
/// of the corpus from `start`, the first being the kind's `first_seq`-th.
#[derive(Default)]
struct Buffered {
    start: usize,
    count: usize,
    bytes: usize,
    first_seq: u64,
}

/// The state of a stream's message sequence.
struct Cursor {
    plan: StreamPlan,
    next_http: usize,
    next_tcp: usize,
    http_sent: u64,
    tcp_sent: u64,
    identified: bool,
    started: Instant,
    /// Paced streams: when the flush timer fires next.
    next_tick: Instant,
    /// Paced streams: messages of the current flush not yet handed to the stream.
    pending: std::collections::VecDeque<Outgoing>,
    /// Paced streams: the HTTP and the TCP buffer.
    buffered: [Buffered; 2],
}

impl Cursor {
    fn new(plan: StreamPlan) -> Self {
        // Streams start at different places in the corpus, as different proxies would.
        let spread = |len: usize| plan.index.wrapping_mul(7919) % len.max(1);
        let started = Instant::now();
        // Proxies' flush timers are not in step: each stream's fires at its own phase.
        let phase = plan.flush_interval.map_or(Duration::ZERO, |i| {
            i.mul_f64((plan.index as f64 * 0.618_033_988_75).fract())
        });
        Cursor {
            next_tick: started + phase,
            pending: std::collections::VecDeque::new(),
            buffered: Default::default(),
            next_http: spread(plan.corpus.http.len()),
            next_tcp: spread(plan.corpus.tcp.len()),
            http_sent: 0,
            tcp_sent: 0,
            identified: false,
            started,
            plan,
        }
    }

    /// TCP when TCP entries are behind their share (so the share holds at any moment).
    fn next_is_tcp(&self) -> bool {
        let share = self.plan.tcp_share;
        let total = (self.http_sent + self.tcp_sent) as f64;
        if self.plan.corpus.tcp.is_empty() || share <= 0.0 {
            return false;
        }
        self.plan.corpus.http.is_empty() || share >= 1.0 || self.tcp_sent as f64 <= share * total
    }

    async fn next(&mut self) -> Option<Outgoing> {
        if let (Some(rate), Some(interval)) = (self.plan.per_stream_rate, self.plan.flush_interval)
        {
            if self.plan.corpus.http_entries.is_empty() && self.plan.corpus.tcp_entries.is_empty() {
                return None;
            }
            return self.next_buffered(rate, interval).await;
        }
        let sent = self.http_sent + self.tcp_sent;
        if let Some(rate) = self.plan.per_stream_rate {
            let due = self.started + Duration::from_secs_f64(sent as f64 / rate);
            if due >= self.plan.deadline {
                return None;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= self.plan.deadline {
            return None;
        }
        let tcp = self.next_is_tcp();
        let (pool, next) = if tcp {
            (&self.plan.corpus.tcp, &mut self.next_tcp)
        } else {
            (&self.plan.corpus.http, &mut self.next_http)
        };
        let index = *next;
        let msg = pool.get(index)?;
        *next = (index + 1) % pool.len();
        let entries = u64::from(msg.entries());
        let identifier = (!self.identified).then(|| self.plan.identifier.clone());
        self.identified = true;
        let c = &self.plan.counters;
        c.messages.fetch_add(1, Relaxed);
        c.bytes.fetch_add(
            (msg.bytes.len() + identifier.as_ref().map_or(0, Bytes::len)) as u64,
            Relaxed,
        );
        c.denied_entries.fetch_add(u64::from(msg.denied), Relaxed);
        if tcp {
            c.tcp_entries.fetch_add(entries, Relaxed);
            self.tcp_sent += entries;
        } else {
            c.http_entries.fetch_add(entries, Relaxed);
            self.http_sent += entries;
        }
        Some(Outgoing {
            corpus: Arc::clone(&self.plan.corpus),
            tcp,
            index,
            run: None,
            identifier,
            first_entry: ((self.plan.index as u64) << STREAM_SHIFT) | sent,
        })
    }

    /// Envoy's buffering: entry `i` is produced at `started + i / rate` into its kind's buffer
    /// (Envoy's HTTP and TCP loggers buffer apart); a buffer is flushed as one message as soon
    /// as it holds 16 KiB, and both are flushed when the timer fires (every `interval`; nothing
    /// is sent for an empty buffer) and at the deadline.
    async fn next_buffered(&mut self, rate: f64, interval: Duration) -> Option<Outgoing> {
        loop {
            if let Some(out) = self.pending.pop_front() {
                return Some(out);
            }
            let n = self.http_sent + self.tcp_sent;
            let due = self.started + Duration::from_secs_f64(n as f64 / rate);
            if due < self.plan.deadline && due <= self.next_tick {
                let tcp = self.next_is_tcp();
                let (pool, next, sent) = if tcp {
                    (
                        &self.plan.corpus.tcp_entries,
                        &mut self.next_tcp,
                        &mut self.tcp_sent,
                    )
                } else {
                    (
                        &self.plan.corpus.http_entries,
                        &mut self.next_http,
                        &mut self.http_sent,
                    )
                };
                let entry = pool.get(*next)?;
                let buf = &mut self.buffered[usize::from(tcp)];
                if buf.count == 0 {
                    buf.start = *next;
                    buf.first_seq = *sent;
                }
                buf.count += 1;
                buf.bytes += entry.bytes.len();
                *next = (*next + 1) % pool.len();
                *sent += 1;
                if buf.bytes >= corpus::ENVOY_BUFFER_BYTES {
                    tokio::time::sleep_until(due.into()).await;
                    self.flush(tcp);
                }
                continue;
            }
            let flush_at = self.next_tick.min(self.plan.deadline);
            let empty = self.buffered.iter().all(|b| b.count == 0);
            if empty && self.next_tick >= self.plan.deadline {
                return None;
            }
            tokio::time::sleep_until(flush_at.into()).await;
            if flush_at == self.next_tick {
                self.next_tick += interval;
            }
            self.flush(false);
            self.flush(true);
        }
    }

    /// Queues the buffered entries of one kind as a message.
    fn flush(&mut self, tcp: bool) {
        let buf = std::mem::take(&mut self.buffered[usize::from(tcp)]);
        if buf.count > 0 {
            // Numbers: stream index on top, then the kind, then the kind's own sequence.
            let first_entry = ((self.plan.index as u64) << STREAM_SHIFT)
                | (u64::from(tcp) << (STREAM_SHIFT - 1))
                | buf.first_seq;
            let out = self.run_message(tcp, buf.start, buf.count, first_entry);
            self.pending.push_back(out);
        }
    }

    /// The message of `count` entries from `start` (counted as sent here).
    fn run_message(&mut self, tcp: bool, start: usize, count: usize, first_entry: u64) -> Outgoing {
        let pool = if tcp {
            &self.plan.corpus.tcp_entries
        } else {
            &self.plan.corpus.http_entries
        };
        let mut bytes = 0;
        let mut denied = 0;
        for i in 0..count {
            let e = &pool[(start + i) % pool.len()];
            bytes += e.bytes.len();
            denied += u64::from(e.denied);
        }
        let identifier = (!self.identified).then(|| self.plan.identifier.clone());
        self.identified = true;
        let c = &self.plan.counters;
        c.messages.fetch_add(1, Relaxed);
        c.bytes.fetch_add(
            (run_header_len(bytes) + bytes + identifier.as_ref().map_or(0, Bytes::len)) as u64,
            Relaxed,
        );
        c.denied_entries.fetch_add(denied, Relaxed);
        let entries = if tcp { &c.tcp_entries } else { &c.http_entries };
        entries.fetch_add(count as u64, Relaxed);
        Outgoing {
            corpus: Arc::clone(&self.plan.corpus),
            tcp,
            index: start,
            run: Some(count),
            identifier,
            first_entry,
        }
    }
}

/// `StreamAccessLogsMessage` fields `http_logs` (2) and `tcp_logs` (3), length-delimited.
const HTTP_LOGS_TAG: u8 = 2 << 3 | 2;
const TCP_LOGS_TAG: u8 = 3 << 3 | 2;

fn run_header_len(body: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(body as u64)
}

async fn send_stream(channel: Channel, plan: StreamPlan) -> Result<(), Status> {
    let cursor = Cursor::new(plan);
    let body = futures_util::stream::unfold(cursor, |mut c| async move {
        let item = c.next().await?;
        Some((item, c))
    });
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    grpc.client_streaming(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(METHOD_PATH),
        RawCodec,
    )
    .await
    .map(|_| ())
}

/// `--otlp`: one unary Export per message, in sequence (a "stream" is one sender's calls).
async fn send_exports(channel: Channel, plan: StreamPlan) -> Result<(), Status> {
    const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    let mut cursor = Cursor::new(plan);
    let mut grpc = tonic::client::Grpc::new(channel);
    while let Some(item) = cursor.next().await {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        grpc.unary(
            tonic::Request::new(item),
            http::uri::PathAndQuery::from_static(EXPORT_PATH),
            RawCodec,
        )
        .await?;
    }
    Ok(())
}

/// Writes pre-encoded messages as they are, patching each entry's placeholder on the way.
#[derive(Debug, Default, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Outgoing;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if let Some(count) = item.run {
            if let Some(id) = &item.identifier {
                buf.put_slice(id);
            }
            write_run(
                &item.corpus,
                item.tcp,
                item.index,
                count,
                item.first_entry,
                buf,
            );
            return Ok(());
        }
        let pool = if item.tcp {
            &item.corpus.tcp
        } else {
            &item.corpus.http
        };
        let msg = pool
            .get(item.index)
            .ok_or_else(|| Status::internal("loadgen: message index out of range"))?;
        if let Some(id) = &item.identifier {
            buf.put_slice(id);
        }
        write_patched(&msg.bytes, &msg.patches, item.first_entry, buf);
        Ok(())
    }
}

/// A message of `count` single entries from `start`, entry `first + i` numbered as in
/// [`write_patched`].
fn write_run(
    corpus: &Corpus,
    tcp: bool,
    start: usize,
    count: usize,
    first: u64,
    out: &mut impl BufMut,
) {
    let (pool, tag) = if tcp {
        (&corpus.tcp_entries, TCP_LOGS_TAG)
    } else {
        (&corpus.http_entries, HTTP_LOGS_TAG)
    };
    if pool.is_empty() {
        return;
    }
    let entry = |i: usize| &pool[(start + i) % pool.len()];
    let body: usize = (0..count).map(|i| entry(i).bytes.len()).sum();
    out.put_u8(tag);
    prost::encoding::encode_varint(body as u64, out);
    for i in 0..count {
        let e = entry(i);
        write_patched(&e.bytes, &[e.patch], first + i as u64, out);
    }
}

/// Copies `bytes` into `out`, writing entry `first + i` as 12 hex digits over placeholder `i`.
fn write_patched(bytes: &[u8], patches: &[usize], first: u64, out: &mut impl BufMut) {
    let mut at = 0;
    for (i, &offset) in patches.iter().enumerate() {
        out.put_slice(&bytes[at..offset]);
        out.put_slice(&hex12(first + i as u64));
        at = offset + PLACEHOLDER.len();
    }
    out.put_slice(&bytes[at..]);
}

fn hex12(v: u64) -> [u8; 12] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 12];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (4 * (11 - i))) & 0xf) as usize];
    }
    out
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = Status;

    /// The response is the empty `StreamAccessLogsResponse`; nothing to read.
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        use bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LoadgenOptions {
        LoadgenOptions {
            target: "127.0.0.1:9000".into(),
            streams: 4,
            connections: 2,
            duration_secs: 1.0,
            rate: None,
            tokens: 10,
            deny_ratio: 0.05,
            tcp_share: 0.1,
            raw_tokens_jwks_out: None,
            seed: 1,
            otlp: false,
            flush_interval_ms: 1000,
        }
    }

    #[test]
    fn options_are_validated_with_the_flag_named() {
        assert!(opts().validate().is_ok());
        type Break = fn(&mut LoadgenOptions);
        let cases: [(Break, &str); 9] = [
            (|o| o.flush_interval_ms = 0, "--flush-interval-ms"),
            (|o| o.streams = 0, "--streams"),
            (|o| o.streams = MAX_STREAMS + 1, "--streams"),
            (|o| o.connections = 5, "--connections"),
            (|o| o.duration_secs = 0.0, "--duration-secs"),
            (|o| o.rate = Some(f64::NAN), "--rate"),
            (|o| o.tokens = corpus::MAX_TOKENS + 1, "--tokens"),
            (|o| o.deny_ratio = 1.5, "--deny-ratio"),
            (|o| o.tcp_share = -0.1, "--tcp-share"),
        ];
        for (break_it, flag) in cases {
            let mut o = opts();
            break_it(&mut o);
            let msg = o.validate().expect_err(flag).to_string();
            assert!(msg.starts_with(&format!("invalid {flag}:")), "{msg}");
            assert!(msg.contains("Fix:"), "{msg}");
        }
    }

    #[test]
    fn placeholders_become_distinct_hex_numbers() {
        assert_eq!(&hex12(0), b"000000000000");
        assert_eq!(&hex12(0xabc_0000_0001), b"0abc00000001");
        let msg = b"a############b############c";
        let mut out = Vec::new();
        write_patched(msg, &[1, 14], (3 << STREAM_SHIFT) | 9, &mut out);
        assert_eq!(out, b"a003000000009b00300000000ac");
    }

    fn plan(corpus: Arc<Corpus>, tcp_share: f64, index: usize) -> StreamPlan {
        StreamPlan {
            index,
            corpus,
            identifier: Bytes::from_static(b"ID"),
            tcp_share,
            per_stream_rate: None,
            flush_interval: None,
            deadline: Instant::now() + Duration::from_secs(600),
            counters: Arc::new(Counters::default()),
        }
    }

    #[tokio::test]
    async fn streams_keep_the_tcp_share_and_identify_once() {
        let corpus = Arc::new(Corpus::generate(&CorpusSpec {
            tokens: 5,
            deny_ratio: 0.1,
            seed: 2,
            now_unix: 1_772_446_504,
        }));
        let max_msg = corpus
            .http
            .iter()
            .chain(&corpus.tcp)
            .map(|m| u64::from(m.entries()))
            .max()
            .unwrap_or(0);
        for share in [0.0, 0.1, 0.5, 1.0] {
            let mut c = Cursor::new(plan(Arc::clone(&corpus), share, 3));
            let mut identified = 0;
            let mut firsts = Vec::new();
            for _ in 0..400 {
                let out = c.next().await.expect("no deadline yet");
                identified += usize::from(out.identifier.is_some());
                firsts.push(out.first_entry);
            }
            assert_eq!(
                identified, 1,
                "only the first message carries the identifier"
            );
            let total = c.http_sent + c.tcp_sent;
            let tcp = c.tcp_sent as f64;
            assert!(
                (tcp - share * total as f64).abs() <= max_msg as f64,
                "share {share}: {tcp} of {total}"
            );
            // Entry numbers: stream index on top, consecutive below, never reused.
            assert!(firsts.iter().all(|f| f >> STREAM_SHIFT == 3));
            assert!(firsts.windows(2).all(|w| w[0] < w[1]));
            let counted = c.plan.counters.http_entries.load(Relaxed)
                + c.plan.counters.tcp_entries.load(Relaxed);
            assert_eq!(counted, total);
        }
    }

    #[tokio::test]
    async fn a_paced_stream_stops_at_its_deadline_without_exceeding_the_rate() {
        let corpus = Arc::new(Corpus::generate(&CorpusSpec {
            tokens: 5,
            deny_ratio: 0.0,
            seed: 2,
            now_unix: 1_772_446_504,
        }));
        let mut p = plan(corpus, 0.0, 0);
        p.per_stream_rate = Some(200.0);
        p.deadline = Instant::now() + Duration::from_millis(300);
        let mut c = Cursor::new(p);
        let mut messages = 0;
        while c.next().await.is_some() {
            messages += 1;
        }
        // A message goes out only when the entries before it are due: at most 0.3 s × 200/s,
        // plus the message that is due at the last moment.
        let max_msg = c
            .plan
            .corpus
            .http
            .iter()
            .map(|m| m.entries())
            .max()
            .unwrap_or(0);
        assert!(messages >= 1);
        assert!(
            c.http_sent <= 60 + u64::from(max_msg),
            "sent {}",
            c.http_sent
        );
    }

    fn small_corpus() -> Arc<Corpus> {
        Arc::new(Corpus::generate(&CorpusSpec {
            tokens: 5,
            deny_ratio: 0.1,
            seed: 3,
            now_unix: 1_772_446_504,
        }))
    }

    /// Sends a paced stream to its end and returns its messages as the collector would read
    /// them: (TCP?, stream ids of its entries).
    async fn paced_messages(
        rate: f64,
        interval_ms: u64,
        for_ms: u64,
        tcp_share: f64,
    ) -> Vec<(bool, Vec<String>)> {
        use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
        use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage as Full;
        use prost::Message as _;
        let mut p = plan(small_corpus(), tcp_share, 5);
        p.per_stream_rate = Some(rate);
        p.flush_interval = Some(Duration::from_millis(interval_ms));
        p.deadline = Instant::now() + Duration::from_millis(for_ms);
        let mut c = Cursor::new(p);
        let mut out = Vec::new();
        while let Some(item) = c.next().await {
            let mut buf = Vec::new();
            let count = item.run.expect("a paced stream sends runs of entries");
            write_run(
                &item.corpus,
                item.tcp,
                item.index,
                count,
                item.first_entry,
                &mut buf,
            );
            let msg = Full::decode(buf.as_slice()).expect("a run is a valid message");
            let ids = match msg.log_entries.expect("entries") {
                LogEntries::HttpLogs(h) => h
                    .log_entry
                    .iter()
                    .map(|e| {
                        e.common_properties
                            .as_ref()
                            .expect("common")
                            .stream_id
                            .clone()
                    })
                    .collect::<Vec<_>>(),
                LogEntries::TcpLogs(t) => t
                    .log_entry
                    .iter()
                    .map(|e| {
                        e.common_properties
                            .as_ref()
                            .expect("common")
                            .stream_id
                            .clone()
                    })
                    .collect(),
            };
            assert_eq!(ids.len(), count);
            out.push((item.tcp, ids));
        }
        let sent =
            c.plan.counters.http_entries.load(Relaxed) + c.plan.counters.tcp_entries.load(Relaxed);
        let got: usize = out.iter().map(|(_, ids)| ids.len()).sum();
        assert_eq!(sent, got as u64, "counted as sent = what the messages hold");
        out
    }

    #[tokio::test]
    async fn a_slow_paced_stream_flushes_small_messages_at_its_interval() {
        // 20 entries/s flushed every 100 ms for 1 s: ~2 entries per flush, ~10 flushes, as an
        // Envoy at that rate sends (not 16 KiB batches every ~0.25 s).
        let msgs = paced_messages(20.0, 100, 1000, 0.0).await;
        let entries: usize = msgs.iter().map(|(_, ids)| ids.len()).sum();
        assert!((15..=21).contains(&entries), "{entries} entries");
        assert!((8..=11).contains(&msgs.len()), "{} messages", msgs.len());
        assert!(
            msgs.iter().all(|(tcp, ids)| !tcp && ids.len() <= 3),
            "{msgs:?}"
        );
        // Every entry got its own number: placeholders all overwritten, none repeated.
        let mut all: Vec<&String> = msgs.iter().flat_map(|(_, ids)| ids).collect();
        assert!(all.iter().all(|id| !id.contains('#')), "{all:?}");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), entries);
    }

    #[tokio::test]
    async fn a_fast_paced_stream_flushes_at_16_kib_and_keeps_kinds_apart() {
        // 2,000 entries/s of ~1-3 KB: the buffer fills long before the 1 s timer.
        let msgs = paced_messages(2000.0, 1000, 300, 0.2).await;
        // Each kind's buffer flushes at 16 KiB; only the last of each (at the deadline) is short.
        let short = msgs.iter().filter(|(_, ids)| ids.len() <= 3).count();
        assert!(short <= 2, "{short} short messages of {}", msgs.len());
        let tcp: usize = msgs.iter().filter(|m| m.0).map(|m| m.1.len()).sum();
        let all: usize = msgs.iter().map(|m| m.1.len()).sum();
        assert!(all >= 400, "{all} entries in 0.3 s at 2,000/s");
        let share = tcp as f64 / all as f64;
        assert!((0.15..=0.25).contains(&share), "tcp share {share}");
    }
}
