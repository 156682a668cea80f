//! Connections that hold a file descriptor without doing anything (issue 15, item 6): raw TCP
//! that sends nothing, TCP that sends only the HTTP/2 preface, slow admin requests, TLS
//! connections that never handshake or have no client certificate. The real binary, run under a
//! lowered open-files limit, with a real gRPC stream beside them.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::Pki;
use common::*;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what a real client sends right after the preface.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads until the peer closes (EOF or reset) or `within` passes; true if it closed.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_preface_only_connections_beyond_the_open_files_limit_leave_a_real_stream_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Soft 320, hard 512: the collector raises the soft limit to 512 and keeps 256 descriptors
    // for itself, so 256 ALS connections. The test opens 600 (more than the whole limit).
    let c = Collector::start_under(
        &["prlimit", "--nofile=320:512", "--"],
        &data,
        &[
            "--als-handshake-timeout-secs",
            "2",
            "--als-keepalive-interval-secs",
            "1",
            "--als-keepalive-timeout-secs",
            "1",
            "--admin-header-read-timeout-secs",
            "2",
            "--admin-idle-timeout-secs",
            "3",
        ],
        &[],
    );
    assert_eq!(
        c.metric("meshaudit_open_files_limit"),
        512,
        "soft limit raised to the hard one"
    );
    assert_eq!(c.metric("meshaudit_als_connections_limit"), 256);
    let url = c.als_url();
    let (als, admin) = (c.als_addr, c.admin_addr);

    let mut idle: Vec<TcpStream> = Vec::new();
    let mut slow_admin: Vec<TcpStream> = Vec::new();
    rt().block_on(async {
        // The legitimate stream opens first and keeps sending through the flood.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let legit = tokio::spawn(async move {
            let mut client = AccessLogServiceClient::connect(url).await.expect("connect");
            client
                .stream_access_logs(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|_| ())
        });
        let messages = http_stream(0, 20, 100);
        for (i, m) in messages.into_iter().enumerate() {
            tx.send(m).await.expect("stream open");
            if i == 2 {
                // 300 silent connections and 300 that send only the preface, interleaved,
                // and 20 admin requests that never finish their headers.
                for n in 0..600 {
                    let mut s = TcpStream::connect(als).expect("connect");
                    if n % 2 == 1 {
                        s.write_all(PREFACE).expect("preface");
                    }
                    idle.push(s);
                }
                for _ in 0..20 {
                    let mut s = TcpStream::connect(admin).expect("connect admin");
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
                        .expect("partial request");
                    slow_admin.push(s);
                }
            }
            if i > 2 {
                // Probes keep answering during the flood.
                let probe = tokio::task::spawn_blocking(move || http_get(admin, "/readyz"));
                let got = probe.await.expect("probe task");
                assert_eq!(got.map(|r| r.0), Some(200), "/readyz during the flood");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        drop(tx);
        legit
            .await
            .expect("stream task")
            .expect("the legitimate stream is accepted whole");
    });

    // Every idle connection is closed: refused at once over the limit, or at the 2 s deadline.
    let started = Instant::now();
    let open: Vec<usize> = idle
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| (!closed_within(s, Duration::from_secs(8))).then_some(i))
        .collect();
    assert!(
        open.is_empty(),
        "still open after {:?}: {open:?}",
        started.elapsed()
    );
    for s in &mut slow_admin {
        assert!(
            closed_within(s, Duration::from_secs(8)),
            "a slow admin request is closed by the header-read timeout"
        );
    }
    assert!(
        c.metric(
            "meshaudit_connections_closed_total{listener=\"admin\",reason=\"header_read_timeout\"}"
        ) >= 20,
        "slow admin requests are counted"
    );
    assert!(
        c.metric("meshaudit_als_connections_refused_total{reason=\"connection_limit\"}") > 0,
        "connections over the limit are counted"
    );
    assert!(
        c.metric("meshaudit_connections_closed_total{listener=\"als\",reason=\"preface_timeout\"}")
            >= 100,
        "silent and preface-only connections are closed at the deadline:\n{}",
        c.metrics()
    );
    // After the flood, a new stream connects and is accepted.
    let after = http_stream(10_000, 5, 100);
    rt().block_on(async { stream(&c.als_url(), after).await })
        .expect("a new stream after the flood");
    wait_until("connections released", Duration::from_secs(10), || {
        c.metric("meshaudit_als_connections_open") <= 1
    });
    assert_eq!(c.metric("meshaudit_als_entries_received_total"), 2_500);

    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
    assert!(
        output.contains("WARN") && output.contains("refusing ALS connections"),
        "reaching the limit is logged at WARN:\n{output}"
    );
    assert!(
        output.contains("allows fewer ALS connections than als_max_connections"),
        "the open-files cap is logged at start-up:\n{output}"
    );
    assert!(output.contains("raised the open-files limit"), "{output}");
    let rows = read_rows(&data);
    let mut ids: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2_500, "every record of both streams is stored");
}

