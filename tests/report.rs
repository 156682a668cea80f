//! `meshaudit report` end to end: records crafted to hit every section go through the REAL
//! collector into Postgres and Parquet at once; the report is then run against each store and
//! must give the same numbers, the exact numbers the inputs imply, de-duplicate replayed Parquet
//! rows, skip partitions outside the range, hash every file it writes, and render hostile
//! values (markup, spreadsheet formulas) harmless.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::jwt::*;
use common::pg::{PgCluster, PASSWORD, PASSWORD_USER};
use common::*;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Timestamp, UInt32Value};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TID: &str = "11111111-2222-3333-4444-555555555555";
const API: &str = "7f1b2c3d-0000-4000-8000-00000000a001";
const WEB_APP: &str = "2a3b4c5d-0000-4000-8000-00000000c001";
const CLI_APP: &str = "2a3b4c5d-0000-4000-8000-00000000c00c";
const SP_APP: &str = "3c4d5e6f-0000-4000-8000-00000000c002";
const MI_APP: &str = "4d5e6f70-0000-4000-8000-00000000c003";
const SP_OID: &str = "8a8a8a8a-0000-4000-8000-00000000d001";
const MI_OID: &str = "9e8d7c6b-0000-4000-8000-00000000e002";
const G_ADMIN: &str = "5c6d7e8f-0000-4000-8000-00000000b001";
const APPROVER: &str = "Orders.Approver";
const ORDERS: &str = "orders.shop.svc.cluster.local";
const CATALOG: &str = "catalog.shop.svc.cluster.local";
const CHECKOUT: &str = "spiffe://cluster.local/ns/orders/sa/checkout";
const XSS_USER: &str = "<script>alert(\"x\")</script>@evil.example";
const FORMULA_USER: &str = "=cmd|' /C calc'!A0";
const XSS_ROLE: &str = "<img src=x onerror=alert(1)>";

/// 2026-03-02T10:00:00Z: the report's --from; the harness's START_SECS is 10:15:04.
const FROM_SECS: i64 = 1_772_445_600;

fn pb_struct(v: Value) -> Struct {
    match to_pb(&v).kind {
        Some(Kind::StructValue(s)) => s,
        _ => panic!("not an object: {v}"),
    }
}

fn user_claims(upn: &str, oid: &str) -> Value {
    let t = START_SECS;
    json!({
        "aud": API, "iss": format!("https://login.microsoftonline.com/{TID}/v2.0"), "ver": "2.0",
        "iat": t - 300, "nbf": t - 300, "exp": t + 3300, "azp": WEB_APP,
        "preferred_username": upn, "name": "A User", "oid": oid, "sub": format!("sub-{oid}"),
        "tid": TID, "scp": "Orders.Read", "uti": format!("uti-{oid}")
    })
}

/// A person whose token carries no name claim (Entra v2 access tokens often do not).
fn nameless(oid: &str, app: &str) -> Value {
    let mut c = user_claims("", oid);
    let o = c.as_object_mut().expect("object");
    o.remove("preferred_username");
    o.remove("name");
    c["azp"] = json!(app);
    c
}

fn ada() -> Value {
    let mut c = user_claims("ada@contoso.example", "oid-ada");
    c["roles"] = json!([APPROVER, "Orders.Reader"]);
    c["groups"] = json!([G_ADMIN, "5c6d7e8f-0000-4000-8000-00000000b999"]);
    c
}

fn app_only(app: &str, oid: &str) -> Value {
    let t = START_SECS;
    json!({
        "aud": API, "iss": format!("https://login.microsoftonline.com/{TID}/v2.0"), "ver": "2.0",
        "iat": t - 60, "nbf": t - 60, "exp": t + 3540, "azp": app, "oid": oid, "sub": oid,
        "tid": TID, "roles": ["Orders.Read.All"], "idtyp": "app", "uti": format!("uti-{oid}")
    })
}

/// One crafted entry: the harness's HTTP entry (mTLS peer `checkout`, destination `orders`)
/// changed by the builder methods.
struct E(HttpAccessLogEntry);

impl E {
    fn new(i: u32) -> E {
        E(http_entry(i))
    }
    fn common(&mut self) -> &mut envoy_types::pb::envoy::data::accesslog::v3::AccessLogCommon {
        self.0.common_properties.as_mut().expect("common")
    }
    fn metadata(&mut self, ns: &str, s: Struct) -> &mut Self {
        let md = self.common().metadata.get_or_insert_with(Metadata::default);
        md.filter_metadata.insert(ns.into(), s);
        self
    }
    /// Claims the proxy verified (jwt_authn metadata) → proxy_verified.
    fn claims(mut self, c: Value) -> Self {
        self.metadata("envoy.filters.http.jwt_authn", jwt_authn_payload(&c));
        self
    }
    fn rbac(mut self, fields: Value) -> Self {
        self.metadata("envoy.filters.http.rbac", pb_struct(fields));
        self
    }
    fn denied(mut self, details: &str) -> Self {
        let resp = self.0.response.as_mut().expect("response");
        resp.response_code = Some(UInt32Value { value: 403 });
        resp.response_code_details = details.into();
        self
    }
    /// No client certificate: nothing identifies the caller.
    fn no_peer(mut self) -> Self {
        if let Some(tls) = self.common().tls_properties.as_mut() {
            tls.peer_certificate_properties = None;
        }
        self
    }
    fn to(mut self, host: &str) -> Self {
        self.common().upstream_cluster = format!("outbound|8080||{host}");
        self
    }
    fn at(mut self, secs: i64, nanos: i32) -> Self {
        self.common().start_time = Some(Timestamp {
            seconds: secs,
            nanos,
        });
        self
    }
    fn bearer(mut self, token: &str) -> Self {
        let req = self.0.request.as_mut().expect("request");
        req.request_headers
            .insert("authorization".into(), format!("Bearer {token}"));
        self
    }
}

