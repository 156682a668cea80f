//! Entra-style tokens for integration tests: RSA keys generated here, a local JWKS endpoint
//! whose keys can be rotated while the collector runs, RS256 tokens minted the way Entra mints
//! them, and jwt_authn metadata as Istio's proxy writes it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use rsa::pkcs1v15::SigningKey;
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;

/// A fresh 2048-bit RSA key (Entra's size).
pub fn rsa_key() -> rsa::PrivateKey {
    rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA key generation")
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS document as Entra publishes it (`kty`, `use`, `kid`, `x5t`, `n`, `e`, `issuer`).
pub fn jwks(keys: &[(&str, &rsa::PrivateKey)]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, k)| {
            let p = k.to_public_key();
            serde_json::json!({
                "kty": "RSA", "use": "sig", "kid": kid, "x5t": kid,
                "n": b64(&p.n_bytes()), "e": b64(&p.e_bytes()),
                "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// `header.payload.signature`, RS256 over the first two parts.
pub fn mint(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    key: &rsa::PrivateKey,
) -> String {
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = SigningKey::<Sha256>::new(key.clone()).sign(signed.as_bytes());
    format!("{signed}.{}", b64(&sig.to_bytes()))
}

/// Entra's header: v2 tokens carry `kid`, v1 tokens `kid` and `x5t`.
pub fn entra_header(kid: &str, v1: bool) -> serde_json::Value {
    if v1 {
        serde_json::json!({"typ": "JWT", "alg": "RS256", "x5t": kid, "kid": kid})
    } else {
        serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": kid})
    }
}

/// A JSON value as a `google.protobuf.Value` (how jwt_authn puts claims in metadata).
pub fn to_pb(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_pb).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_pb(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The `envoy.filters.http.jwt_authn` namespace as Istio ≥ 1.21 writes it.
pub fn jwt_authn_payload(claims: &serde_json::Value) -> Struct {
    match to_pb(&serde_json::json!({ "payload": claims })).kind {
        Some(Kind::StructValue(s)) => s,
        _ => unreachable!("an object converts to a Struct"),
    }
}

/// A JWKS endpoint on a free local port. Serves whatever [`JwksServer::serve`] last set and
/// counts the requests it answered.
pub struct JwksServer {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind JWKS server");
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(body));
        let requests = Arc::new(AtomicUsize::new(0));
        let (b, r) = (Arc::clone(&body), Arc::clone(&requests));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if read_request(&mut conn).is_none() {
                    continue;
                }
                let doc = b.lock().expect("body lock").clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        JwksServer {
            addr,
            body,
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/common/discovery/v2.0/keys", self.addr)
    }

    /// Replaces the published keys (a rotation).
    pub fn serve(&self, body: String) {
        *self.body.lock().expect("body lock") = body;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn read_request(conn: &mut TcpStream) -> Option<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

/// An endpoint that accepts connections and never answers: a key server that hangs.
pub struct BlackHole {
    pub addr: SocketAddr,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind black hole");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                held.push(conn);
            }
        });
        BlackHole { addr }
    }
}
