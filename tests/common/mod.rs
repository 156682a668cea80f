//! Test harness shared by the integration tests: runs the real `meshaudit` binary on free ports,
//! streams real protobuf to it with Envoy's own generated client (`envoy-types`), stops it with
//! SIGTERM, and reads the Parquet it wrote with the `parquet` crate's Arrow reader.
#![allow(dead_code)]

pub mod jwt;
pub mod objstore;
pub mod pg;
pub mod raw;
pub mod tls;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Node, SocketAddress,
};
use envoy_types::pb::envoy::data::accesslog::v3::{
    tls_properties::{
        certificate_properties::subject_alt_name::San, certificate_properties::SubjectAltName,
        CertificateProperties,
    },
    AccessLogCommon, ConnectionProperties, HttpAccessLogEntry, HttpRequestProperties,
    HttpResponseProperties, TcpAccessLogEntry, TlsProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Timestamp, UInt32Value};

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_until`] for expensive conditions (each poll may run psql): polls every 100 ms.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn free_addr() -> SocketAddr {
    free_addrs::<1>()[0]
}

/// `N` distinct free loopback addresses: every listener is held until all are bound, so two
/// calls cannot hand out the same port (as binding and dropping one at a time can).
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr"))
}

/// The runtime integration tests drive clients with.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The start-time window the harness gives the collector (see [`Collector::start_under`]).
pub const FIXTURE_WINDOW_PAST_SECS: &str = "315360000";
pub const FIXTURE_WINDOW_FUTURE_SECS: &str = "604800";

/// A running collector process.
pub struct Collector {
    child: Child,
    pub als_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The OTLP logs listener (given as MESHAUDIT_OTLP_ADDR, so a test's flag wins).
    pub otlp_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Everything the process wrote to stdout and stderr.
    pub output: Arc<Mutex<String>>,
}

impl Collector {
    /// Starts `meshaudit serve` on fresh ports with `data_dir`, plus `extra` arguments, and waits
    /// until /readyz answers 200.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Collector {
        Self::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Collector {
        Self::start_under(&[], data_dir, extra, env)
    }

    /// Like [`Collector::start_with_env`], run through `wrapper` (a program and its arguments
    /// that execs the collector, e.g. `prlimit --nofile=256:512 --`); `&[]` runs it directly.
    pub fn start_under(
        wrapper: &[&str],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Collector {
        let [als_addr, admin_addr, otlp_addr] = free_addrs::<3>();
        let bin = env!("CARGO_BIN_EXE_meshaudit");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
        };
        cmd.arg("serve")
            .args([
                "--als-addr",
                &als_addr.to_string(),
                "--admin-addr",
                &admin_addr.to_string(),
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            // Not the default 4317: tests run side by side.
            .env("MESHAUDIT_OTLP_ADDR", otlp_addr.to_string())
            // The fixtures are dated (2026-03-02), far outside the default start-time window of
            // 7 days before receipt: accept them as sent (10 years back, 7 days ahead). Tests of
            // the window pass the flags, which take precedence over the environment.
            .env(
                "MESHAUDIT_START_TIME_MAX_PAST_SECS",
                FIXTURE_WINDOW_PAST_SECS,
            )
            .env(
                "MESHAUDIT_START_TIME_MAX_FUTURE_SECS",
                FIXTURE_WINDOW_FUTURE_SECS,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn meshaudit");
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().expect("output lock");
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let mut c = Collector {
            child,
            als_addr,
            admin_addr,
            otlp_addr,
            data_dir: data_dir.to_path_buf(),
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.child.try_wait().expect("try_wait") {
                panic!(
                    "collector exited during start-up with {status}:\n{}",
                    c.output()
                );
            }
            if matches!(http_get(c.admin_addr, "/readyz"), Some((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "collector not ready after 30 s:\n{}",
                c.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    pub fn otlp_url(&self) -> String {
        format!("http://{}", self.otlp_addr)
    }

    pub fn als_url(&self) -> String {
        format!("http://{}", self.als_addr)
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Prometheus text of /metrics.
    pub fn metrics(&self) -> String {
        match http_get(self.admin_addr, "/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics failed: {other:?}"),
        }
    }

    /// The value of one metric line, e.g. `meshaudit_als_messages_rejected_total{reason="malformed"}`.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig} failed");
    }

    /// Sends SIGTERM and waits for the exit; returns the status and everything printed.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the pipe readers reach EOF.
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "collector did not stop within 60 s after SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) -> String {
        self.signal("-KILL");
        let _ = self.child.wait();
        self.output()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (the admin endpoints only); `None` if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

// ---------------------------------------------------------------------------------------------
// Building Envoy messages (full envoy-types, as Envoy itself would encode them).

pub const NODE_ID: &str = "sidecar~10.1.2.3~checkout-7d9f.orders~orders.svc.cluster.local";
pub const LOG_NAME: &str = "http_envoy_accesslog";

pub fn identifier(node_id: &str, log_name: &str) -> Identifier {
    Identifier {
        node: Some(Node {
            id: node_id.into(),
            cluster: "checkout.orders".into(),
            ..Default::default()
        }),
        log_name: log_name.into(),
    }
}

pub fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn cert(uri: &str) -> CertificateProperties {
    CertificateProperties {
        subject_alt_name: vec![SubjectAltName {
            san: Some(San::Uri(uri.into())),
        }],
        ..Default::default()
    }
}

/// Start time used by the builders: 2026-03-02T10:15:04.118123Z (456 ns past the µs, which the
/// collector must truncate away).
pub const START_SECS: i64 = 1_772_446_504;
pub const START_NANOS: i32 = 118_123_456;
pub const START_MICROS: i64 = START_SECS * 1_000_000 + 118_123;

pub fn common(i: u32) -> AccessLogCommon {
    AccessLogCommon {
        downstream_remote_address: Some(socket("10.1.2.3", 40000 + i)),
        upstream_remote_address: Some(socket("10.9.8.7", 8080)),
        start_time: Some(Timestamp {
            seconds: START_SECS,
            nanos: START_NANOS,
        }),
        time_to_last_downstream_tx_byte: Some(PbDuration {
            seconds: 0,
            nanos: 23_500_000,
        }),
        upstream_cluster: "outbound|8080||orders.shop.svc.cluster.local".into(),
        route_name: "orders".into(),
        tls_properties: Some(TlsProperties {
            peer_certificate_properties: Some(cert("spiffe://cluster.local/ns/orders/sa/checkout")),
            local_certificate_properties: Some(cert("spiffe://cluster.local/ns/shop/sa/orders")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An HTTP entry; `i` makes it unique (request id, client port, path).
pub fn http_entry(i: u32) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(common(i)),
        protocol_version: 3, // HTTP2
        request: Some(HttpRequestProperties {
            request_method: 3, // POST
            scheme: "https".into(),
            authority: "orders.shop.svc.cluster.local:8080".into(),
            path: format!("/orders/{i}"),
            user_agent: "curl/8.5".into(),
            request_id: format!("req-{i}"),
            request_body_bytes: 120,
            request_headers: HashMap::from([(
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            )]),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 201 }),
            response_body_bytes: 2048,
            response_code_details: "via_upstream".into(),
            ..Default::default()
        }),
    }
}

pub fn tcp_entry(i: u32) -> TcpAccessLogEntry {
    TcpAccessLogEntry {
        common_properties: Some(common(i)),
        connection_properties: Some(ConnectionProperties {
            received_bytes: 1000 + u64::from(i),
            sent_bytes: 5000,
        }),
    }
}

pub fn http_message(
    ident: Option<Identifier>,
    entries: Vec<HttpAccessLogEntry>,
) -> StreamAccessLogsMessage {
    StreamAccessLogsMessage {
        identifier: ident,
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: entries,
        })),
    }
}

pub fn tcp_message(
    ident: Option<Identifier>,
    entries: Vec<TcpAccessLogEntry>,
) -> StreamAccessLogsMessage {
    StreamAccessLogsMessage {
        identifier: ident,
        log_entries: Some(LogEntries::TcpLogs(TcpAccessLogEntries {
            log_entry: entries,
        })),
    }
}

/// `n` HTTP messages of `per` unique entries each, entries numbered from `base`, on one stream
/// (the Identifier on the first message only).
pub fn http_stream(base: u32, n: u32, per: u32) -> Vec<StreamAccessLogsMessage> {
    (0..n)
        .map(|m| {
            let ident = (m == 0).then(|| identifier(NODE_ID, LOG_NAME));
            http_message(
                ident,
                (0..per).map(|i| http_entry(base + m * per + i)).collect(),
            )
        })
        .collect()
}

/// One message of `n` TCP entries numbered from `base`, from a gateway.
pub fn tcp_stream(base: u32, n: u32) -> Vec<StreamAccessLogsMessage> {
    vec![tcp_message(
        Some(identifier(
            "router~10.0.0.9~gw.istio-system~istio-system.svc.cluster.local",
            "tcp_log",
        )),
        (0..n).map(|i| tcp_entry(base + i)).collect(),
    )]
}

/// Sends each stream in turn and expects every one to be accepted.
pub fn send(c: &Collector, streams: Vec<Vec<StreamAccessLogsMessage>>) {
    let url = c.als_url();
    rt().block_on(async {
        for msgs in streams {
            stream(&url, msgs).await.expect("stream accepted");
        }
    });
}

/// Streams `messages` on one new stream and waits for the server's answer.
pub async fn stream(
    url: &str,
    messages: Vec<StreamAccessLogsMessage>,
) -> Result<(), tonic::Status> {
    let mut client = AccessLogServiceClient::connect(url.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    client
        .stream_access_logs(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Reading Parquet back.

/// Every `*.parquet` file under `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