/// The records of the scenario. Their numbers are what the assertions below expect.
fn entries(rogue_token: &str) -> Vec<HttpAccessLogEntry> {
    let allow = json!({
        "enforced_engine_result": "allowed",
        "enforced_effective_policy_id": "ns[shop]-policy[allow-users]-rule[0]"
    });
    let dry_run = json!({
        "enforced_engine_result": "allowed",
        "enforced_effective_policy_id": "ns[shop]-policy[allow-users]-rule[0]",
        "istio_dry_run_deny_shadow_engine_result": "denied",
        "istio_dry_run_deny_shadow_effective_policy_id": "ns[shop]-policy[tighten]-rule[2]"
    });
    let rbac_deny = "rbac_access_denied_matched_policy[ns[shop]-policy[deny-contractors]-rule[0]]";
    let mut out: Vec<E> = Vec::new();
    let mut i = 0;
    let mut next = || {
        i += 1;
        E::new(i)
    };
    // To orders: 3 verified user requests (privileged), allowed by RBAC.
    for _ in 0..3 {
        out.push(next().claims(ada()).rbac(allow.clone()));
    }
    // 2 service principal, 1 managed identity (directory), verified.
    for _ in 0..2 {
        out.push(next().claims(app_only(SP_APP, SP_OID)));
    }
    out.push(next().claims(app_only(MI_APP, MI_OID)));
    // 2 mTLS workloads; 2 anonymous callers (+1 at exactly --from, below).
    out.push(next());
    out.push(next());
    out.push(next().no_peer());
    out.push(next().no_peer());
    // RBAC denies a workload and a verified user.
    out.push(next().denied(rbac_deny));
    out.push(next().claims(ada()).denied(rbac_deny));
    // A dry-run policy would deny 2 of ada's requests.
    out.push(next().claims(ada()).rbac(dry_run.clone()));
    out.push(next().claims(ada()).rbac(dry_run));
    // The proxy rejected 5 tokens of anonymous callers and 1 of an mTLS workload.
    for reason in [
        "Jwt_is_expired",
        "Jwt_verification_fails",
        "Audiences_in_Jwt_are_not_allowed",
        "Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt",
        "Jwt_issuer_is_not_configured",
    ] {
        out.push(
            next()
                .no_peer()
                .denied(&format!("jwt_authn_access_denied{{{reason}}}")),
        );
    }
    out.push(next().denied("jwt_authn_access_denied{Jwt_is_expired}"));
    // A forged token claiming the privileged role and group: bad_signature, not verified.
    out.push(next().bearer(rogue_token));
    // Hostile user names, verified by the proxy (the IdP let someone pick them).
    out.push(next().claims(user_claims(XSS_USER, "oid-xss")));
    out.push(next().claims(user_claims(FORMULA_USER, "oid-formula")));
    // To catalog: 3 anonymous, 1 verified (so catalog does NOT normally see verified callers).
    for _ in 0..3 {
        out.push(next().no_peer().to(CATALOG));
    }
    out.push(next().claims(ada()).to(CATALOG));
    // People, not their client app: two nameless people through orders-web (3 and 2), and dan
    // through two client apps, renamed between them (the later name is the one shown).
    for _ in 0..3 {
        out.push(next().claims(nameless("oid-nn1", WEB_APP)));
    }
    for _ in 0..2 {
        out.push(next().claims(nameless("oid-nn2", WEB_APP)));
    }
    let dan = |upn: &str, app: &str| {
        let mut c = user_claims(upn, "oid-dan");
        c["azp"] = json!(app);
        c
    };
    out.push(
        next()
            .claims(dan("dan@old.example", WEB_APP))
            .at(FROM_SECS + 60, 0),
    );
    out.push(
        next()
            .claims(dan("dan@old.example", WEB_APP))
            .at(FROM_SECS + 61, 0),
    );
    out.push(
        next()
            .claims(dan("dan@new.example", CLI_APP))
            .at(FROM_SECS + 62, 0),
    );
    // Range boundaries: 09:59:59.999999 (out), 11:00:00.000000 (out), 10:00:00.000000 (in).
    out.push(next().claims(ada()).at(FROM_SECS - 1, 999_999_000));
    out.push(next().no_peer().at(FROM_SECS + 3600, 0));
    out.push(next().no_peer().at(FROM_SECS, 0));
    out.into_iter().map(|e| e.0).collect()
}

const IN_RANGE: u64 = 36;
const ALL: u64 = 38;

// ---- running the report -------------------------------------------------------------------

fn report(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .arg("report")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run meshaudit report")
}

fn report_ok(args: &[&str]) -> Value {
    let out = report(args);
    assert!(
        out.status.success(),
        "meshaudit report {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary JSON on stdout")
}

fn load(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
        .expect("valid JSON")
}

fn section<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no section {id}"))
}

/// The numbers of every section, without the queries (which name the store).
fn numbers(doc: &Value) -> BTreeMap<String, Value> {
    doc["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_owned(),
                json!({"rows": s["rows"], "row_count": s["row_count"],
                       "records": s["records"], "totals": s["totals"], "range": s["range"]}),
            )
        })
        .collect()
}

