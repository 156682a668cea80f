//! `meshaudit directory sync` end to end: the real binary against a local server that answers
//! as Microsoft Graph and the Entra token endpoint document it (delta paging with nextLink and
//! deltaLink, `@removed`, 429/503 with Retry-After, a token endpoint that verifies the client
//! assertion's signature, audience, issuer and subject). Asserts the snapshot (read back with
//! the collector's own loader), the requests made, that a failed run keeps the last good
//! snapshot, and that no secret reaches stdout, stderr or any written file.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use meshaudit::join::identity::directory::Directory;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::sha2::Sha256;
use rsa::signature::Verifier as _;
use serde_json::{json, Value};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "c1c1c1c1-0000-4000-8000-00000000c1c1";
const ACCESS_TOKEN: &str = "graph-access-token-7d1f0a9e";
const SECRET: &str = "client-s3cret~VALUE.4242";
const FEDERATED: &str = "eyJhbGciOiJSUzI1NiJ9.federated-sa-token-body.sig-1234";
const USERS_SELECT: &str = "$select=id,userPrincipalName,displayName,userType";
const GROUPS_SELECT: &str = "$select=id,displayName";
const SPS_SELECT: &str = "$select=id,appId,displayName,servicePrincipalType";

#[derive(Clone)]
enum Expect {
    Assertion {
        key: rsa::PublicKey,
        x5t_s256: String,
    },
    Secret,
    Federated,
}

#[derive(Clone, Copy, PartialEq)]
enum Fail {
    None,
    /// 503 with a Retry-After longer than the sync accepts.
    LongRetryAfter,
    Http500,
}

struct Fake {
    base: String,
    expect: Expect,
    fail: Fail,
    p2_throttled_at: Option<Instant>,
    /// (when, method, path?query) of every request.
    log: Vec<(Instant, String, String)>,
    /// Why a token request was refused (none expected).
    refused: Vec<String>,
    /// Client assertions received (so the test can look for them in outputs).
    assertions: Vec<String>,
    tokens_issued: Vec<&'static str>,
}

type Shared = Arc<Mutex<Fake>>;

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(h, 16).expect("hex"));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    std::str::from_utf8(body)
        .expect("utf-8 form")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (url_decode(k), url_decode(v)))
        .collect()
}

fn json_resp(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Checks a client assertion as Entra does; `Err` says what is wrong.
fn check_assertion(
    jwt: &str,
    key: &rsa::PublicKey,
    x5t_s256: &str,
    token_url: &str,
) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts[..] else {
        return Err("not three parts".into());
    };
    let dec = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|e| e.to_string());
    let header: Value = serde_json::from_slice(&dec(h)?).map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&dec(c)?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || header["x5t#S256"] != x5t_s256 {
        return Err(format!("header {header}"));
    }
    let sig = Signature::try_from(dec(s)?.as_slice()).map_err(|e| e.to_string())?;
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "bad signature".to_owned())?;
    let t = now();
    let ok = claims["aud"] == token_url
        && claims["iss"] == CLIENT
        && claims["sub"] == CLIENT
        && claims["jti"].as_str().is_some_and(|j| !j.is_empty())
        && claims["exp"].as_u64().is_some_and(|e| e > t)
        && claims["nbf"].as_u64().is_some_and(|n| n <= t + 60);
    if !ok {
        return Err(format!("claims {claims}"));
    }
    Ok(())
}

fn token_endpoint(f: &mut Fake, path: &str, body: &[u8]) -> Response {
    let fields = form(body);
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let token_url = format!("{}{path}", f.base);
    let mut problem = None;
    if get("client_id") != CLIENT
        || get("grant_type") != "client_credentials"
        || get("scope") != format!("{}/.default", f.base)
    {
        problem = Some(format!("bad request fields {:?}", get("scope")));
    }
    let assertion_type = get("client_assertion_type");
    let assertion = get("client_assertion");
    if !assertion.is_empty() {
        f.assertions.push(assertion.clone());
    }
    let kind = match &f.expect {
        Expect::Secret => {
            if get("client_secret") != SECRET {
                problem = Some("wrong secret".into());
            }
            "secret"
        }
        Expect::Federated => {
            if assertion != FEDERATED {
                problem = Some("wrong federated token".into());
            }
            "federated"
        }
        Expect::Assertion { key, x5t_s256 } => {
            if let Err(e) = check_assertion(&assertion, key, x5t_s256, &token_url) {
                problem = Some(e);
            }
            "certificate"
        }
    };
    if !matches!(f.expect, Expect::Secret)
        && assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        problem = Some("assertion type".into());
    }
    if let Some(p) = problem {
        f.refused.push(p);
        return json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}),
        );
    }
    f.tokens_issued.push(kind);
    json_resp(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": 3599, "access_token": ACCESS_TOKEN}),
    )
}

