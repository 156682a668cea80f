//! Seeding through the real collector: crafted Envoy entries for the rare cases, ten days back,
//! and `meshaudit loadgen` traffic now.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::data::accesslog::v3::{
    tls_properties::{
        certificate_properties::subject_alt_name::San, certificate_properties::SubjectAltName,
        CertificateProperties,
    },
    HttpAccessLogEntry, ResponseFlags, TlsProperties,
};
use envoy_types::pb::google::protobuf::{
    value::Kind, Struct, Timestamp, UInt32Value, Value as PbValue,
};
use meshaudit::record::values;
use serde_json::{json, Value};

use crate::common::jwt::*;
use crate::common::pg::PgCluster;
use crate::common::*;
use crate::grafana;

pub const TID: &str = "11111111-2222-3333-4444-555555555555";
pub const OTHER_TID: &str = "99999999-2222-3333-4444-555555555555";
pub const API: &str = "7f1b2c3d-0000-4000-8000-00000000a001";
pub const WEB_APP: &str = "2a3b4c5d-0000-4000-8000-00000000c001";
pub const SP_APP: &str = "3c4d5e6f-0000-4000-8000-00000000c002";
pub const MI_APP: &str = "4d5e6f70-0000-4000-8000-00000000c003";
pub const MI_OID: &str = "9e8d7c6b-0000-4000-8000-00000000e002";
pub const ADA: &str = "oid-ada";
pub const ADA_UPN: &str = "ada@contoso.example";
/// An object id a forged or odd token could carry: a quote and a backslash must survive
/// Grafana's quoting and select exactly this identity.
pub const OBRIEN: &str = "oid-o'brien\\ops";
/// Two people whose tokens carry no name claim (no upn, preferred_username, name or email, as
/// Entra v2 tokens often do), both signing in through the client app `orders-web` (WEB_APP).
pub const NAMELESS_1: &str = "6e7f8091-0000-4000-8000-00000000d001";
pub const NAMELESS_2: &str = "6e7f8091-0000-4000-8000-00000000d002";
/// Their verified requests in the seed: (object id, requests, of which RBAC denied). A forged
/// token also claims NAMELESS_2 once (token-health's claimed identities).
pub const NAMELESS: [(&str, usize, usize); 2] = [(NAMELESS_1, 3, 2), (NAMELESS_2, 2, 1)];
pub const GROUP: &str = "5c6d7e8f-0000-4000-8000-00000000b001";
/// A group id the load generator's users carry (`5c6d...-{g:012x}`), named in the directory.
pub const LOADGEN_GROUP: &str = "5c6d7e8f-0000-4000-8000-000000000001";

fn v2_iss(tid: &str) -> String {
    format!("https://login.microsoftonline.com/{tid}/v2.0")
}

fn user_claims(oid: &str, upn: &str, at: i64) -> Value {
    json!({
        "aud": API, "iss": v2_iss(TID), "ver": "2.0",
        "iat": at - 300, "nbf": at - 300, "exp": at + 3300,
        "azp": WEB_APP, "azpacr": "0", "name": format!("Name of {upn}"),
        "preferred_username": upn, "oid": oid, "sub": format!("sub-{oid}"),
        "tid": TID, "scp": "Orders.Read", "groups": [GROUP, LOADGEN_GROUP],
        "uti": format!("uti-{oid}-{at}")
    })
}

fn app_claims(oid: &str, azp: &str, at: i64) -> Value {
    json!({
        "aud": API, "iss": v2_iss(TID), "ver": "2.0",
        "iat": at - 60, "nbf": at - 60, "exp": at + 3540,
        "azp": azp, "azpacr": "2", "oid": oid, "sub": oid, "tid": TID,
        "roles": ["Payments.Write"], "idtyp": "app", "uti": format!("uti-{oid}-{at}")
    })
}

