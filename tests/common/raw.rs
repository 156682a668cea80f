//! Raw HTTP/2 (the `h2` crate) for clients no gRPC library would produce: truncated frames,
//! bytes trickled one at a time, streams that never send anything.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use prost::Message;

/// An HTTP/2 (h2c) connection to `addr`; its driver runs on a spawned task.
pub async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Opens a StreamAccessLogs stream (request headers only, body still open).
pub async fn open_stream(client: &mut SendRequest<Bytes>) -> (ResponseFuture, SendStream<Bytes>) {
    let ready = client.clone().ready().await.expect("h2 ready");
    *client = ready;
    let req = http::Request::post("/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    client.send_request(req, false).expect("send request")
}

/// A gRPC length-prefixed frame: flag 0 (uncompressed), then the big-endian length.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

pub fn encode(msg: &StreamAccessLogsMessage) -> Bytes {
    frame(&msg.encode_to_vec())
}

/// The stream's gRPC status code and message: from a trailers-only response's headers, or from
/// the trailers after the body.
pub async fn grpc_status(response: ResponseFuture) -> Result<(i32, String), h2::Error> {
    let resp = response.await?;
    let (parts, mut body) = resp.into_parts();
    let read = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(|code| {
                let msg = h
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                (code, percent_decode(msg))
            })
    };
    if let Some(s) = read(&parts.headers) {
        return Ok(s);
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(read(&trailers).unwrap_or((-1, "no grpc-status".to_owned())))
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
