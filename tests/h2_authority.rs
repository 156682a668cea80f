//! Every `:authority` Envoy can send is accepted, and a stream the HTTP/2 layer refuses is never
//! silent.
//!
//! An Envoy access logger whose `envoy_grpc` names a cluster but no authority sends the cluster
//! name as `:authority`: `outbound|9000||meshaudit.meshaudit.svc.cluster.local` in an Istio mesh.
//! Upstream h2 resets such streams (h2 issue #619); the project builds a patched h2
//! (vendor/h2/MESHAUDIT-PATCH.md). No HTTP/2 library here can send such an authority (they
//! all build it from an `http::Uri`), so these tests speak HTTP/2 by hand: raw frames, HPACK
//! literals without Huffman coding, to the real `meshaudit serve` binary.
//! tests/python/test_envoy.py does the same with a real Envoy.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Collector;
use prost::Message as _;

const ISTIO_CLUSTER: &str = "outbound|9000||meshaudit.meshaudit.svc.cluster.local";
const METHOD_PATH: &str = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs";

/// Once `http` accepts this authority, upstream h2 does too and vendor/h2 is unneeded.
#[test]
fn the_h2_patch_is_still_needed() {
    assert!(
        http::uri::Authority::try_from(ISTIO_CLUSTER).is_err(),
        "http now accepts Istio cluster names as URI authorities, so upstream h2 no longer \
         resets these streams: remove vendor/h2 and the [patch.crates-io] entry (see \
         vendor/h2/MESHAUDIT-PATCH.md)"
    );
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", no Huffman (RFC 7541 6.2.2).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    for s in [name, value] {
        assert!(s.len() < 127, "short strings only");
        out.push(if s == name { 0x00 } else { s.len() as u8 });
        if s == name {
            out.push(s.len() as u8);
        }
        out.extend_from_slice(s.as_bytes());
    }
}

/// One gRPC StreamAccessLogs call with the given pseudo-headers, carrying `msg`; returns the
/// frame types the server answered on stream 1 (1 = HEADERS, 3 = RST_STREAM, ...).
fn call(addr: SocketAddr, pseudo: &[(&str, &str)], msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[])); // SETTINGS
    let mut block = Vec::new();
    for (k, v) in pseudo {
        literal(&mut block, k, v);
    }
    literal(&mut block, "content-type", "application/grpc");
    literal(&mut block, "te", "trailers");
    out.extend(frame(1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(msg);
    out.extend(frame(0, 0x1, 1, &body)); // DATA, END_STREAM
    s.write_all(&out).expect("write");

    let mut buf = Vec::new();
    let mut kinds = Vec::new();
    let (mut at, mut acked) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut chunk = [0u8; 16384];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue, // read timeout: poll again
        }
        let mut ended = false;
        while buf.len() >= at + 9 {
            let h = &buf[at..at + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if buf.len() < at + 9 + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if kind == 4 && flags & 0x1 == 0 && !acked {
                s.write_all(&frame(4, 0x1, 0, &[])).expect("SETTINGS ACK");
                acked = true;
            }
            if stream == 1 {
                kinds.push(kind);
                // RST_STREAM, or HEADERS with END_STREAM (the trailers).
                ended |= kind == 3 || (kind == 1 && flags & 0x1 != 0);
            }
            at += 9 + len;
        }
        if ended {
            break;
        }
    }
    kinds
}

fn message(i: u32) -> Vec<u8> {
    common::http_message(
        Some(common::identifier(
            "router~10.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
            "http_envoy_accesslog",
        )),
        vec![common::http_entry(i)],
    )
    .encode_to_vec()
}

#[test]
fn an_istio_cluster_name_as_authority_is_accepted() {
    // What Envoy sends as :authority when envoy_grpc names a cluster and no authority (Istio's
    // outbound cluster names, with and without a subset), and ordinary authorities.
    let authorities = [
        ISTIO_CLUSTER,
        "outbound|9000|v1|meshaudit.meshaudit.svc.cluster.local",
        "inbound|9000||",
        "outbound_.9000_._.meshaudit.meshaudit.svc.cluster.local",
        "meshaudit.meshaudit.svc.cluster.local:9000",
        "[fd00::1]:9000",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    for (i, authority) in authorities.iter().enumerate() {
        let kinds = call(
            c.als_addr,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", METHOD_PATH),
                (":authority", authority),
            ],
            &message(i as u32),
        );
        assert!(
            !kinds.contains(&3),
            "{authority}: stream reset (frames {kinds:?}):\n{}",
            c.output()
        );
        assert!(
            kinds.contains(&1),
            "{authority}: no response headers (frames {kinds:?})"
        );
    }
    let n = authorities.len() as u64;
    common::wait_until("the entries are received", Duration::from_secs(10), || {
        c.metric("meshaudit_als_entries_received_total") == n
    });
    assert_eq!(
        c.metric("meshaudit_als_streams_refused_total{reason=\"malformed_authority\"}"),
        0
    );
    let (status, _) = c.stop();
    assert!(status.success());
    assert_eq!(common::read_rows(dir.path()).len(), authorities.len());
}

#[test]
fn a_stream_the_http2_layer_refuses_is_counted_and_logged_once_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    // No :scheme: h2 resets the stream before any service sees it.
    for _ in 0..2 {
        let kinds = call(
            c.als_addr,
            &[
                (":method", "POST"),
                (":path", METHOD_PATH),
                (":authority", "meshaudit"),
            ],
            &message(100),
        );
        assert!(
            kinds.contains(&3),
            "expected RST_STREAM, got frames {kinds:?}"
        );
    }
    common::wait_until("two refusals counted", Duration::from_secs(10), || {
        c.metric("meshaudit_als_streams_refused_total{reason=\"missing_pseudo_header\"}") == 2
    });
    assert_eq!(c.metric("meshaudit_als_entries_received_total"), 0);
    let (status, out) = c.stop();
    assert!(status.success());
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("the HTTP/2 layer reset an ALS stream"))
        .collect();
    assert_eq!(warnings.len(), 1, "logged once per reason:\n{out}");
    assert!(
        warnings[0].contains("missing_pseudo_header") && warnings[0].contains("fix"),
        "{}",
        warnings[0]
    );
}
