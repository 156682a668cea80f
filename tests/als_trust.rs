//! Only proxies may write: TLS on the ALS listener, client certificates from the configured CA,
//! and the SPIFFE allow-list. The real binary, tonic TLS clients with rcgen certificates.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::tls::{path, tls_channel, tls_stream, Pki};
use common::*;
use serde_json::json;

const GATEWAY: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
/// Allowed through the wildcard `spiffe://cluster.local/ns/*/sa/meshaudit-writer`.
const WRITER: &str = "spiffe://cluster.local/ns/orders/sa/meshaudit-writer";
const CHECKOUT: &str = "spiffe://cluster.local/ns/orders/sa/checkout";

fn one_message(
    request: u32,
) -> Vec<envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage> {
    vec![http_message(
        Some(identifier(NODE_ID, LOG_NAME)),
        vec![http_entry(request)],
    )]
}

#[test]
fn only_allowed_spiffe_ids_from_the_client_ca_can_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "mesh");
    let stranger = Pki::new(dir.path(), "other");
    let data = dir.path().join("data");
    let mut args = pki.server_args(true);
    args.extend(
        [
            "--als-allowed-spiffe-id",
            &format!("{GATEWAY},spiffe://cluster.local/ns/*/sa/meshaudit-writer"),
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Collector::start(&data, &args);
    let addr = c.als_addr;
    let ca = pki.ca_pem.clone();

    rt().block_on(async {
        // Allowed: listed exactly, and through the wildcard.
        tls_stream(addr, &ca, Some(pki.client(&[GATEWAY])), one_message(1))
            .await
            .expect("the gateway may write");
        tls_stream(addr, &ca, Some(pki.client(&[WRITER])), one_message(2))
            .await
            .expect("a wildcard-allowed writer may write");

        // No client certificate: the handshake succeeds, the stream is refused readably.
        let err = tls_stream(addr, &ca, None, one_message(101))
            .await
            .expect_err("no certificate");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("client certificate"), "{err:?}");

        // The right CA, an ID not on the list.
        let err = tls_stream(addr, &ca, Some(pki.client(&[CHECKOUT])), one_message(102))
            .await
            .expect_err("not allowed");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains(CHECKOUT),
            "names the refused ID: {err:?}"
        );

        // The right CA, no SPIFFE ID at all.
        let err = tls_stream(addr, &ca, Some(pki.client(&[])), one_message(103))
            .await
            .expect_err("no SPIFFE ID");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

        // An allowed ID in a certificate from another CA: refused in the TLS handshake.
        tls_stream(
            addr,
            &ca,
            Some(stranger.client(&[GATEWAY])),
            one_message(104),
        )
        .await
        .expect_err("another CA");

        // Plaintext HTTP/2 to the TLS port.
        stream(&format!("http://{addr}"), one_message(105))
            .await
            .expect_err("plaintext to a TLS listener");
    });

    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"unauthenticated\"}"),
        1
    );
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"not_allowed\"}"),
        2
    );
    // Handshake failures are counted by the handshake task: wait for both.
    wait_until(
        "two failed handshakes counted",
        Duration::from_secs(10),
        || c.metric("meshaudit_als_messages_rejected_total{reason=\"tls_handshake\"}") >= 2,
    );
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
    assert!(
        output.contains("SPIFFE ID is on the allow-list"),
        "start-up reports the mode:\n{output}"
    );
    assert!(
        output.contains(CHECKOUT),
        "the refusal is logged with the ID:\n{output}"
    );
    assert!(!output.contains("PRIVATE KEY"), "no key material in logs");

    let mut ids: Vec<String> = read_rows(&data)
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["req-1", "req-2"],
        "only allowed writers' records exist"
    );
}

#[test]
fn trust_domain_allow_list_admits_every_id_of_that_domain_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "mesh");
    let data = dir.path().join("data");
    let mut args = pki.server_args(true);
    args.extend([
        "--als-allowed-trust-domain".to_owned(),
        "cluster.local".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Collector::start(&data, &args);
    let (addr, ca) = (c.als_addr, pki.ca_pem.clone());
    rt().block_on(async {
        tls_stream(addr, &ca, Some(pki.client(&[CHECKOUT])), one_message(1))
            .await
            .expect("any ID of cluster.local");
        let err = tls_stream(
            addr,
            &ca,
            Some(pki.client(&["spiffe://cluster.local.evil/ns/orders/sa/checkout"])),
            one_message(2),
        )
        .await
        .expect_err("another trust domain");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    });
    let (status, _) = c.stop();
    assert!(status.success());
    assert_eq!(read_rows(&data).len(), 1);
}

#[test]
fn tls_without_client_ca_serves_any_client_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "mesh");
    let data = dir.path().join("data");
    // Through the config file this time: the TOML keys are the flags with underscores.
    let config = dir.path().join("meshaudit.toml");
    std::fs::write(
        &config,
        format!(
            "als_tls_cert = {:?}\nals_tls_key = {:?}\n",
            path(&pki.server_cert),
            path(&pki.server_key)
        ),
    )
    .expect("write config");
    let c = Collector::start(&data, &["--config", &path(&config)]);
    let (addr, ca) = (c.als_addr, pki.ca_pem.clone());
    rt().block_on(async {
        tls_stream(addr, &ca, None, one_message(7))
            .await
            .expect("no client certificate needed");
    });
    let (status, output) = c.stop();
    assert!(status.success());
    assert!(
        output.contains("TLS without client certificates"),
        "start-up warns that anyone may write:\n{output}"
    );
    let rows = read_rows(&data);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], json!("req-7"));
}

