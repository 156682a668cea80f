//! Bad input cannot hurt the collector: garbage, truncated frames, huge and trickling messages
//! and silent streams leave a well-behaved stream flowing; stream limits, the idle timeout and
//! the maximum stream age end streams with clear statuses and are counted.

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw;
use common::*;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Waits (asynchronously) until `cond` holds; panics with `what` after `timeout`.
async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn msg(first: bool, request: u32) -> StreamAccessLogsMessage {
    http_message(
        first.then(|| identifier(NODE_ID, LOG_NAME)),
        vec![http_entry(request)],
    )
}

/// A stream fed from a channel, as Envoy feeds one: stays open until the sender is dropped or
/// the server ends it. Returns the sender and the task awaiting the server's answer.
async fn open_fed_stream(
    url: &str,
) -> (
    mpsc::Sender<StreamAccessLogsMessage>,
    tokio::task::JoinHandle<Result<(), tonic::Status>>,
) {
    let (tx, rx) = mpsc::channel(16);
    let mut client = AccessLogServiceClient::connect(url.to_owned())
        .await
        .expect("connect");
    let task = tokio::spawn(async move {
        client
            .stream_access_logs(ReceiverStream::new(rx))
            .await
            .map(|_| ())
    });
    (tx, task)
}

fn request_ids(dir: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = read_rows(dir)
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn abusive_clients_do_not_disturb_a_well_behaved_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    let url = c.als_url();
    let addr = c.als_addr;
    let entries = || c.metric("meshaudit_als_entries_received_total");
    rt().block_on(async {
        let (tx, healthy) = open_fed_stream(&url).await;
        tx.send(msg(true, 0)).await.expect("send");
        eventually("the first healthy entry", Duration::from_secs(5), || {
            entries() == 1
        })
        .await;

        // Not HTTP/2 at all: the connection is closed, nothing else happens.
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff\xfe garbage \x16\x03")
            .expect("write");
        let mut sink = vec![];
        let _ = tcp.read_to_end(&mut sink);

        let mut h2c = raw::connect(addr).await;
        // A gRPC frame with an invalid compression flag.
        let (bad_flag, mut s) = raw::open_stream(&mut h2c).await;
        s.send_data(Bytes::from_static(b"\x07\x00\x00\x00\x02ab"), true)
            .expect("send");
        // A frame whose length prefix promises 1000 bytes; 10 follow, then the stream ends.
        let (truncated, mut s) = raw::open_stream(&mut h2c).await;
        let mut short = raw::frame(&[0u8; 1000]).to_vec();
        short.truncate(15);
        s.send_data(Bytes::from(short), true).expect("send");
        // A frame that claims 4 GiB.
        let (huge, mut s) = raw::open_stream(&mut h2c).await;
        s.send_data(Bytes::from_static(b"\x00\xff\xff\xff\xff"), false)
            .expect("send");

        let status = raw::grpc_status(bad_flag).await.expect("bad flag status");
        assert_eq!(status.0, tonic::Code::Internal as i32, "{status:?}");
        let status = raw::grpc_status(truncated).await.expect("truncated status");
        assert_eq!(status.0, tonic::Code::Internal as i32, "{status:?}");
        assert!(status.1.contains("EOF"), "{status:?}");
        let status = raw::grpc_status(huge).await.expect("huge status");
        assert_eq!(status.0, tonic::Code::OutOfRange as i32, "{status:?}");

        // A slow client trickling a valid message one byte at a time, and one that sends
        // nothing at all, both still open while the healthy stream goes on.
        let mut slow_conn = raw::connect(addr).await;
        let (_slow_resp, mut slow) = raw::open_stream(&mut slow_conn).await;
        let trickle = tokio::spawn(async move {
            let bytes = raw::encode(&msg(true, 999));
            for b in bytes.iter() {
                if slow
                    .send_data(Bytes::copy_from_slice(&[*b]), false)
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let (_silent_resp, _silent) = raw::open_stream(&mut slow_conn).await;

        for i in 1..=5u32 {
            let sent = Instant::now();
            tx.send(msg(false, i))
                .await
                .expect("the healthy stream is open");
            eventually("a healthy entry, promptly", Duration::from_secs(2), || {
                entries() == 1 + u64::from(i)
            })
            .await;
            assert!(sent.elapsed() < Duration::from_secs(2));
        }
        drop(tx);
        healthy
            .await
            .expect("task")
            .expect("the healthy stream ends cleanly");
        assert!(
            !trickle.is_finished(),
            "the slow client was still trickling"
        );
        trickle.abort();
    });
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"oversized\"}"),
        1
    );
    assert!(c.metric("meshaudit_als_stream_errors_total") >= 2);
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
    assert!(
        output.contains("ALS listener is plaintext"),
        "plaintext is reported at start-up:\n{output}"
    );
    assert_eq!(
        request_ids(dir.path()),
        ["req-0", "req-1", "req-2", "req-3", "req-4", "req-5"]
    );
}

#[test]
fn streams_over_the_replica_limit_get_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--als-max-streams", "2"]);
    let url = c.als_url();
    rt().block_on(async {
        let (tx1, s1) = open_fed_stream(&url).await;
        let (tx2, s2) = open_fed_stream(&url).await;
        tx1.send(msg(true, 1)).await.expect("send");
        tx2.send(msg(true, 2)).await.expect("send");
        eventually("both streams admitted", Duration::from_secs(5), || {
            c.metric("meshaudit_als_entries_received_total") == 2
        })
        .await;

        let err = stream(&url, vec![msg(true, 3)])
            .await
            .expect_err("a third stream is over the limit");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("als_max_streams"), "{err:?}");

        // A stream that ends frees its slot.
        drop(tx1);
        s1.await.expect("task").expect("stream 1 ends cleanly");
        eventually("stream 1 gone", Duration::from_secs(5), || {
            c.metric("meshaudit_als_streams_active") == 1
        })
        .await;
        stream(&url, vec![msg(true, 4)])
            .await
            .expect("a slot is free again");
        tx2.send(msg(false, 5)).await.expect("stream 2 still open");
        drop(tx2);
        s2.await.expect("task").expect("stream 2 ends cleanly");
    });
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"too_many_streams\"}"),
        1
    );
    let (status, _) = c.stop();
    assert!(status.success());
    assert_eq!(
        request_ids(dir.path()),
        ["req-1", "req-2", "req-4", "req-5"]
    );
}