fn page(
    f: &Fake,
    resource: &str,
    value: Value,
    next: Option<&str>,
    delta: Option<&str>,
) -> Response {
    let mut v = json!({
        "@odata.context": format!("{}/v1.0/$metadata#{resource}", f.base),
        "value": value,
    });
    if let Some(n) = next {
        v["@odata.nextLink"] = json!(format!("{}/v1.0/{resource}/delta?$skiptoken={n}", f.base));
    }
    if let Some(d) = delta {
        v["@odata.deltaLink"] = json!(format!("{}/v1.0/{resource}/delta?$deltatoken={d}", f.base));
    }
    json_resp(StatusCode::OK, v)
}

fn graph(f: &mut Fake, path: &str, query: &str) -> Response {
    let q = url_decode(query);
    let removed = |id: &str| json!({"id": id, "@removed": {"reason": "deleted"}});
    match (path, q.as_str()) {
        ("/v1.0/users/delta", USERS_SELECT) => page(
            f,
            "users",
            json!([
                {"id": "u-ada", "userPrincipalName": "ada@contoso.example", "displayName": "Ada", "userType": "Member"},
                {"id": "u-bob", "userPrincipalName": "bob@contoso.example", "displayName": "Bob", "userType": "Member"},
            ]),
            Some("p2"),
            None,
        ),
        ("/v1.0/users/delta", "$skiptoken=p2") => {
            if f.p2_throttled_at.is_none() {
                f.p2_throttled_at = Some(Instant::now());
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1"), ("content-type", "application/json")],
                    json!({"error": {"code": "TooManyRequests", "message": "Too many requests"}})
                        .to_string(),
                )
                    .into_response();
            }
            page(
                f,
                "users",
                json!([{"id": "u-gil", "userPrincipalName": "gil_fabrikam.example#EXT#@contoso.onmicrosoft.com",
                        "displayName": "Gil", "userType": "Guest"}]),
                None,
                Some("d1"),
            )
        }
        ("/v1.0/users/delta", "$deltatoken=d1") => page(
            f,
            "users",
            // Ada renamed (only the changed property), Bob deleted, Cy new.
            json!([{"id": "u-ada", "displayName": "Ada Lovelace"}, removed("u-bob"),
                   {"id": "u-cy", "userPrincipalName": "cy@contoso.example", "displayName": "Cy", "userType": "Member"}]),
            None,
            Some("d2"),
        ),
        ("/v1.0/users/delta", "$deltatoken=d2") => match f.fail {
            Fail::LongRetryAfter => (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "3600")],
                "",
            )
                .into_response(),
            Fail::Http500 => json_resp(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": {"code": "generalException", "message": "boom"}}),
            ),
            Fail::None => page(f, "users", json!([]), None, Some("d3")),
        },
        ("/v1.0/groups/delta", GROUPS_SELECT) => page(
            f,
            "groups",
            json!([{"id": "g-admins", "displayName": "Payments Admins"}, {"id": "g-old", "displayName": "Old"}]),
            None,
            Some("g1"),
        ),
        ("/v1.0/groups/delta", "$deltatoken=g1" | "$deltatoken=g2") => {
            let v = if q.ends_with("g1") {
                json!([removed("g-old")])
            } else {
                json!([])
            };
            page(f, "groups", v, None, Some("g2"))
        }
        ("/v1.0/servicePrincipals/delta", SPS_SELECT) => page(
            f,
            "servicePrincipals",
            json!([
                {"id": "sp-web", "appId": "app-web", "displayName": "orders-web", "servicePrincipalType": "Application"},
                {"id": "sp-mi", "appId": "app-mi", "displayName": "billing-mi", "servicePrincipalType": "ManagedIdentity"},
            ]),
            None,
            Some("s1"),
        ),
        ("/v1.0/servicePrincipals/delta", "$deltatoken=s1" | "$deltatoken=s2") => {
            let v = if q.ends_with("s1") {
                json!([{"id": "sp-web", "displayName": "orders-web (prod)"}])
            } else {
                json!([])
            };
            page(f, "servicePrincipals", v, None, Some("s2"))
        }
        _ => json_resp(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "BadRequest", "message": format!("unexpected {path}?{q}")}}),
        ),
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut f = state.lock().expect("lock");
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    f.log.push((
        Instant::now(),
        method.to_string(),
        format!("{path}?{}", url_decode(&query)),
    ));
    if method == Method::POST && path == format!("/{TENANT}/oauth2/v2.0/token") {
        return token_endpoint(&mut f, &path, &body);
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if method != Method::GET || auth != format!("Bearer {ACCESS_TOKEN}") {
        return json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "no"}}),
        );
    }
    graph(&mut f, &path, &query)
}