/// A TLS client for raw checks: trusts `ca_pem`, presents `cert` if given, ALPN h2.
async fn raw_tls(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    cert: Option<(String, String)>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("CA");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(PREFACE).await.expect("preface");
    tls.write_all(EMPTY_SETTINGS).await.expect("settings");
    tls.flush().await.expect("flush");
    tls
}

/// Reads until EOF/error or `within`; true if the server closed the connection.
async fn tls_closed_within(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn tls_connections_without_a_handshake_or_a_client_certificate_do_not_hold_a_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "mesh");
    let data = dir.path().join("data");
    let mut args = pki.server_args(true);
    args.extend(["--als-handshake-timeout-secs".to_owned(), "2".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Collector::start(&data, &args);
    let addr = c.als_addr;
    let ca = pki.ca_pem.clone();
    let writer = pki.client_pem(&["spiffe://cluster.local/ns/orders/sa/meshaudit-writer"]);

    let mut silent = TcpStream::connect(addr).expect("connect");
    rt().block_on(async {
        let mut no_cert = raw_tls(addr, &ca, None).await;
        let mut with_cert = raw_tls(addr, &ca, Some(writer)).await;
        let started = Instant::now();
        assert!(
            tls_closed_within(&mut no_cert, Duration::from_secs(8)).await,
            "a connection without the required certificate is closed"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "but only at the deadline, after it could read its refusal: {:?}",
            started.elapsed()
        );
        assert!(
            !tls_closed_within(&mut with_cert, Duration::from_secs(3)).await,
            "a certified client's connection stays open past the deadline"
        );
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(8)),
        "a connection that never starts its handshake is closed"
    );
    assert_eq!(
        c.metric(
            "meshaudit_connections_closed_total{listener=\"als\",reason=\"no_client_certificate\"}"
        ),
        1
    );
    wait_until(
        "the stalled handshake counted",
        Duration::from_secs(5),
        || c.metric("meshaudit_als_messages_rejected_total{reason=\"tls_handshake\"}") >= 1,
    );
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
}

/// A connection that completes the preface but never answers anything (a dead peer, or one
/// that only holds the socket) is closed by the keepalive ping's timeout, not left open.
#[test]
fn a_silent_peer_after_the_preface_is_closed_by_keepalive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        &dir.path().join("data"),
        &[
            "--als-handshake-timeout-secs",
            "1",
            "--als-keepalive-interval-secs",
            "1",
            "--als-keepalive-timeout-secs",
            "1",
        ],
    );
    let mut s = TcpStream::connect(c.als_addr).expect("connect");
    s.write_all(PREFACE).expect("preface");
    s.write_all(EMPTY_SETTINGS).expect("settings");
    let started = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(10)),
        "closed once its ping goes unanswered"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "after the interval and the timeout, not at once: {:?}",
        started.elapsed()
    );
    assert_eq!(
        c.metric("meshaudit_connections_closed_total{listener=\"als\",reason=\"preface_timeout\"}"),
        0,
        "the preface arrived: this was keepalive's doing"
    );
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
}