#[test]
fn stalled_tls_handshakes_do_not_delay_an_allowed_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "mesh");
    let data = dir.path().join("data");
    let args = pki.server_args(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Collector::start(&data, &args);
    let (addr, ca) = (c.als_addr, pki.ca_pem.clone());
    // Connections that never start a handshake, and one that sends garbage instead.
    let mut silent: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut garbage = std::net::TcpStream::connect(addr).expect("connect");
    garbage
        .write_all(b"\x16\x03\x01\xff\xffnot a client hello")
        .expect("write");
    silent.push(garbage);
    rt().block_on(async {
        let started = std::time::Instant::now();
        let channel = tls_channel(addr, &ca, Some(pki.client(&[WRITER])))
            .await
            .expect("handshake while others stall");
        envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient::new(channel)
            .stream_access_logs(tokio_stream::iter(one_message(1)))
            .await
            .expect("accepted");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}: stalled handshakes held it up",
            started.elapsed()
        );
    });
    assert_eq!(c.metric("meshaudit_als_entries_received_total"), 1);
    wait_until(
        "the garbage handshake counted",
        Duration::from_secs(10),
        || c.metric("meshaudit_als_messages_rejected_total{reason=\"tls_handshake\"}") >= 1,
    );
    drop(silent);
    let (status, _) = c.stop();
    assert!(status.success());
}

/// Bad TLS settings stop the collector at start-up with the setting and the fix named, and
/// never print key material.
#[test]
fn bad_tls_settings_fail_at_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "mesh");
    let other = Pki::new(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello, not PEM\n").expect("write");
    let bad_base64 = dir.path().join("bad64.pem");
    std::fs::write(
        &bad_base64,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let missing = dir.path().join("missing.pem");
    let other_key = std::fs::read_to_string(&other.server_key).expect("key");
    let key_body: String = other_key.lines().nth(1).expect("a base64 line").to_owned();

    let (cert, key, ca) = (
        path(&pki.server_cert),
        path(&pki.server_key),
        path(&pki.ca_file),
    );
    let p = path;
    // (arguments, flag that must be named, words the problem must contain)
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["--als-tls-cert".into(), cert.clone()],
            "--als-tls-key",
            "private key is not",
        ),
        (
            vec!["--als-tls-key".into(), key.clone()],
            "--als-tls-cert",
            "certificate is not",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                p(&missing),
                "--als-tls-key".into(),
                key.clone(),
            ],
            "--als-tls-cert",
            "cannot read",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                p(&garbage),
                "--als-tls-key".into(),
                key.clone(),
            ],
            "--als-tls-cert",
            "no PEM certificate",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                p(&bad_base64),
                "--als-tls-key".into(),
                key.clone(),
            ],
            "--als-tls-cert",
            "not valid PEM",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                cert.clone(),
                "--als-tls-key".into(),
                p(&garbage),
            ],
            "--als-tls-key",
            "no PEM private key",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                cert.clone(),
                "--als-tls-key".into(),
                p(&other.server_key),
            ],
            "--als-tls-key",
            "does not belong",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                cert.clone(),
                "--als-tls-key".into(),
                key.clone(),
                "--als-tls-client-ca".into(),
                p(&garbage),
            ],
            "--als-tls-client-ca",
            "no PEM certificate",
        ),
        (
            vec!["--als-tls-client-ca".into(), ca.clone()],
            "--als-tls-client-ca",
            "need TLS",
        ),
        (
            vec!["--als-allowed-spiffe-id".into(), GATEWAY.into()],
            "--als-allowed-spiffe-id",
            "--als-tls-client-ca is not set",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                cert.clone(),
                "--als-tls-key".into(),
                key.clone(),
                "--als-allowed-trust-domain".into(),
                "cluster.local".into(),
            ],
            "--als-allowed-trust-domain",
            "--als-tls-client-ca is not set",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                cert.clone(),
                "--als-tls-key".into(),
                key.clone(),
                "--als-tls-client-ca".into(),
                ca.clone(),
                "--als-allowed-spiffe-id".into(),
                "spiffe://cluster.local/ns/a*/sa/b".into(),
            ],
            "--als-allowed-spiffe-id",
            "not a valid SPIFFE ID",
        ),
        (
            vec![
                "--als-tls-cert".into(),
                cert.clone(),
                "--als-tls-key".into(),
                key.clone(),
                "--als-tls-client-ca".into(),
                ca.clone(),
                "--als-allowed-trust-domain".into(),
                "spiffe://cluster.local/ns/orders".into(),
            ],
            "--als-allowed-trust-domain",
            "has a path",
        ),
        (
            vec!["--als-max-streams".into(), "0".into()],
            "--als-max-streams",
            "at least 1",
        ),
        (
            vec!["--als-max-streams-per-connection".into(), "0".into()],
            "--als-max-streams-per-connection",
            "at least 1",
        ),
    ];
    for (args, flag, problem) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshaudit"))
            .arg("serve")
            .args(["--als-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(&args)
            .output()
            .expect("run meshaudit");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            err.contains(flag) && err.contains("Fix:") && err.contains(problem),
            "{args:?}: want {flag} and {problem:?} in:\n{err}"
        );
        assert!(
            !err.contains(&key_body),
            "{args:?}: key material in:\n{err}"
        );
        assert!(
            !err.contains("ready"),
            "{args:?}: must fail before serving:\n{err}"
        );
    }
}