/// Every file under `dir`, sorted.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn read_batches(dir: &Path) -> Vec<RecordBatch> {
    let mut out = vec![];
    for f in parquet_files(dir) {
        let file = std::fs::File::open(&f).expect("open parquet");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet footer")
            .build()
            .expect("reader");
        for b in reader {
            out.push(b.expect("batch"));
        }
    }
    out
}

/// One row as column name → JSON value (lists as arrays, timestamps as µs integers), so tests
/// can compare any column without caring about Arrow types.
pub type Row = serde_json::Map<String, serde_json::Value>;

pub fn read_rows(dir: &Path) -> Vec<Row> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
    use arrow_schema::DataType;
    use serde_json::Value;

    fn cell(a: &dyn Array, i: usize) -> Value {
        if a.is_null(i) {
            return Value::Null;
        }
        match a.data_type() {
            DataType::Utf8 => Value::from(a.as_string::<i32>().value(i)),
            DataType::Int32 => Value::from(a.as_primitive::<Int32Type>().value(i)),
            DataType::Int64 => Value::from(a.as_primitive::<Int64Type>().value(i)),
            DataType::Float64 => Value::from(a.as_primitive::<Float64Type>().value(i)),
            DataType::Boolean => Value::from(a.as_boolean().value(i)),
            DataType::Timestamp(_, _) => {
                Value::from(a.as_primitive::<TimestampMicrosecondType>().value(i))
            }
            DataType::List(_) => {
                let inner = a.as_list::<i32>().value(i);
                Value::Array((0..inner.len()).map(|j| cell(inner.as_ref(), j)).collect())
            }
            other => panic!("unexpected Arrow type {other}"),
        }
    }

    let mut rows = vec![];
    for batch in read_batches(dir) {
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut row = Row::new();
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                row.insert(f.name().clone(), cell(col.as_ref(), i));
            }
            rows.push(row);
        }
    }
    rows
}

/// True if any file under `dir` contains `needle` anywhere in its bytes (compressed pages
/// included: tests also check a value that compression cannot hide, see als_e2e.rs).
pub fn any_file_contains(dir: &Path, needle: &[u8]) -> bool {
    all_files(dir).iter().any(|f| {
        std::fs::read(f)
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

/// True if any decoded value of any row under `dir` contains `needle`. Searching decoded
/// values matters: zstd pages can hide a stored secret from a search of the file's raw bytes.
pub fn any_value_contains(dir: &Path, needle: &str) -> bool {
    read_rows(dir).iter().any(|r| {
        serde_json::Value::Object(r.clone())
            .to_string()
            .contains(needle)
    })
}