/// The rows of a section that match every (column, value) pair.
fn rows<'a>(doc: &'a Value, id: &str, filter: &[(&str, Value)]) -> Vec<&'a Value> {
    section(doc, id)["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| filter.iter().all(|(k, v)| &r[*k] == v))
        .collect()
}

fn one<'a>(doc: &'a Value, id: &str, filter: &[(&str, Value)]) -> &'a Value {
    let found = rows(doc, id, filter);
    assert_eq!(found.len(), 1, "{id} {filter:?}: {found:#?}");
    found[0]
}

fn totals(doc: &Value, id: &str) -> Value {
    section(doc, id)["totals"].clone()
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

// ---- checks -------------------------------------------------------------------------------

/// Exact numbers for the scenario in `entries`.
fn assert_expected_numbers(doc: &Value) {
    // Access review: 36 records = 20 verified + 4 mTLS workloads + 12 unverified; 8 denied.
    assert_eq!(
        totals(doc, "access_review"),
        json!({"requests": IN_RANGE, "verified": 20, "mtls_workload": 4, "peer_metadata_workload": 0, "unverified": 12, "denied": 8})
    );
    assert_people(doc);
    let ada_orders = one(
        doc,
        "access_review",
        &[
            ("caller", json!("ada@contoso.example")),
            ("destination_service", json!(ORDERS)),
        ],
    );
    assert_eq!(ada_orders["identity_kind"], "user");
    assert_eq!(ada_orders["destination_namespace"], "shop");
    assert_eq!(
        (
            &ada_orders["requests"],
            &ada_orders["verified"],
            &ada_orders["denied"]
        ),
        (&json!(6), &json!(6), &json!(1))
    );
    // The forged token names a user but is never counted as verified.
    let eve = one(
        doc,
        "access_review",
        &[("caller", json!("eve@contoso.example"))],
    );
    assert_eq!(
        (
            &eve["identity_kind"],
            &eve["requests"],
            &eve["verified"],
            &eve["unverified"]
        ),
        (&json!("user"), &json!(1), &json!(0), &json!(1))
    );
    let workloads = one(
        doc,
        "access_review",
        &[
            ("identity_kind", json!("workload")),
            ("destination_service", json!(ORDERS)),
        ],
    );
    assert_eq!(workloads["caller"], CHECKOUT);
    assert_eq!(workloads["caller_id"], CHECKOUT);
    assert_eq!(
        (
            &workloads["requests"],
            &workloads["mtls_workload"],
            &workloads["verified"]
        ),
        (&json!(4), &json!(4), &json!(0))
    );
    let anon = one(
        doc,
        "access_review",
        &[
            ("identity_kind", json!("anonymous")),
            ("destination_service", json!(ORDERS)),
        ],
    );
    assert_eq!(anon["caller"], Value::Null);
    assert_eq!(anon["caller_id"], Value::Null);
    assert_eq!(
        (&anon["requests"], &anon["unverified"]),
        (&json!(8), &json!(8))
    );

    // Denied by policy: RBAC (a workload and a verified user), jwt_authn (6, no policy name).
    assert_eq!(section(doc, "denied_by_policy")["records"], 8);
    let rbac = one(
        doc,
        "denied_by_policy",
        &[("decision_engine", json!("rbac"))],
    );
    assert_eq!(rbac["policy_name"], "shop/deny-contractors/0");
    assert_eq!(
        (&rbac["requests"], &rbac["verified"], &rbac["mtls_workload"]),
        (&json!(2), &json!(1), &json!(1))
    );
    let jwt = one(
        doc,
        "denied_by_policy",
        &[("decision_engine", json!("jwt_authn"))],
    );
    assert_eq!(jwt["policy_name"], Value::Null);
    assert_eq!(
        (&jwt["requests"], &jwt["mtls_workload"], &jwt["unverified"]),
        (&json!(6), &json!(1), &json!(5))
    );

    // Dry run: the shadow policy, the enforcing policy that allowed.
    let dry = one(doc, "dry_run_would_deny", &[]);
    assert_eq!(dry["shadow_policy_name"], "shop/tighten/2");
    assert_eq!(dry["policy_name"], "shop/allow-users/0");
    assert_eq!((&dry["requests"], &dry["verified"]), (&json!(2), &json!(2)));

    // Privileged: ada to orders (6) and catalog (1), verified; the forgery, unverified.
    assert_eq!(
        totals(doc, "privileged_access"),
        json!({"requests": 8, "verified": 7, "mtls_workload": 0, "peer_metadata_workload": 0, "unverified": 1, "denied": 1})
    );
    let p = one(
        doc,
        "privileged_access",
        &[
            ("caller", json!("ada@contoso.example")),
            ("destination_service", json!(ORDERS)),
        ],
    );
    // Only the privileged ones of ada's roles and groups are listed.
    assert_eq!(p["privileged_roles"], json!([APPROVER]));
    assert_eq!(p["privileged_groups"], json!([G_ADMIN]));
    assert_eq!((&p["requests"], &p["verified"]), (&json!(6), &json!(6)));
    let forged = one(
        doc,
        "privileged_access",
        &[("caller", json!("eve@contoso.example"))],
    );
    assert_eq!(
        (&forged["verified"], &forged["unverified"]),
        (&json!(0), &json!(1))
    );

    // Non-human: the service principal (by app id) and the managed identity.
    assert_eq!(section(doc, "non_human_access")["records"], 3);
    let sp = one(
        doc,
        "non_human_access",
        &[("identity_kind", json!("service_principal"))],
    );
    assert_eq!(
        (&sp["caller_id"], &sp["object_id"], &sp["requests"]),
        (&json!(SP_APP), &json!(SP_OID), &json!(2))
    );
    assert_eq!(sp["caller"], "billing-agent");
    let mi = one(
        doc,
        "non_human_access",
        &[("identity_kind", json!("managed_identity"))],
    );
    assert_eq!(
        (&mi["object_id"], &mi["verified"]),
        (&json!(MI_OID), &json!(1))
    );

    // Unverified access: orders (15 of 24 identified) is flagged, catalog (1 of 4) is not.
    let s = section(doc, "unverified_access");
    assert_eq!(s["records"], 9);
    assert_eq!(
        totals(doc, "unverified_access"),
        json!({"requests": 9, "denied": 5, "not_denied": 4})
    );
    assert!(rows(
        doc,
        "unverified_access",
        &[("destination_service", json!(CATALOG))]
    )
    .is_empty());
    let absent = one(
        doc,
        "unverified_access",
        &[
            ("identity_kind", json!("anonymous")),
            ("token_status", json!("absent")),
        ],
    );
    assert_eq!(
        (&absent["requests"], &absent["client_address"]),
        (&json!(3), &json!("10.1.2.3"))
    );

    // Token anomalies: one row per failure, plus the forged token that was let through.
    assert_eq!(
        totals(doc, "token_anomalies"),
        json!({"requests": 7, "denied": 6, "not_denied": 1})
    );
    let statuses: BTreeSet<&str> = section(doc, "token_anomalies")["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["token_status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from([
            "bad_signature",
            "expired",
            "unknown_key",
            "untrusted_issuer",
            "wrong_audience"
        ])
    );
    let forged = one(
        doc,
        "token_anomalies",
        &[("identity_source", json!("jwt_header"))],
    );
    assert_eq!(
        (
            &forged["token_status"],
            &forged["not_denied"],
            &forged["caller"]
        ),
        (
            &json!("bad_signature"),
            &json!(1),
            &json!("eve@contoso.example")
        )
    );
    let expired_workload = one(
        doc,
        "token_anomalies",
        &[
            ("token_status", json!("expired")),
            ("identity_kind", json!("workload")),
        ],
    );
    assert_eq!(expired_workload["denied"], 1);

    // Source workloads: 17 records came with the checkout certificate, 11 with none.
    let checkout: u64 = rows(
        doc,
        "source_workloads",
        &[("source_principal", json!(CHECKOUT))],
    )
    .iter()
    .map(|r| r["requests"].as_u64().expect("n"))
    .sum();
    assert_eq!(checkout, 25);
    let c = one(
        doc,
        "source_workloads",
        &[
            ("source_principal", json!(CHECKOUT)),
            ("destination_service", json!(ORDERS)),
        ],
    );
    assert_eq!(
        (&c["source_namespace"], &c["source_workload"]),
        (&json!("orders"), &json!("checkout"))
    );
    assert_eq!(section(doc, "source_workloads")["records"], IN_RANGE);
}

/// Each person is one row, keyed by object id, whatever client app they used or name they had.
fn assert_people(doc: &Value) {
    let person = |oid: &str| one(doc, "access_review", &[("caller_id", json!(oid))]);
    let nn1 = person("oid-nn1");
    let nn2 = person("oid-nn2");
    for (p, n) in [(nn1, 3), (nn2, 2)] {
        assert_eq!(
            (&p["identity_kind"], &p["caller"], &p["client_apps"]),
            (&json!("user"), &Value::Null, &json!(["orders-web"])),
            "{p}"
        );
        assert_eq!((&p["requests"], &p["verified"]), (&json!(n), &json!(n)));
    }
    let dan = person("oid-dan");
    assert_eq!(dan["caller"], "dan@new.example");
    assert_eq!(dan["client_apps"], json!(["admin-cli", "orders-web"]));
    assert_eq!((&dan["requests"], &dan["verified"]), (&json!(3), &json!(3)));
    assert!(rows(doc, "access_review", &[("caller", json!("orders-web"))]).is_empty());
    // ada is one person through one app, with her token's name.
    let ada = one(
        doc,
        "access_review",
        &[
            ("caller_id", json!("oid-ada")),
            ("destination_service", json!(ORDERS)),
        ],
    );
    assert_eq!(ada["caller"], "ada@contoso.example");
    assert_eq!(ada["client_apps"], json!(["orders-web"]));
}

/// Every file is in the manifest with its hash, and `sha256sum -c` agrees.
fn assert_manifest(dir: &Path) {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let mut listed = BTreeSet::new();
    for f in manifest["files"].as_array().expect("files") {
        let path = f["path"].as_str().expect("path");
        let data = std::fs::read(dir.join(path)).expect("listed file exists");
        assert_eq!(f["sha256"], sha256_hex(&data), "{path}");
        assert_eq!(f["bytes"], data.len(), "{path}");
        listed.insert(path.to_owned());
    }
    let on_disk: BTreeSet<String> = all_files(dir)
        .iter()
        .map(|p| {
            p.strip_prefix(dir)
                .expect("inside")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| p != "manifest.json" && p != "SHA256SUMS")
        .collect();
    assert_eq!(
        listed, on_disk,
        "the manifest lists exactly the files written"
    );
    assert!(listed.contains("report.html") && listed.contains("report.json"));
    assert_eq!(listed.iter().filter(|p| p.ends_with(".csv")).count(), 8);
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .expect("run sha256sum");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let checked = String::from_utf8_lossy(&check.stdout);
    assert!(checked.contains("manifest.json: OK"), "{checked}");
}

/// The HTML is one self-contained file: no script, no external reference, all data escaped.
fn assert_html_is_self_contained_and_escaped(dir: &Path) {
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    const ALLOWED: &[&str] = &[
        "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "dl", "dt",
        "dd", "section", "p", "span", "table", "thead", "tbody", "tfoot", "tr", "th", "td", "pre",
        "nav", "a", "svg", "rect", "text",
    ];
    // Every '<' in the file starts markup this report wrote: data never yields a raw '<'.
    let mut rest = html.as_str();
    let mut tags = 0;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("closed tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with("!DOCTYPE") {
            continue;
        }
        tags += 1;
        let name = tag
            .trim_start_matches('/')
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        assert!(ALLOWED.contains(&name), "unexpected element <{tag}>");
        let lower = tag.to_ascii_lowercase();
        for bad in [
            "src=",
            "http:",
            "https:",
            "//",
            "url(",
            "javascript:",
            "onerror",
            "onload",
        ] {
            assert!(
                !lower.contains(bad),
                "external reference or handler in <{tag}>"
            );
        }
        if let Some(h) = lower.find("href=") {
            assert!(
                lower[h..].starts_with("href=\"#"),
                "non-local link in <{tag}>"
            );
        }
    }
    assert!(tags > 100, "parsed only {tags} tags");
    let css_start = html.find("<style>").expect("inline CSS");
    let css = &html[css_start..html.find("</style>").expect("end of CSS")];
    for bad in ["url(", "@import", "http"] {
        assert!(!css.contains(bad), "CSS loads something: {bad}");
    }
    assert!(css.contains("@media print"), "print styles");
    assert!(html.contains("<svg"), "inline SVG chart");
    // Hostile values are shown as text.
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;@evil.example"));
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "privileged role escaped"
    );
    assert!(!html.contains(XSS_USER) && !html.contains(XSS_ROLE));
    assert!(
        html.contains("formula injection"),
        "the CSV guard is explained"
    );
}