#[test]
fn streams_per_connection_are_limited_by_http2_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--als-max-streams-per-connection", "3"]);
    let url = c.als_url();
    rt().block_on(async {
        let h2c = raw::connect(c.als_addr).await;
        eventually(
            "the server's SETTINGS_MAX_CONCURRENT_STREAMS",
            Duration::from_secs(5),
            || h2c.current_max_send_streams() == 3,
        )
        .await;

        // One connection (one tonic channel), four streams: the fourth waits for a free one.
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut senders = vec![];
        let mut tasks = vec![];
        for i in 0..4u32 {
            let (tx, rx) = mpsc::channel(4);
            let mut client = AccessLogServiceClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                client
                    .stream_access_logs(ReceiverStream::new(rx))
                    .await
                    .map(|_| ())
            }));
            tx.send(msg(true, i)).await.expect("send");
            senders.push(tx);
            if i < 3 {
                eventually("the stream's entry", Duration::from_secs(5), || {
                    c.metric("meshaudit_als_entries_received_total") == u64::from(i) + 1
                })
                .await;
            }
        }
        // Give a misbehaving server every chance to take the fourth stream anyway.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.metric("meshaudit_als_streams_opened_total"), 3);
        assert_eq!(c.metric("meshaudit_als_entries_received_total"), 3);

        let first = senders.remove(0);
        drop(first);
        eventually("the queued fourth stream", Duration::from_secs(5), || {
            c.metric("meshaudit_als_entries_received_total") == 4
        })
        .await;
        drop(senders);
        for t in tasks {
            t.await.expect("task").expect("stream ends cleanly");
        }
    });
    let (status, _) = c.stop();
    assert!(status.success());
}