/// Starts the fake on a free port, on its own runtime thread.
fn start(expect: Expect) -> (Shared, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let state = Arc::new(Mutex::new(Fake {
        base: base.clone(),
        expect,
        fail: Fail::None,
        p2_throttled_at: None,
        log: Vec::new(),
        refused: Vec::new(),
        assertions: Vec::new(),
        tokens_issued: Vec::new(),
    }));
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&state));
    std::thread::spawn(move || {
        let rt = common::rt();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(l, app).await.expect("serve");
        });
    });
    (state, base)
}

fn sync(base: &str, out: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshaudit"));
    cmd.args(["directory", "sync", "--out"])
        .arg(out)
        .args(["--tenant-id", TENANT, "--client-id", CLIENT])
        .args(["--graph-url", base, "--authority-url", base])
        .args(args)
        .env("RUST_LOG", "debug");
    for k in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_AUTHORITY_HOST",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run meshaudit directory sync")
}

fn ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "sync failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("summary JSON")
}

fn requests_since(state: &Shared, from: usize) -> Vec<String> {
    state.lock().expect("lock").log[from..]
        .iter()
        .map(|(_, m, p)| format!("{m} {p}"))
        .collect()
}

fn log_len(state: &Shared) -> usize {
    state.lock().expect("lock").log.len()
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// DER: a tag, its length, its content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | len.len() as u8);
        out.extend(len);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER from unsigned big-endian bytes.
fn der_uint(be: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    if v.is_empty() || v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

/// The key as PKCS#8 DER (RFC 8017 RSAPrivateKey inside RFC 5208 PrivateKeyInfo): the rsa
/// crate is built without its encoding feature, and building it for a test is not worth it.
fn pkcs8(key: &rsa::PrivateKey) -> Vec<u8> {
    use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
    let primes = key.primes();
    let parts = [
        der_uint(&[0]),
        der_uint(&key.n_bytes()),
        der_uint(&key.e_bytes()),
        der_uint(&key.d().to_be_bytes()),
        der_uint(&primes[0].to_be_bytes()),
        der_uint(&primes[1].to_be_bytes()),
        der_uint(&key.dp().expect("dp").to_be_bytes()),
        der_uint(&key.dq().expect("dq").to_be_bytes()),
        der_uint(&key.qinv().expect("qinv").retrieve().to_be_bytes()),
    ];
    let pkcs1 = der(0x30, &parts.concat());
    // AlgorithmIdentifier: rsaEncryption (1.2.840.113549.1.1.1), NULL.
    let alg = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    der(0x30, &[der_uint(&[0]), alg, der(0x04, &pkcs1)].concat())
}

/// A self-signed certificate with a fresh RSA key, as one PEM file; its key and thumbprint.
fn certificate(dir: &Path) -> (PathBuf, rsa::PublicKey, String, String) {
    let key = common::jwt::rsa_key();
    let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8(&key)),
        &rcgen::PKCS_RSA_SHA256,
    )
    .expect("rcgen key");
    let cert = rcgen::CertificateParams::new(vec!["meshaudit-sync".into()])
        .expect("params")
        .self_signed(&kp)
        .expect("self-signed");
    let x5t = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, cert.der()));
    let key_pem = kp.serialize_pem();
    let path = dir.join("sync-cert.pem");
    std::fs::write(&path, format!("{}{}", cert.pem(), key_pem)).expect("write cert");
    // A line from the middle of the key: must never show up anywhere.
    let key_line = key_pem.lines().nth(5).expect("key body").to_owned();
    (path, key.to_public_key(), x5t, key_line)
}