/// CSV: formulas are defused (and said to be), quoting is right, JSON keeps values unchanged.
fn assert_csv(dir: &Path, doc: &Value) {
    let csv = std::fs::read_to_string(dir.join("access_review.csv")).expect("csv");
    let header = csv.lines().next().expect("header");
    assert_eq!(
        header,
        "identity_kind,caller,caller_id,client_apps,destination_namespace,destination_service,requests,verified,mtls_workload,peer_metadata_workload,unverified,denied"
    );
    assert!(csv.ends_with("\r\n"));
    assert!(
        csv.contains(&format!(
            "\r\nuser,'{FORMULA_USER},oid-formula,\"[\"\"orders-web\"\"]\",shop,{ORDERS},1,1,0,0,0,0\r\n"
        )),
        "{csv}"
    );
    for f in all_files(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
    {
        let text = std::fs::read_to_string(f).expect("csv");
        for line in text.split("\r\n") {
            for start in ["=", "+", "-", "@", "\"=", "\"+", "\"-", "\"@"] {
                assert!(!line.starts_with(start), "{}: {line}", f.display());
                assert!(
                    !line.contains(&format!(",{start}")),
                    "{}: {line}",
                    f.display()
                );
            }
        }
    }
    // A list cell is a quoted JSON array.
    let p = std::fs::read_to_string(dir.join("privileged_access.csv")).expect("csv");
    assert!(p.contains(&format!("\"[\"\"{APPROVER}\"\"]\"")), "{p}");
    // The JSON keeps the value exactly.
    one(doc, "access_review", &[("caller", json!(FORMULA_USER))]);
    assert!(doc["csv_note"]
        .as_str()
        .expect("note")
        .contains("leading single quote"));
}

fn assert_section_metadata(doc: &Value, dialect: &str) {
    for s in doc["sections"].as_array().expect("sections") {
        let criteria = s["criteria"].as_array().expect("criteria");
        assert!(
            !criteria.is_empty()
                && criteria
                    .iter()
                    .all(|c| c.as_str().is_some_and(|c| c.starts_with("CC"))),
            "{}",
            s["id"]
        );
        assert_eq!(s["range"]["from"], "2026-03-02T10:00:00.000000Z");
        assert_eq!(s["range"]["to"], "2026-03-02T11:00:00.000000Z");
        assert_eq!(s["row_count"], s["rows"].as_array().expect("rows").len());
        let q = &s["queries"][0];
        assert_eq!(q["dialect"], dialect);
        assert!(q["text"]
            .as_str()
            .expect("text")
            .contains("count(DISTINCT record_id)"));
        assert_eq!(q["parameters"][0]["value"], "2026-03-02T10:00:00.000000Z");
        // User-supplied values are parameters, never SQL text.
        assert!(!q["text"].as_str().expect("text").contains(APPROVER));
    }
}

// ---- the test -----------------------------------------------------------------------------

#[test]
fn postgres_and_parquet_reports_agree_and_match_the_inputs() {
    let started = Instant::now();
    let keys = [rsa_key(), rsa_key()];
    let jwks_server = JwksServer::start(jwks(&[("k0", &keys[0])]));
    // Signed with a key the JWKS does not hold, under the JWKS key's id: bad_signature.
    let mut eve = user_claims("eve@contoso.example", "oid-eve");
    eve["roles"] = json!([APPROVER]);
    eve["groups"] = json!([G_ADMIN]);
    let rogue = mint(&entra_header("k0", false), &eve, &keys[1]);

    let pg = PgCluster::start();
    let url = pg.create_db("report");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let directory = tmp.path().join("directory.json");
    std::fs::write(
        &directory,
        json!({"applications": {SP_APP: "billing-agent", WEB_APP: "orders-web", CLI_APP: "admin-cli"},
               "managed_identities": [MI_OID]})
            .to_string(),
    )
    .expect("directory");
    let c = Collector::start(
        &data,
        &[
            "--database-url",
            &url,
            "--migrate-on-start",
            "--entra-tenant",
            TID,
            "--audience",
            API,
            "--jwks-url",
            &jwks_server.url(),
            "--directory",
            directory.to_str().expect("utf-8 path"),
        ],
    );
    let msg = http_message(Some(identifier(NODE_ID, LOG_NAME)), entries(&rogue));
    rt().block_on(stream(&c.als_url(), vec![msg]))
        .expect("stream accepted");
    wait_until("all records in postgres", Duration::from_secs(30), || {
        pg.count("report", "SELECT count(*) FROM audit_records") == ALL as i64
    });
    let (status, log) = c.stop();
    assert!(status.success(), "collector exit {status}:\n{log}");
    assert!(!log.contains(&rogue), "the token is never logged");
    let seeded = started.elapsed();

    let range = [
        "--from",
        "2026-03-02T10:00:00Z",
        "--to",
        "2026-03-02T11:00:00Z",
    ];
    let privileged_file = tmp.path().join("privileged.toml");
    std::fs::write(
        &privileged_file,
        format!("groups = [\"{G_ADMIN}\"]\nroles = [\"{XSS_ROLE}\"]\n"),
    )
    .expect("privileged.toml");
    let privileged = [
        "--privileged-role",
        APPROVER,
        "--privileged-config",
        privileged_file.to_str().expect("utf-8"),
    ];
    let out_pg = tmp.path().join("out-pg");
    let out_pq = tmp.path().join("out-parquet");
    let data_str = data.to_str().expect("utf-8");
    let run = |out: &Path, source: [&str; 2], extra: &[&str]| {
        let mut args: Vec<&str> = range.to_vec();
        args.extend(source);
        args.extend(privileged);
        args.extend(["--out", out.to_str().expect("utf-8")]);
        args.extend(extra);
        report_ok(&args)
    };
    let t = Instant::now();
    let summary = run(&out_pg, ["--database-url", &url], &[]);
    let pg_time = t.elapsed();
    let t = Instant::now();
    run(&out_pq, ["--data-dir", data_str], &[]);
    let parquet_time = t.elapsed();
    assert_eq!(summary["sections"].as_array().expect("sections").len(), 8);

    let from_pg = load(&out_pg);
    let from_parquet = load(&out_pq);
    assert_eq!(from_pg["source"]["kind"], "postgres");
    assert_eq!(from_parquet["source"]["kind"], "parquet");
    assert_eq!(from_parquet["source"]["duplicate_rows_removed"], 0);
    assert_eq!(
        numbers(&from_pg),
        numbers(&from_parquet),
        "same numbers from both stores"
    );
    assert_expected_numbers(&from_pg);
    assert_section_metadata(&from_pg, "PostgreSQL");
    assert_section_metadata(&from_parquet, "DuckDB");
    for out in [&out_pg, &out_pq] {
        assert_manifest(out);
        assert_html_is_self_contained_and_escaped(out);
    }
    assert_csv(&out_pg, &from_pg);
    // The CSV files are the same bytes whichever store they came from.
    for s in from_pg["sections"].as_array().expect("sections") {
        let name = format!("{}.csv", s["id"].as_str().expect("id"));
        assert_eq!(
            std::fs::read(out_pg.join(&name)).expect("csv"),
            std::fs::read(out_pq.join(&name)).expect("csv"),
            "{name}"
        );
    }

    // `--directory`: the newest directory names callers the records could not (or named
    // differently), from both stores alike, and the report says which snapshot it used.
    assert_eq!(from_pg["directory"], Value::Null);
    let newest = tmp.path().join("newest-directory.json");
    std::fs::write(
        &newest,
        json!({"users": {"OID-NN1": {"upn": "nn1@contoso.example", "user_type": "Member"},
                         "oid-dan": {"display_name": "Dan Directory"}},
               "applications": {SP_APP: "billing-agent-v2"},
               "synced_at": "2026-03-03T00:00:00.000000Z"})
        .to_string(),
    )
    .expect("directory");
    let newest_arg = ["--directory", newest.to_str().expect("utf-8")];
    let (dir_pg, dir_pq) = (tmp.path().join("dir-pg"), tmp.path().join("dir-pq"));
    run(&dir_pg, ["--database-url", &url], &newest_arg);
    run(&dir_pq, ["--data-dir", data_str], &newest_arg);
    let (dir_pg, dir_pq) = (load(&dir_pg), load(&dir_pq));
    assert_eq!(
        numbers(&dir_pg),
        numbers(&dir_pq),
        "same names from both stores"
    );
    for d in [&dir_pg, &dir_pq] {
        let by_id =
            |id: &str| one(d, "access_review", &[("caller_id", json!(id))])["caller"].clone();
        assert_eq!(by_id("oid-nn1"), "nn1@contoso.example");
        assert_eq!(by_id("oid-nn2"), Value::Null, "unknown to the directory");
        assert_eq!(
            by_id("oid-dan"),
            "Dan Directory",
            "the newest directory wins"
        );
        assert_eq!(
            one(d, "non_human_access", &[("caller_id", json!(SP_APP))])["caller"],
            "billing-agent-v2"
        );
        assert_eq!(d["directory"]["synced_at"], "2026-03-03T00:00:00.000000Z");
        assert!(d["directory"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("newest-directory.json")));
        // nn1, dan and the service principal in access_review; the principal in non_human.
        assert_eq!(d["directory"]["relabelled_rows"], 4);
        assert_eq!(
            totals(d, "access_review"),
            totals(&from_pg, "access_review"),
            "only names change"
        );
    }

    // A least-privilege role (SELECT only) with a password: same numbers, and the password is
    // in no file the report wrote, nor in what it printed.
    pg.psql(
        "report",
        &format!("GRANT SELECT ON audit_records TO {PASSWORD_USER}"),
    );
    let pw_url = format!(
        "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/report",
        pg.port
    );
    let out_pw = tmp.path().join("out-pw");
    let printed = run(&out_pw, ["--database-url", &pw_url], &[]);
    assert_eq!(numbers(&load(&out_pw)), numbers(&from_pg));
    assert!(!printed.to_string().contains(PASSWORD));
    assert!(
        !any_file_contains(&out_pw, PASSWORD.as_bytes()),
        "password in the report"
    );

    // At-least-once: every Parquet file of the range written twice (a crash replay) changes
    // no number, and the duplicates are accounted for.
    let hour10 = data.join("dt=2026-03-02").join("hour=10");
    let files = parquet_files(&hour10);
    assert!(!files.is_empty());
    for (n, f) in files.iter().enumerate() {
        std::fs::copy(f, hour10.join(format!("part-replayed-{n}.parquet"))).expect("copy");
    }
    // A partition outside the range that cannot even be read: pruned, so never opened.
    let hour12 = data.join("dt=2026-03-02").join("hour=12");
    std::fs::create_dir_all(&hour12).expect("mkdir");
    std::fs::write(hour12.join("part-garbage.parquet"), b"not parquet").expect("garbage");
    let out_dup = tmp.path().join("out-dup");
    run(&out_dup, ["--data-dir", data_str], &["--format", "json"]);
    let dup = load(&out_dup);
    assert_eq!(numbers(&dup), numbers(&from_pg), "duplicates counted once");
    assert_eq!(dup["source"]["duplicate_rows_removed"], IN_RANGE);
    assert_eq!(dup["source"]["rows_in_range"], 2 * IN_RANGE);
    // hours 09 and 11 hold a boundary record each; 12 holds the garbage.
    assert_eq!(dup["source"]["partitions_skipped"], 3);
    assert_eq!(dup["source"]["partitions_read"], 1);
    let only_json: BTreeSet<String> = all_files(&out_dup)
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        only_json,
        BTreeSet::from([
            "SHA256SUMS".into(),
            "manifest.json".into(),
            "report.json".into()
        ])
    );

    // The garbage file is real: a range that covers it fails, naming the file.
    let out = report(&[
        "--from",
        "2026-03-02",
        "--to",
        "2026-03-03",
        "--data-dir",
        data_str,
        "--out",
        tmp.path().join("out-fail").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("part-garbage.parquet"), "{err}");
    std::fs::remove_dir_all(&hour12).expect("rm");

    // Date bounds: the whole day holds all 30; --from one microsecond later drops the record
    // at exactly 10:00:00 (inclusive bound), from both stores alike.
    for (from, to, want) in [
        ("2026-03-02", "2026-03-03", ALL),
        (
            "2026-03-02T10:00:00.000001Z",
            "2026-03-02T11:00:00Z",
            IN_RANGE - 1,
        ),
        ("2026-03-02T10:59:59+00:00", "2026-03-02T12:00:00+01:00", 0),
    ] {
        let mut got = Vec::new();
        for (name, source) in [
            ("pg", ["--database-url", &url]),
            ("pq", ["--data-dir", data_str]),
        ] {
            let out = tmp.path().join(format!("out-{name}-{from}"));
            let mut args = vec!["--from", from, "--to", to, "--format", "json", "--out"];
            args.push(out.to_str().expect("utf-8"));
            args.extend(source);
            report_ok(&args);
            let doc = load(&out);
            assert_eq!(
                section(&doc, "access_review")["records"],
                want,
                "{name} {from}..{to}"
            );
            got.push(numbers(&doc));
        }
        assert_eq!(got[0], got[1], "{from}..{to}");
    }
    eprintln!(
        "report test: seeding {seeded:?}, postgres report {pg_time:?}, parquet report {parquet_time:?}, total {:?}",
        started.elapsed()
    );
}

// ---- argument errors (no store needed) ------------------------------------------------------

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = report(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in:\n{err}");
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn bad_arguments_name_the_flag_and_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let d = data.to_str().expect("utf-8");
    let out = tmp.path().join("out");
    let o = out.to_str().expect("utf-8");
    let ok_range = ["--from", "2026-03-02", "--to", "2026-03-03"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        ok_range
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .chain(["--data-dir".into(), d.into(), "--out".into(), o.into()])
            .collect()
    };

    fails_with(
        &[
            "--from",
            "2026-03-02T10:00:00",
            "--to",
            "2026-03-03",
            "--data-dir",
            d,
            "--out",
            o,
        ],
        &["--from", "add Z", "Fix:"],
    );
    fails_with(
        &[
            "--from",
            "2026-03-02",
            "--to",
            "tomorrow",
            "--data-dir",
            d,
            "--out",
            o,
        ],
        &["--to", "Fix:", "2026-03-02T10:00:00Z"],
    );
    fails_with(
        &[
            "--from",
            "2026-03-03",
            "--to",
            "2026-03-02",
            "--data-dir",
            d,
            "--out",
            o,
        ],
        &["--from", "--to", "earlier", "Fix:"],
    );
    fails_with(
        &["--from", "2026-03-02", "--to", "2026-03-03", "--out", o],
        &["--database-url", "--data-dir"],
    );
    fails_with(
        &as_strs(&with(&["--database-url", "postgres://u@127.0.0.1:1/x"])),
        &["exactly one source"],
    );
    fails_with(
        &[
            "--from",
            "2026-03-02",
            "--to",
            "2026-03-03",
            "--data-dir",
            "/nonexistent/meshaudit",
            "--out",
            o,
        ],
        &["--data-dir", "not a directory", "Fix:"],
    );
    let bad_toml = tmp.path().join("p.toml");
    std::fs::write(&bad_toml, "role = [\"Admin\"]\n").expect("toml");
    let mut args = with(&[]);
    args.push("--privileged-config".into());
    args.push(bad_toml.to_str().expect("utf-8").into());
    let args = as_strs(&args);
    fails_with(&args, &["--privileged-config", "unknown field", "Fix:"]);
    let bad_dir = tmp.path().join("directory.json");
    std::fs::write(&bad_dir, r#"{"users": []}"#).expect("directory");
    let mut args = with(&[]);
    args.push("--directory".into());
    args.push(bad_dir.to_str().expect("utf-8").into());
    fails_with(
        &as_strs(&args),
        &["--directory", "not a directory snapshot", "Fix:"],
    );
    assert!(!out.exists(), "nothing written on bad arguments");

    // An empty data dir gives an empty but complete report; a second run into the same
    // directory is refused rather than mixing evidence.
    report_ok(&as_strs(&with(&[])));
    let doc = load(&out);
    assert_eq!(section(&doc, "access_review")["row_count"], 0);
    let html = std::fs::read_to_string(out.join("report.html")).expect("html");
    assert!(
        html.contains("empty by configuration"),
        "privileged section explains itself"
    );
    fails_with(&as_strs(&with(&[])), &["--out", "not empty", "Fix:"]);
}

// ---- realistic traffic ----------------------------------------------------------------------

/// `meshaudit loadgen` traffic (users with up to 30 groups, service principals, RBAC and
/// jwt_authn denials, dry runs) into both stores: the report's numbers must agree.
#[test]
fn loadgen_traffic_gives_the_same_numbers_from_both_stores() {
    let pg = PgCluster::start();
    let url = pg.create_db("loadgen");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let c = Collector::start(&data, &["--database-url", &url, "--migrate-on-start"]);
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(["loadgen", "--target", &c.als_addr.to_string()])
        .args([
            "--streams",
            "2",
            "--connections",
            "1",
            "--duration-secs",
            "1",
        ])
        .args(["--rate", "3000", "--deny-ratio", "0.2", "--seed", "5"])
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value = serde_json::from_slice(&out.stdout).expect("loadgen JSON");
    let sent = sent["entries"].as_i64().expect("entries");
    assert!(sent > 1000, "loadgen sent only {sent}");
    wait_until("every entry in postgres", Duration::from_secs(60), || {
        pg.count("loadgen", "SELECT count(*) FROM audit_records") == sent
    });
    let (status, log) = c.stop();
    assert!(status.success(), "{log}");

    let today = chrono::Utc::now().date_naive();
    let from = (today - chrono::Days::new(1)).to_string();
    let to = (today + chrono::Days::new(2)).to_string();
    let data_str = data.to_str().expect("utf-8");
    let mut docs = Vec::new();
    for (name, source) in [
        ("pg", ["--database-url", &url]),
        ("pq", ["--data-dir", data_str]),
    ] {
        let out = tmp.path().join(name);
        let mut args = vec!["--from", &from, "--to", &to, "--format", "json,csv"];
        args.extend(["--privileged-role", "Orders.Approver"]);
        args.extend(["--privileged-group", "5c6d7e8f-0000-4000-8000-000000000003"]);
        args.extend(["--privileged-group", "5c6d7e8f-0000-4000-8000-00000000001d"]);
        args.extend(["--out", out.to_str().expect("utf-8")]);
        args.extend(source);
        report_ok(&args);
        docs.push(load(&out));
    }
    assert_eq!(numbers(&docs[0]), numbers(&docs[1]));
    let d = &docs[0];
    assert_eq!(section(d, "access_review")["records"], sent);
    for id in [
        "denied_by_policy",
        "dry_run_would_deny",
        "privileged_access",
        "non_human_access",
        "token_anomalies",
    ] {
        assert!(
            section(d, id)["records"].as_u64().expect("n") > 0,
            "{id} is empty: the comparison would prove little"
        );
    }
    // Rows with both, one or none of the privileged groups exist: the intersection matters.
    let shapes: BTreeSet<usize> = section(d, "privileged_access")["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["privileged_groups"].as_array().expect("list").len())
        .collect();
    assert_eq!(shapes, BTreeSet::from([0, 1, 2]), "{shapes:?}");
}