#[test]
fn idle_streams_are_ended_and_counted_while_active_ones_live_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &[
            "--als-stream-idle-timeout-secs",
            "1",
            "--als-max-stream-age-secs",
            "0",
        ],
    );
    let url = c.als_url();
    rt().block_on(async {
        // Active: a message every 300 ms for well past the idle timeout.
        let (tx, active) = open_fed_stream(&url).await;
        // Idle after one message.
        let (idle_tx, idle) = open_fed_stream(&url).await;
        idle_tx.send(msg(true, 100)).await.expect("send");
        // Bytes trickling in without completing a message are not activity; silence neither.
        let mut h2c = raw::connect(c.als_addr).await;
        let (trickle_resp, mut trickle) = raw::open_stream(&mut h2c).await;
        let (silent_resp, _silent) = raw::open_stream(&mut h2c).await;
        let trickler = tokio::spawn(async move {
            let bytes = raw::encode(&msg(true, 999));
            for b in bytes.iter() {
                if trickle
                    .send_data(Bytes::copy_from_slice(&[*b]), false)
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });

        let started = Instant::now();
        for i in 0..10u32 {
            tx.send(msg(i == 0, i))
                .await
                .expect("the active stream stays open");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(started.elapsed() >= Duration::from_secs(3));

        let err = tokio::time::timeout(Duration::from_secs(10), idle)
            .await
            .expect("the idle stream was ended")
            .expect("task")
            .expect_err("ended by the server");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(err.message().contains("idle"), "{err:?}");
        for resp in [trickle_resp, silent_resp] {
            let status = tokio::time::timeout(Duration::from_secs(10), raw::grpc_status(resp))
                .await
                .expect("ended by the server")
                .expect("a status");
            assert_eq!(status.0, tonic::Code::Unavailable as i32, "{status:?}");
        }
        trickler.abort();

        drop(tx);
        active
            .await
            .expect("task")
            .expect("the active stream was never idle");
    });
    assert_eq!(
        c.metric("meshaudit_als_streams_ended_total{reason=\"idle_timeout\"}"),
        3
    );
    assert_eq!(
        c.metric("meshaudit_als_streams_ended_total{reason=\"max_age\"}"),
        0
    );
    let (status, _) = c.stop();
    assert!(status.success());
    let ids = request_ids(dir.path());
    assert_eq!(ids.len(), 11, "{ids:?}");
    assert!(ids.contains(&"req-100".to_owned()));
}

#[test]
fn streams_are_ended_at_their_maximum_age_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &[
            "--als-max-stream-age-secs",
            "2",
            "--als-stream-idle-timeout-secs",
            "0",
        ],
    );
    let url = c.als_url();
    rt().block_on(async {
        // Busy: a message every 200 ms until the server ends the stream.
        let (tx, busy) = open_fed_stream(&url).await;
        let (quiet_tx, quiet) = open_fed_stream(&url).await;
        quiet_tx.send(msg(true, 1000)).await.expect("send");
        let started = Instant::now();
        let feeder = tokio::spawn(async move {
            let mut i = 0u32;
            while tx.send(msg(i == 0, i)).await.is_ok() {
                i += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let err = tokio::time::timeout(Duration::from_secs(15), busy)
            .await
            .expect("the busy stream was ended")
            .expect("task")
            .expect_err("ended by the server");
        let lived = started.elapsed();
        feeder.abort();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(err.message().contains("maximum age"), "{err:?}");
        // 2 s − 10 % jitter at the earliest; ended right after a message (≤ 2.2 s + 200 ms),
        // not by the grace for quiet streams (≥ 3.8 s).
        assert!(
            lived >= Duration::from_millis(1750) && lived < Duration::from_millis(3600),
            "lived {lived:?}"
        );

        let err = tokio::time::timeout(Duration::from_secs(15), quiet)
            .await
            .expect("the quiet stream was ended")
            .expect("task")
            .expect_err("ended by the server");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        drop(quiet_tx);
    });
    assert_eq!(
        c.metric("meshaudit_als_streams_ended_total{reason=\"max_age\"}"),
        2
    );
    let accepted = c.metric("meshaudit_als_entries_received_total");
    let (status, _) = c.stop();
    assert!(status.success());
    // Every entry the collector accepted before ending the streams is stored.
    assert_eq!(read_rows(dir.path()).len() as u64, accepted);
    assert!(
        accepted >= 9,
        "the busy stream delivered for ~2 s: {accepted}"
    );
}