fn patch(mut v: Value, p: Value) -> Value {
    if let (Some(o), Some(p)) = (v.as_object_mut(), p.as_object()) {
        for (k, x) in p {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

fn san(uri: &str) -> CertificateProperties {
    CertificateProperties {
        subject_alt_name: vec![SubjectAltName {
            san: Some(San::Uri(uri.into())),
        }],
        ..Default::default()
    }
}

fn string_struct(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    PbValue {
                        kind: Some(Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect(),
    }
}

/// The crafted entries, one every 50 s from `at0`: the harness entry, from frontend/web to
/// payments/ledger.
struct Crafted {
    at0: i64,
    entries: Vec<HttpAccessLogEntry>,
}

impl Crafted {
    /// The start time of the next entry.
    fn at(&self) -> i64 {
        self.at0 + (self.entries.len() as i64 + 1) * 50
    }

    /// The next entry (not yet added).
    fn entry(&self) -> HttpAccessLogEntry {
        let mut e = http_entry(10_000 + self.entries.len() as u32);
        let c = e
            .common_properties
            .as_mut()
            .expect("harness entries have common properties");
        c.start_time = Some(Timestamp {
            seconds: self.at(),
            nanos: 0,
        });
        c.tls_properties = Some(TlsProperties {
            peer_certificate_properties: Some(san("spiffe://cluster.local/ns/frontend/sa/web")),
            local_certificate_properties: Some(san("spiffe://cluster.local/ns/payments/sa/ledger")),
            ..Default::default()
        });
        e
    }

    /// The next entry carrying `authorization: Bearer <token>` (checked by the collector),
    /// `token` minting it for the entry's start time.
    fn with_token(&self, token: impl FnOnce(i64) -> String) -> HttpAccessLogEntry {
        let mut e = self.entry();
        let token = token(self.at());
        if let Some(r) = e.request.as_mut() {
            r.request_headers
                .insert("authorization".into(), format!("Bearer {token}"));
        }
        e
    }

    fn push(&mut self, e: HttpAccessLogEntry) {
        self.entries.push(e);
    }

    fn push_token(&mut self, token: impl FnOnce(i64) -> String) {
        let e = self.with_token(token);
        self.push(e);
    }
}

fn respond(e: &mut HttpAccessLogEntry, code: u32, details: &str) {
    if let Some(r) = e.response.as_mut() {
        r.response_code = Some(UInt32Value { value: code });
        r.response_code_details = details.into();
    }
}

fn rbac(e: &mut HttpAccessLogEntry, pairs: &[(&str, &str)]) {
    if let Some(c) = e.common_properties.as_mut() {
        c.metadata = Some(Metadata {
            filter_metadata: [("envoy.filters.http.rbac".to_owned(), string_struct(pairs))].into(),
            ..Default::default()
        });
    }
}

fn rbac_deny(e: &mut HttpAccessLogEntry, policy: &str) {
    rbac(
        e,
        &[
            ("enforced_engine_result", "denied"),
            ("enforced_effective_policy_id", policy),
        ],
    );
    respond(
        e,
        403,
        &format!("rbac_access_denied_matched_policy[{policy}]"),
    );
}

/// Entries for what load traffic lacks: every token status from a raw token and from a proxy
/// rejection, guests, managed identities, group overage, an impersonation of a verified user,
/// an object id with a quote and a backslash, an authorizer error, 5xx with response flags.
fn crafted_entries(
    at0: i64,
    k0: &rsa::PrivateKey,
    rogue: &rsa::PrivateKey,
) -> Vec<HttpAccessLogEntry> {
    let h = entra_header("k0", false);
    let sign = |c: Value| mint(&h, &c, k0);
    // Names the published key but is signed by another: bad_signature, claims kept.
    let forge = |c: Value| mint(&h, &c, rogue);
    let mut c = Crafted {
        at0,
        entries: vec![],
    };

    // Ada: three verified requests (one allowed by RBAC, one a dry-run deny), then a forged
    // token claiming her identity, which must never count as verified.
    let allow = ("enforced_engine_result", "allowed");
    let policy = (
        "enforced_effective_policy_id",
        "ns[payments]-policy[allow-frontend]-rule[0]",
    );
    c.push_token(|at| sign(user_claims(ADA, ADA_UPN, at)));
    let mut e = c.with_token(|at| sign(user_claims(ADA, ADA_UPN, at)));
    rbac(&mut e, &[allow, policy]);
    c.push(e);
    let mut e = c.with_token(|at| sign(user_claims(ADA, ADA_UPN, at)));
    rbac(
        &mut e,
        &[
            allow,
            policy,
            ("istio_dry_run_deny_shadow_engine_result", "denied"),
            (
                "istio_dry_run_deny_shadow_effective_policy_id",
                "ns[payments]-policy[deny-after-hours]-rule[0]",
            ),
        ],
    );
    c.push(e);
    c.push_token(|at| forge(user_claims(ADA, ADA_UPN, at)));
    for _ in 0..2 {
        c.push_token(|at| sign(user_claims(OBRIEN, "o'brien@contoso.example", at)));
    }
    // Two people without name claims through the same client app (orders-web): some of their
    // requests denied by RBAC. Callers must stay two, named by object id, never by the app.
    let nameless = |oid: &str, at: i64| {
        let mut v = user_claims(oid, "unused", at);
        if let Some(o) = v.as_object_mut() {
            o.remove("name");
            o.remove("preferred_username");
        }
        v
    };
    for (oid, requests, denied) in NAMELESS {
        for n in 0..requests {
            let mut e = c.with_token(|at| sign(nameless(oid, at)));
            if n < denied {
                rbac_deny(&mut e, "ns[payments]-policy[deny-unlisted-users]-rule[0]");
            }
            c.push(e);
        }
    }
    // A forged token claiming the second of them: a claimed identity without a name.
    c.push_token(|at| forge(nameless(NAMELESS_2, at)));

    // A v1 token (sts.windows.net issuer, appid, upn).
    c.push_token(|at| {
        let claims = json!({
            "aud": API, "iss": format!("https://sts.windows.net/{TID}/"), "ver": "1.0",
            "iat": at - 300, "nbf": at - 300, "exp": at + 3300, "appid": WEB_APP,
            "upn": "bob@contoso.example", "name": "Bob", "oid": "oid-bob", "sub": "sub-bob",
            "tid": TID, "scp": "Orders.Read", "amr": ["pwd", "mfa"], "uti": "uti-bob"
        });
        mint(&entra_header("k0", true), &claims, k0)
    });

    // A guest: verified, forged, and verified but denied by RBAC.
    let guest = |at: i64| {
        patch(
            user_claims(
                "oid-carol",
                "carol_fabrikam.example#EXT#@contoso.example",
                at,
            ),
            json!({"idp": format!("https://sts.windows.net/{OTHER_TID}/"), "acct": 1}),
        )
    };
    c.push_token(|at| sign(guest(at)));
    c.push_token(|at| forge(guest(at)));
    let mut e = c.with_token(|at| sign(guest(at)));
    rbac_deny(&mut e, "ns[payments]-policy[deny-guests]-rule[0]");
    c.push(e);

    // A service principal (named in the directory): verified twice, once for another API.
    for _ in 0..2 {
        c.push_token(|at| sign(app_claims("oid-billing", SP_APP, at)));
    }
    c.push_token(|at| {
        sign(patch(
            app_claims("oid-billing", SP_APP, at),
            json!({"aud": "00000003-0000-0000-c000-000000000000"}),
        ))
    });

    // A managed identity: verified, expired, verified but denied.
    c.push_token(|at| sign(app_claims(MI_OID, MI_APP, at)));
    c.push_token(|at| {
        sign(patch(
            app_claims(MI_OID, MI_APP, at),
            json!({"exp": at - 900}),
        ))
    });
    let mut e = c.with_token(|at| sign(app_claims(MI_OID, MI_APP, at)));
    rbac_deny(&mut e, "ns[payments]-policy[deny-batch-writes]-rule[1]");
    c.push(e);

    // Group overage (no groups claim, a pointer to Graph instead), verified and forged.
    let overage = |at: i64| {
        let mut v = user_claims("oid-dave", "dave@contoso.example", at);
        if let Some(o) = v.as_object_mut() {
            o.remove("groups");
            o.insert("_claim_names".into(), json!({"groups": "src1"}));
            o.insert(
                "_claim_sources".into(),
                json!({"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}),
            );
        }
        v
    };
    c.push_token(|at| sign(overage(at)));
    c.push_token(|at| forge(overage(at)));

    // Every other way a raw token fails.
    let user = |oid: &str, at: i64| user_claims(oid, &format!("{oid}@contoso.example"), at);
    c.push_token(|at| {
        sign(patch(
            user("oid-erin", at),
            json!({"aud": "api://someone-else"}),
        ))
    });
    c.push_token(|at| sign(patch(user("oid-frank", at), json!({"exp": at - 900}))));
    c.push_token(|at| {
        sign(patch(
            user("oid-grace", at),
            json!({"iss": v2_iss(OTHER_TID), "tid": OTHER_TID}),
        ))
    });
    c.push_token(|at| {
        mint(
            &entra_header("k-unknown", false),
            &user("oid-heidi", at),
            rogue,
        )
    });
    c.push_token(|at| {
        sign(patch(
            user("oid-ivan", at),
            json!({"iat": at + 3600, "nbf": at + 3600, "exp": at + 7200}),
        ))
    });
    c.push_token(|_| "not-a-jwt".to_owned());

    // Tokens the proxy rejected itself: no claims, an external client at the gateway (no peer
    // certificate, no upstream, so no namespaces either).
    for reason in [
        "Jwt_is_expired",
        "Jwt_not_yet_valid",
        "Jwt_issuer_is_not_configured",
        "Audiences_in_Jwt_are_not_allowed",
        "Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt",
        "Jwt_verification_fails",
        "Jwt_is_not_in_the_form_of_Header.Payload.Signature_with_two_dots_and_3_sections",
    ] {
        let mut e = c.entry();
        if let Some(cp) = e.common_properties.as_mut() {
            cp.tls_properties = None;
            cp.upstream_cluster.clear();
            cp.upstream_remote_address = None;
        }
        respond(&mut e, 401, &format!("jwt_authn_access_denied{{{reason}}}"));
        c.push(e);
    }

    // The ext_authz service failed (the CUSTOM policy that calls it matched).
    let mut e = c.entry();
    rbac(
        &mut e,
        &[
            ("istio_ext_authz_shadow_engine_result", "denied"),
            (
                "istio_ext_authz_shadow_effective_policy_id",
                "istio-ext-authz-ns[payments]-policy[opa-check]-rule[0]",
            ),
        ],
    );
    respond(&mut e, 403, "ext_authz_error");
    c.push(e);

    // Upstream trouble, with Envoy's response flags.
    let flags = [
        (
            503,
            ResponseFlags {
                no_healthy_upstream: true,
                ..Default::default()
            },
        ),
        (
            504,
            ResponseFlags {
                upstream_request_timeout: true,
                ..Default::default()
            },
        ),
        (
            429,
            ResponseFlags {
                rate_limited: true,
                ..Default::default()
            },
        ),
    ];
    for (code, f) in flags {
        let mut e = c.entry();
        if let Some(cp) = e.common_properties.as_mut() {
            cp.response_flags = Some(f);
        }
        respond(&mut e, code, "via_upstream");
        c.push(e);
    }

    // A workload with no token and no authorizer evidence.
    let e = c.entry();
    c.push(e);

    // Two workloads named only by Istio peer metadata (no certificate in the entry):
    // identity_source peer_metadata, never counted as mTLS.
    for _ in 0..2 {
        let mut e = c.entry();
        if let Some(cp) = e.common_properties.as_mut() {
            cp.tls_properties = None;
            cp.filter_state_objects.insert(
                "downstream_peer".to_owned(),
                envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/google.protobuf.Struct".to_owned(),
                    value: prost::Message::encode_to_vec(&string_struct(&[
                        ("namespace", "frontend"),
                        ("workload", "web"),
                    ])),
                },
            );
        }
        c.push(e);
    }
    c.entries
}

pub struct Seed {
    /// Start of the crafted entries (ten days ago).
    pub crafted_from: DateTime<Utc>,
    pub crafted_to: DateTime<Utc>,
    /// When seeding finished (the load generator's records are just before).
    pub now: DateTime<Utc>,
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn seed(pg: &PgCluster, db: &str, url: &str) -> Seed {
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(["migrate", "--database-url", url])
        .output()
        .expect("run meshaudit migrate");
    assert!(
        out.status.success(),
        "meshaudit migrate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let k0 = rsa_key();
    let rogue = rsa_key();
    let jwks_server = JwksServer::start(jwks(&[("k0", &k0)]));
    let dir = tempfile::tempdir().expect("tempdir");
    let directory = dir.path().join("directory.json");
    std::fs::write(
        &directory,
        json!({
            "groups": { GROUP: "Payments Admins", LOADGEN_GROUP: "Orders Readers" },
            "applications": { WEB_APP: "orders-web", SP_APP: "billing-batch", MI_APP: "ledger-sync" },
            "managed_identities": [MI_OID]
        })
        .to_string(),
    )
    .expect("write directory");
    let jwks_url = jwks_server.url();
    let directory_arg = directory.to_string_lossy().into_owned();
    let c = Collector::start(
        &dir.path().join("data"),
        &[
            "--database-url",
            url,
            "--entra-tenant",
            TID,
            "--audience",
            API,
            "--jwks-url",
            &jwks_url,
            "--directory",
            &directory_arg,
            "--jwks-timeout-ms",
            "3000",
        ],
    );

    let now = Utc::now().timestamp();
    let at0 = now - 10 * 86_400;
    let entries = crafted_entries(at0, &k0, &rogue);
    let crafted = entries.len() as i64;
    let crafted_to = at0 + (crafted + 1) * 50;
    let als = c.als_url();
    rt().block_on(async {
        stream(
            &als,
            vec![http_message(Some(identifier(NODE_ID, LOG_NAME)), entries)],
        )
        .await
        .expect("crafted entries accepted");
    });

    // Volume, now: users and service principals verified by the proxy, workloads, TCP, RBAC
    // and ext_authz denials, dry runs.
    let target = c.als_addr.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args([
            "loadgen",
            "--target",
            &target,
            "--streams",
            "2",
            "--connections",
            "1",
        ])
        .args([
            "--duration-secs",
            "0.5",
            "--rate",
            "1000",
            "--tokens",
            "200",
        ])
        .args(["--deny-ratio", "0.13", "--tcp-share", "0.1", "--seed", "11"])
        .output()
        .expect("run meshaudit loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("loadgen report {stdout}: {e}"));
    assert_eq!(report["errors"], 0, "{report}");
    let sent = report["entries"]
        .as_i64()
        .expect("entries in the loadgen report");
    assert!(sent > 100, "{report}");

    let want = crafted + sent;
    wait_until("every record in postgres", Duration::from_secs(60), || {
        pg.count(db, "SELECT count(*) FROM audit_records") >= want
    });
    let (status, log) = c.stop();
    assert!(status.success(), "collector exit {status}:\n{log}");
    assert_eq!(pg.count(db, "SELECT count(*) FROM audit_records"), want);
    // A row as collectors before `peer_metadata` wrote it: Istio peer metadata alone, stored as
    // `mtls` with no source_principal. Dashboards must read it as peer metadata.
    pg.psql(
        db,
        &format!(
            "INSERT INTO audit_records (record_id, start_time, received_at, entry_kind, \
             response_flags, source_namespace, source_workload, identity_kind, identity_source, \
             token_status, decision, decision_engine) VALUES ('{:032x}', \
             to_timestamp({}), to_timestamp({}), 'http', '{{}}', 'frontend', 'legacy', \
             'workload', 'mtls', 'absent', 'unevaluated', 'none')",
            0x01d_u128,
            at0 + 25,
            at0 + 26
        ),
    );

    // The seed covers every value the dashboards distinguish, so that an empty panel below
    // means a broken query, not a thin seed.
    let present = |col: &str| -> BTreeSet<String> {
        pg.psql(db, &format!("SELECT DISTINCT {col} FROM audit_records"))
            .lines()
            .map(str::to_owned)
            .collect()
    };
    use values::*;
    for (col, want) in [
        (
            "token_status",
            vec![
                TOKEN_VERIFIED,
                TOKEN_PROXY_VERIFIED,
                TOKEN_EXPIRED,
                TOKEN_NOT_YET_VALID,
                TOKEN_BAD_SIGNATURE,
                TOKEN_UNKNOWN_KEY,
                TOKEN_WRONG_AUDIENCE,
                TOKEN_UNTRUSTED_ISSUER,
                TOKEN_MALFORMED,
                TOKEN_ABSENT,
            ],
        ),
        (
            "identity_kind",
            vec![
                KIND_USER,
                KIND_GUEST,
                KIND_SERVICE_PRINCIPAL,
                KIND_MANAGED_IDENTITY,
                KIND_WORKLOAD,
                KIND_ANONYMOUS,
            ],
        ),
        (
            "decision",
            vec![
                DECISION_ALLOW,
                DECISION_DENY,
                DECISION_DRY_RUN_DENY,
                DECISION_ERROR,
                DECISION_UNEVALUATED,
            ],
        ),
        (
            "decision_engine",
            vec![ENGINE_RBAC, ENGINE_EXT_AUTHZ, ENGINE_JWT_AUTHN, ENGINE_NONE],
        ),
    ] {
        let have = present(col);
        for v in want {
            assert!(have.contains(v), "the seed has no {col} = {v}: {have:?}");
        }
    }
    Seed {
        crafted_from: grafana::utc(at0, 0),
        crafted_to: grafana::utc(crafted_to, 0),
        now: Utc::now(),
    }
}