#[test]
fn sync_pages_throttles_deltas_and_keeps_the_last_good_snapshot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let secrets_dir = tmp.path().join("secrets");
    std::fs::create_dir(&secrets_dir).expect("mkdir");
    let (cert, public, x5t, key_line) = certificate(&secrets_dir);
    let (state, base) = start(Expect::Assertion {
        key: public,
        x5t_s256: x5t,
    });
    let dir = tmp.path().join("directory");
    std::fs::create_dir(&dir).expect("mkdir");
    let out = dir.join("directory.json");
    let delta_state = dir.join("directory.json.graph-delta.json");
    let mut outputs: Vec<Output> = Vec::new();

    // ---- 1: full, certificate credential, paging, one 429 --------------------------------
    let o = sync(
        &base,
        &out,
        &["--client-certificate", cert.to_str().expect("utf-8")],
        &[],
    );
    let summary = ok(&o);
    outputs.push(o);
    assert_eq!(
        summary["rounds"],
        json!({"users": "full", "groups": "full", "servicePrincipals": "full"})
    );
    assert_eq!(summary["http"]["throttled"], 1);
    let reqs = requests_since(&state, 0);
    assert_eq!(
        reqs,
        [
            format!("POST /{TENANT}/oauth2/v2.0/token?"),
            format!("GET /v1.0/users/delta?{USERS_SELECT}"),
            "GET /v1.0/users/delta?$skiptoken=p2".to_owned(),
            "GET /v1.0/users/delta?$skiptoken=p2".to_owned(),
            format!("GET /v1.0/groups/delta?{GROUPS_SELECT}"),
            format!("GET /v1.0/servicePrincipals/delta?{SPS_SELECT}"),
        ],
        "one token, $select on every first request, the nextLink followed, the 429 retried"
    );
    {
        let f = state.lock().expect("lock");
        assert!(f.refused.is_empty(), "{:?}", f.refused);
        assert_eq!(f.tokens_issued, ["certificate"]);
        let throttled = f.p2_throttled_at.expect("throttled");
        let retried = f.log[3].0;
        assert!(
            retried.duration_since(throttled) >= Duration::from_secs(1),
            "Retry-After honoured"
        );
    }
    let snap: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("snapshot")).expect("json");
    assert_eq!(
        snap["users"],
        json!({
            "u-ada": {"upn": "ada@contoso.example", "display_name": "Ada", "user_type": "Member"},
            "u-bob": {"upn": "bob@contoso.example", "display_name": "Bob", "user_type": "Member"},
            "u-gil": {"upn": "gil_fabrikam.example#EXT#@contoso.onmicrosoft.com", "display_name": "Gil", "user_type": "Guest"},
        })
    );
    assert_eq!(
        snap["groups"],
        json!({"g-admins": "Payments Admins", "g-old": "Old"})
    );
    assert_eq!(
        snap["applications"],
        json!({"app-web": "orders-web", "app-mi": "billing-mi"})
    );
    assert_eq!(snap["managed_identities"], json!(["app-mi", "sp-mi"]));
    // The collector's own loader reads it.
    let d = Directory::from_json(&std::fs::read(&out).expect("read")).expect("loads");
    assert_eq!(
        d.user("u-gil").and_then(|u| u.user_type.as_deref()),
        Some("Guest")
    );
    assert!(d.is_managed_identity("sp-mi") && d.is_managed_identity("app-mi"));
    assert_eq!(d.synced_at(), snap["synced_at"].as_str());
    let st: Value =
        serde_json::from_slice(&std::fs::read(&delta_state).expect("delta state")).expect("json");
    assert_eq!(st["synced_at"], snap["synced_at"]);
    assert_eq!(
        st["links"]["users"],
        format!("{base}/v1.0/users/delta?$deltatoken=d1")
    );

    // ---- 2: delta, client secret from a file ----------------------------------------------
    state.lock().expect("lock").expect = Expect::Secret;
    let secret_file = secrets_dir.join("client-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("secret");
    let from = log_len(&state);
    let o = sync(
        &base,
        &out,
        &["--client-secret-file", secret_file.to_str().expect("utf-8")],
        &[],
    );
    let summary = ok(&o);
    outputs.push(o);
    assert_eq!(
        summary["rounds"],
        json!({"users": "delta", "groups": "delta", "servicePrincipals": "delta"})
    );
    assert_eq!(
        summary["received"],
        json!({"users": 3, "groups": 1, "servicePrincipals": 1})
    );
    assert_eq!(
        requests_since(&state, from),
        [
            format!("POST /{TENANT}/oauth2/v2.0/token?"),
            "GET /v1.0/users/delta?$deltatoken=d1".to_owned(),
            "GET /v1.0/groups/delta?$deltatoken=g1".to_owned(),
            "GET /v1.0/servicePrincipals/delta?$deltatoken=s1".to_owned(),
        ],
        "the second run starts from the stored deltaLinks and fetches only changes"
    );
    let snap: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("snapshot")).expect("json");
    let users: BTreeSet<&str> = snap["users"]
        .as_object()
        .expect("users")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        users,
        BTreeSet::from(["u-ada", "u-cy", "u-gil"]),
        "bob removed, cy added"
    );
    assert_eq!(
        snap["users"]["u-ada"],
        json!({"upn": "ada@contoso.example", "display_name": "Ada Lovelace", "user_type": "Member"}),
        "a partial update keeps the properties it does not carry"
    );
    assert_eq!(snap["groups"], json!({"g-admins": "Payments Admins"}));
    assert_eq!(snap["applications"]["app-web"], "orders-web (prod)");
    let good = std::fs::read(&out).expect("snapshot");
    let good_state = std::fs::read(&delta_state).expect("state");

    // ---- 3: failures keep the last good snapshot (workload identity credential) ------------
    state.lock().expect("lock").expect = Expect::Federated;
    let token_file = secrets_dir.join("azure-identity-token");
    std::fs::write(&token_file, FEDERATED).expect("token file");
    let wi_env = [(
        "AZURE_FEDERATED_TOKEN_FILE",
        token_file.to_str().expect("utf-8"),
    )];
    for (fail, needle) in [
        (Fail::LongRetryAfter, "still throttled"),
        (Fail::Http500, "HTTP 500"),
    ] {
        state.lock().expect("lock").fail = fail;
        let o = sync(
            &base,
            &out,
            &["--max-retry-after-secs", "5", "--max-retries", "1"],
            &wi_env,
        );
        assert!(!o.status.success(), "the run must fail");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains(needle), "{err}");
        assert_eq!(
            std::fs::read(&out).expect("snapshot"),
            good,
            "last good snapshot kept"
        );
        assert_eq!(std::fs::read(&delta_state).expect("state"), good_state);
        outputs.push(o);
    }
    assert!(state
        .lock()
        .expect("lock")
        .tokens_issued
        .contains(&"federated"));
    // No temporary file is left behind.
    assert_eq!(all_files(&dir).len(), 2, "{:?}", all_files(&dir));

    // ---- 4: the secret from the environment; the next run succeeds from the same links ----
    state.lock().expect("lock").expect = Expect::Secret;
    state.lock().expect("lock").fail = Fail::None;
    let o = sync(&base, &out, &[], &[("AZURE_CLIENT_SECRET", SECRET)]);
    let summary = ok(&o);
    outputs.push(o);
    assert_eq!(summary["users"], 3);
    assert!(state.lock().expect("lock").refused.is_empty());

    // ---- a refused credential: the token endpoint's reason, the fix, the file untouched ----
    let before = std::fs::read(&out).expect("snapshot");
    let wrong = secrets_dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret-9f8e").expect("secret");
    let o = sync(
        &base,
        &out,
        &["--client-secret-file", wrong.to_str().expect("utf-8")],
        &[],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("HTTP 401") && err.contains("invalid_client") && err.contains("Fix:"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret-9f8e"), "{err}");
    assert_eq!(std::fs::read(&out).expect("snapshot"), before);
    state.lock().expect("lock").refused.clear();
    outputs.push(o);

    // ---- two credentials: refused before anything is sent, naming both, quoting neither ---
    let from = log_len(&state);
    let o = sync(
        &base,
        &out,
        &["--client-secret-file", secret_file.to_str().expect("utf-8")],
        &[("AZURE_CLIENT_SECRET", SECRET)],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("exactly one credential")
            && err.contains("--client-secret-file")
            && err.contains("AZURE_CLIENT_SECRET"),
        "{err}"
    );
    assert_eq!(log_len(&state), from, "nothing sent");
    outputs.push(o);

    // ---- no secret anywhere: outputs, the snapshot, the delta state, --help ----------------
    let help = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(["directory", "sync", "--help"])
        .env("AZURE_CLIENT_SECRET", SECRET)
        .output()
        .expect("help");
    outputs.push(help);
    let assertions = state.lock().expect("lock").assertions.clone();
    assert!(!assertions.is_empty());
    let mut needles: Vec<String> = vec![
        SECRET.into(),
        FEDERATED.into(),
        ACCESS_TOKEN.into(),
        key_line,
    ];
    needles.extend(assertions);
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        haystacks.push((format!("run {i} stdout"), o.stdout.clone()));
        haystacks.push((format!("run {i} stderr"), o.stderr.clone()));
    }
    for f in all_files(&dir) {
        haystacks.push((f.display().to_string(), std::fs::read(&f).expect("read")));
    }
    let debug_lines: usize = outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).lines().count())
        .sum();
    assert!(debug_lines > 10, "the runs logged (at debug level)");
    for (name, hay) in &haystacks {
        let text = String::from_utf8_lossy(hay);
        for n in &needles {
            assert!(!text.contains(n.as_str()), "a secret is in {name}");
        }
    }
}
