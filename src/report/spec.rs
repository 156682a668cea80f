//! The report's sections as data: each is defined once here, as a filter, group-by expressions
//! and measures over the contract's columns. [`super::sql`] compiles a section to the SQL that
//! Postgres runs (and that the report shows); [`super::eval`] evaluates the same section over
//! Parquet rows in Rust. Nothing else decides what a section counts, so the two cannot drift
//! apart without a test noticing (tests/report.rs runs both on the same records).
//!
//! Values in predicates come only from [`crate::record::values`] (the contract's closed sets,
//! compiled in); what a user supplies (time range, privileged roles and groups) is always a
//! bound parameter ([`Param`]), never part of the SQL text.

use crate::record::values as v;

/// A value the user supplies at run time: bound as a query parameter, never written into SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    /// `--from`, inclusive.
    From,
    /// `--to`, exclusive.
    To,
    /// The privileged app roles (`--privileged-role`).
    PrivilegedRoles,
    /// The privileged group object ids (`--privileged-group`).
    PrivilegedGroups,
}

impl Param {
    pub fn describe(self) -> &'static str {
        match self {
            Param::From => "start of the range (inclusive)",
            Param::To => "end of the range (exclusive)",
            Param::PrivilegedRoles => "privileged app roles",
            Param::PrivilegedGroups => "privileged group object ids",
        }
    }
}

/// A condition on one record, with SQL's three-valued logic (a comparison with NULL is unknown,
/// and a filter keeps a record only when its condition is true).
#[derive(Debug, Clone)]
pub enum Pred {
    /// `column = 'value'`.
    Eq(&'static str, &'static str),
    /// `column IN ('a', 'b', ...)`.
    In(&'static str, Vec<&'static str>),
    /// `column IS NOT NULL` (never unknown).
    NotNull(&'static str),
    /// A `text[]` column shares at least one element with a list parameter (`&&`).
    Overlaps(&'static str, Param),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
}

/// What a result column is grouped by.
#[derive(Debug, Clone)]
pub enum GroupExpr {
    /// A text column's value.
    Col(&'static str),
    /// The first of these text columns that is not NULL.
    Coalesce(Vec<&'static str>),
    /// The distinct elements of a `text[]` column that are in a list parameter, sorted by
    /// byte value; empty (never NULL) when there are none or the column is NULL.
    Intersect(&'static str, Param),
    /// `CASE WHEN p1 THEN coalesce(cols1) WHEN p2 THEN ... END`: the first arm whose condition
    /// holds (unknown does not) gives the first non-NULL of its text columns; no arm, NULL.
    Case(Vec<(Pred, Vec<&'static str>)>),
    /// An attribute of a group, not a grouping: the `label` (a [`GroupExpr::Col`],
    /// [`GroupExpr::Coalesce`] or [`GroupExpr::Case`]) of the newest record (greatest
    /// `start_time`; on a tie, the greatest label in byte order) among ALL records of the time
    /// range, whatever the section's filter, whose value of the group column `key` equals this
    /// group's; records without a label are skipped. NULL for a NULL key or when no record has a
    /// label. "A name that changes within the range is one row, with the latest name."
    Latest {
        key: &'static str,
        label: Box<GroupExpr>,
    },
    /// An attribute of a group, not a grouping: the distinct non-NULL values of a per-record
    /// text expression (Col, Coalesce or Case) over the group's records, sorted by byte value;
    /// empty, never NULL.
    Values(Box<GroupExpr>),
}

#[derive(Debug, Clone)]
pub struct GroupBy {
    /// Result column name (CSV header, JSON key). For a [`GroupExpr::Col`] it is the column.
    pub name: &'static str,
    pub expr: GroupExpr,
}

#[derive(Debug, Clone)]
pub enum MeasureKind {
    /// Distinct records (`count(DISTINCT record_id)`): a record stored twice in Parquet
    /// (at-least-once delivery) counts once.
    Records,
    /// Distinct non-NULL values of a text column.
    DistinctValues(&'static str),
}

#[derive(Debug, Clone)]
pub struct Measure {
    pub name: &'static str,
    pub kind: MeasureKind,
    /// Counted only where this holds (SQL `FILTER (WHERE ...)`).
    pub filter: Option<Pred>,
}

/// Keeps only groups whose `keys` (a subset of the section's group-by columns) describe, over
/// ALL records in the time range, a population in which more than `min_percent` % of records
/// satisfy `pred`. Used for "destinations that normally see verified identities".
#[derive(Debug, Clone)]
pub struct Baseline {
    pub keys: Vec<&'static str>,
    pub pred: Pred,
    pub min_percent: u32,
}

#[derive(Debug, Clone)]
pub struct Section {
    /// Stable identifier: CSV file name, JSON key, HTML anchor.
    pub id: &'static str,
    pub title: &'static str,
    /// The SOC 2 (2017 TSC) common criteria this section supports.
    pub criteria: &'static [&'static str],
    pub description: &'static str,
    /// Records counted (besides the time range); `None` = every record in the range.
    pub filter: Option<Pred>,
    pub group_by: Vec<GroupBy>,
    /// The first measure is always `requests` (every matching record); rows are ordered by it.
    pub measures: Vec<Measure>,
    pub baseline: Option<Baseline>,
    /// Measures drawn as stacked bars in the HTML chart (they partition `requests`).
    pub chart: &'static [&'static str],
}

// ---- the vocabulary the sections share --------------------------------------------------

/// A token the collector or the proxy verified. The ONLY meaning of "verified" in a report.
pub fn verified() -> Pred {
    Pred::In(
        "token_status",
        vec![v::TOKEN_VERIFIED, v::TOKEN_PROXY_VERIFIED],
    )
}

/// A mesh workload identified by its mTLS peer certificate (the certificate's URI SAN is in
/// `source_principal`), with no verified token: counted apart from token-verified identities,
/// never added to them. Requiring `source_principal` (rather than `identity_source = mtls`)
/// also reads records written before `peer_metadata` existed correctly: those stored Istio peer
/// metadata alone as `mtls` with a NULL `source_principal`, and land in
/// [`peer_metadata_workload`].
pub fn mtls_workload() -> Pred {
    Pred::And(vec![
        Pred::Eq("identity_kind", v::KIND_WORKLOAD),
        Pred::NotNull("source_principal"),
        Pred::Not(Box::new(verified())),
    ])
}

/// A workload named only by Istio peer metadata (no peer certificate in the entry), with no
/// verified token: a claim the other proxy made, reported apart from certificate-backed
/// workloads and never counted as identified.
pub fn peer_metadata_workload() -> Pred {
    Pred::And(vec![
        Pred::Eq("identity_kind", v::KIND_WORKLOAD),
        Pred::Not(Box::new(Pred::NotNull("source_principal"))),
        Pred::Not(Box::new(verified())),
    ])
}

/// Identified by evidence: a verified token or an mTLS certificate.
pub fn identified() -> Pred {
    Pred::Or(vec![verified(), mtls_workload()])
}

/// Neither a verified token nor a workload (by certificate or peer metadata): anonymous
/// callers, failed tokens.
pub fn unverified() -> Pred {
    Pred::And(vec![
        Pred::Not(Box::new(verified())),
        Pred::Not(Box::new(Pred::Eq("identity_kind", v::KIND_WORKLOAD))),
    ])
}

pub fn denied() -> Pred {
    Pred::Eq("decision", v::DECISION_DENY)
}

/// Every `token_status` that says a presented token must not be trusted.
pub const TOKEN_ANOMALIES: [&str; 7] = [
    v::TOKEN_EXPIRED,
    v::TOKEN_NOT_YET_VALID,
    v::TOKEN_BAD_SIGNATURE,
    v::TOKEN_UNKNOWN_KEY,
    v::TOKEN_WRONG_AUDIENCE,
    v::TOKEN_UNTRUSTED_ISSUER,
    v::TOKEN_MALFORMED,
];

/// A human-readable caller: UPN, else app name, else app id, else object id, else subject,
/// else the mTLS peer. It is what the caller CLAIMED; the verified/unverified measures beside it
/// say whether the claim can be trusted.
/// Identity kinds that are people: identified by their object id.
pub const PERSON_KINDS: [&str; 2] = [v::KIND_USER, v::KIND_GUEST];
/// Identity kinds that are applications acting as themselves: identified by their app id.
pub const APP_KINDS: [&str; 2] = [v::KIND_SERVICE_PRINCIPAL, v::KIND_MANAGED_IDENTITY];

fn person() -> Pred {
    Pred::In("identity_kind", PERSON_KINDS.to_vec())
}

fn application() -> Pred {
    Pred::In("identity_kind", APP_KINDS.to_vec())
}

/// THE caller: who made the request, never the client application a person used. The stable
/// key: a person (user, guest) by object id (else subject); a service principal or managed
/// identity by application id (else object id, else subject); an mTLS workload by SPIFFE id.
/// NULL for anonymous callers. It is what the caller CLAIMED; the verified/unverified measures
/// beside it say whether the claim can be trusted.
pub fn caller_id() -> GroupExpr {
    GroupExpr::Case(vec![
        (person(), vec!["object_id", "subject"]),
        (application(), vec!["app_id", "object_id", "subject"]),
        (
            Pred::Eq("identity_kind", v::KIND_WORKLOAD),
            vec!["source_principal"],
        ),
    ])
}

/// The caller's name in one record: a person's name claim (UPN-like, else `name`); an
/// application's display name (from the directory at ingest); a workload's SPIFFE id.
pub fn caller_name() -> GroupExpr {
    GroupExpr::Case(vec![
        (person(), vec!["user_principal", "display_name"]),
        (application(), vec!["app_display_name"]),
        (
            Pred::Eq("identity_kind", v::KIND_WORKLOAD),
            vec!["source_principal"],
        ),
    ])
}

/// The client application a person signed in through (its display name, else its app id).
/// NULL for other callers: an application's `app_id` is the caller itself.
pub fn client_app() -> GroupExpr {
    GroupExpr::Case(vec![(person(), vec!["app_display_name", "app_id"])])
}

/// The caller columns every section that groups by caller uses: `caller` (the latest name of
/// the caller over the range, see [`GroupExpr::Latest`]) and `caller_id` (the key).
fn caller() -> [GroupBy; 2] {
    [
        GroupBy {
            name: "caller",
            expr: GroupExpr::Latest {
                key: "caller_id",
                label: Box::new(caller_name()),
            },
        },
        GroupBy {
            name: "caller_id",
            expr: caller_id(),
        },
    ]
}

fn col(name: &'static str) -> GroupBy {
    GroupBy {
        name,
        expr: GroupExpr::Col(name),
    }
}

fn destination() -> [GroupBy; 2] {
    [col("destination_namespace"), col("destination_service")]
}

fn records(name: &'static str, filter: Option<Pred>) -> Measure {
    Measure {
        name,
        kind: MeasureKind::Records,
        filter,
    }
}

fn requests() -> Measure {
    records("requests", None)
}

/// requests, verified, mtls_workload, peer_metadata_workload, unverified (the last four
/// partition the first).
fn trust_measures() -> Vec<Measure> {
    vec![
        requests(),
        records("verified", Some(verified())),
        records("mtls_workload", Some(mtls_workload())),
        records("peer_metadata_workload", Some(peer_metadata_workload())),
        records("unverified", Some(unverified())),
    ]
}

const TRUST_CHART: &[&str] = &[
    "verified",
    "mtls_workload",
    "peer_metadata_workload",
    "unverified",
];
const DENY_CHART: &[&str] = &["denied", "not_denied"];

fn deny_measures() -> Vec<Measure> {
    vec![
        requests(),
        records("denied", Some(denied())),
        records("not_denied", Some(Pred::Not(Box::new(denied())))),
    ]
}

/// Every section of the report, in report order.
pub fn sections() -> Vec<Section> {
    let mut with_denied = trust_measures();
    with_denied.push(records("denied", Some(denied())));
    vec![
        Section {
            id: "access_review",
            title: "Access review: who reached which destinations",
            criteria: &["CC6.1", "CC6.2", "CC6.3"],
            description: "Every request in the range, by identity kind, caller and destination. \
                The caller is the principal that made the request, never the client \
                application a person used: a user or guest by object id (`caller_id`), a \
                service principal or managed identity by application id, a workload by SPIFFE \
                id. `caller` is its latest name in the range (a person's name claim, an \
                application's directory name). `client_apps` lists the client applications \
                a person signed in through. \
                `verified` counts only tokens the collector or the proxy verified \
                (token_status verified or proxy_verified); `mtls_workload` counts workloads \
                identified by their mTLS certificate alone; `peer_metadata_workload` counts \
                workloads named only by Istio peer metadata (the other proxy's claim, no \
                certificate); `unverified` is everything else (anonymous callers, failed \
                tokens). The four add up to `requests`. The \
                caller is what the caller claimed and is trustworthy only where \
                the request is counted as verified.",
            filter: None,
            group_by: [col("identity_kind")]
                .into_iter()
                .chain(caller())
                .chain([GroupBy {
                    name: "client_apps",
                    expr: GroupExpr::Values(Box::new(client_app())),
                }])
                .chain(destination())
                .collect(),
            measures: with_denied.clone(),
            baseline: None,
            chart: TRUST_CHART,
        },
        Section {
            id: "denied_by_policy",
            title: "Denied requests by policy",
            criteria: &["CC6.1", "CC6.6", "CC7.2"],
            description: "Requests an authorizer denied (decision = deny), by the engine \
                (rbac, ext_authz, jwt_authn), the matched policy (NAMESPACE/NAME/RULE for Istio \
                AuthorizationPolicy; empty when no policy was named) and the destination.",
            filter: Some(denied()),
            group_by: [col("decision_engine"), col("policy_name")]
                .into_iter()
                .chain(destination())
                .collect(),
            measures: trust_measures(),
            baseline: None,
            chart: TRUST_CHART,
        },
        Section {
            id: "dry_run_would_deny",
            title: "Dry-run policies that would deny",
            criteria: &["CC6.1", "CC8.1"],
            description: "Requests that were allowed but that a dry-run (shadow) policy would \
                have denied (decision = dry_run_deny): the evidence to review before a policy \
                is enforced. `policy_name` is the enforcing policy that allowed, when known.",
            filter: Some(Pred::Eq("decision", v::DECISION_DRY_RUN_DENY)),
            group_by: [col("shadow_policy_name"), col("policy_name")]
                .into_iter()
                .chain(destination())
                .collect(),
            measures: trust_measures(),
            baseline: None,
            chart: TRUST_CHART,
        },
        Section {
            id: "privileged_access",
            title: "Privileged access",
            criteria: &["CC6.1", "CC6.2", "CC6.3"],
            description: "Requests whose token carries an app role or a group that the \
                report's configuration declares privileged (listed above). \
                `privileged_roles` and `privileged_groups` show which of them the token \
                carried. A token that failed verification still shows the roles it claimed, \
                counted as unverified: such a row is a claim of privilege, not a use of it.",
            filter: Some(Pred::Or(vec![
                Pred::Overlaps("roles", Param::PrivilegedRoles),
                Pred::Overlaps("groups", Param::PrivilegedGroups),
            ])),
            group_by: [col("identity_kind")]
                .into_iter()
                .chain(caller())
                .chain([
                GroupBy {
                    name: "privileged_roles",
                    expr: GroupExpr::Intersect("roles", Param::PrivilegedRoles),
                },
                GroupBy {
                    name: "privileged_groups",
                    expr: GroupExpr::Intersect("groups", Param::PrivilegedGroups),
                },
                ])
                .chain(destination())
                .collect(),
            measures: with_denied.clone(),
            baseline: None,
            chart: TRUST_CHART,
        },
        Section {
            id: "non_human_access",
            title: "Non-human access: service principals and managed identities",
            criteria: &["CC6.1", "CC6.2", "CC6.3"],
            description: "Requests made with app-only tokens: service principals and managed \
                identities (applications, automation and AI agents acting as themselves), by \
                application (`caller_id` is the application id, `caller` its latest \
                directory name, `object_id` its service principal) and destination. Workloads \
                identified by mTLS alone are in `source_workloads`.",
            filter: Some(Pred::In(
                "identity_kind",
                vec![v::KIND_SERVICE_PRINCIPAL, v::KIND_MANAGED_IDENTITY],
            )),
            group_by: [col("identity_kind")]
                .into_iter()
                .chain(caller())
                .chain([col("object_id")])
            .chain(destination())
            .collect(),
            measures: with_denied.clone(),
            baseline: None,
            chart: TRUST_CHART,
        },
        Section {
            id: "unverified_access",
            title: "Unverified or anonymous access to destinations that normally see verified identities",
            criteria: &["CC6.1", "CC6.6", "CC7.2"],
            description: "Requests with neither a verified token nor an mTLS certificate \
                (including workloads named only by Istio peer metadata), to destinations where \
                more than half of all requests in the range carried one. `identity` is what the \
                caller claimed, if anything (see `access_review` for `caller`); \
                `client_address` is the original client IP.",
            filter: Some(Pred::Not(Box::new(identified()))),
            group_by: [
                col("destination_namespace"),
                col("destination_service"),
                col("identity_kind"),
                col("token_status"),
            ]
            .into_iter()
            .chain(caller())
            .chain([col("client_address")])
            .collect(),
            measures: deny_measures(),
            baseline: Some(Baseline {
                keys: vec!["destination_namespace", "destination_service"],
                pred: identified(),
                min_percent: 50,
            }),
            chart: DENY_CHART,
        },
        Section {
            id: "token_anomalies",
            title: "Token anomalies",
            criteria: &["CC6.1", "CC7.2"],
            description: "Requests that presented a token which failed a check: expired, not \
                yet valid, bad signature, unknown signing key, wrong audience, untrusted \
                issuer, malformed. `not_denied` counts those that were nevertheless let \
                through by the mesh.",
            filter: Some(Pred::In("token_status", TOKEN_ANOMALIES.to_vec())),
            group_by: [
                col("token_status"),
                col("identity_source"),
                col("issuer"),
                col("identity_kind"),
            ]
            .into_iter()
            .chain(caller())
            .chain(destination())
            .collect(),
            measures: deny_measures(),
            baseline: None,
            chart: DENY_CHART,
        },
        Section {
            id: "source_workloads",
            title: "Source workloads",
            criteria: &["CC6.1", "CC6.6"],
            description: "Which workloads (by mTLS peer: namespace, service account, SPIFFE \
                principal) called which destinations. Empty source columns mean the caller \
                presented no mesh certificate (e.g. traffic entering through a gateway).",
            filter: None,
            group_by: [
                col("source_namespace"),
                col("source_workload"),
                col("source_principal"),
            ]
            .into_iter()
            .chain(destination())
            .collect(),
            measures: with_denied,
            baseline: None,
            chart: TRUST_CHART,
        },
    ]
}

impl Pred {
    /// Every column the predicate reads.
    pub fn columns(&self, out: &mut Vec<&'static str>) {
        match self {
            Pred::Eq(c, _) | Pred::In(c, _) | Pred::NotNull(c) | Pred::Overlaps(c, _) => {
                out.push(c)
            }
            Pred::And(ps) | Pred::Or(ps) => ps.iter().for_each(|p| p.columns(out)),
            Pred::Not(p) => p.columns(out),
        }
    }
}

impl GroupExpr {
    pub fn columns(&self, out: &mut Vec<&'static str>) {
        match self {
            GroupExpr::Col(c) | GroupExpr::Intersect(c, _) => out.push(c),
            GroupExpr::Coalesce(cs) => out.extend(cs.iter().copied()),
            GroupExpr::Case(arms) => {
                for (p, cs) in arms {
                    p.columns(out);
                    out.extend(cs.iter().copied());
                }
            }
            GroupExpr::Latest { label, .. } => label.columns(out),
            GroupExpr::Values(e) => e.columns(out),
        }
    }
}

impl GroupExpr {
    /// A per-record text value (what [`GroupExpr::Latest`] and [`GroupExpr::Values`] take).
    pub fn is_text(&self) -> bool {
        matches!(
            self,
            GroupExpr::Col(_) | GroupExpr::Coalesce(_) | GroupExpr::Case(_)
        )
    }

    /// An attribute computed over a group's records rather than a grouping value.
    pub fn is_aggregate(&self) -> bool {
        matches!(self, GroupExpr::Latest { .. } | GroupExpr::Values(_))
    }
}

impl Section {
    /// The group-by column named `name`.
    pub fn group(&self, name: &str) -> Option<&GroupBy> {
        self.group_by.iter().find(|g| g.name == name)
    }

    /// Every column the section reads (besides `record_id` and `start_time`).
    pub fn columns(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if let Some(f) = &self.filter {
            f.columns(&mut out);
        }
        for g in &self.group_by {
            g.expr.columns(&mut out);
        }
        for m in &self.measures {
            if let MeasureKind::DistinctValues(c) = m.kind {
                out.push(c);
            }
            if let Some(f) = &m.filter {
                f.columns(&mut out);
            }
        }
        if let Some(b) = &self.baseline {
            out.extend(b.keys.iter().copied());
            b.pred.columns(&mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Index of each baseline key among the group-by columns.
    pub fn baseline_positions(&self) -> Option<Vec<usize>> {
        let b = self.baseline.as_ref()?;
        b.keys
            .iter()
            .map(|k| {
                self.group_by
                    .iter()
                    .position(|g| matches!(g.expr, GroupExpr::Col(c) if c == *k))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ColumnType, COLUMNS};

    fn column_type(name: &str) -> Option<ColumnType> {
        COLUMNS
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.column_type())
    }

    fn check_pred(p: &Pred) {
        match p {
            Pred::Eq(c, _) | Pred::In(c, _) | Pred::NotNull(c) => {
                assert_eq!(column_type(c), Some(ColumnType::Text), "{c} must be text")
            }
            Pred::Overlaps(c, param) => {
                assert_eq!(column_type(c), Some(ColumnType::TextArray), "{c}");
                assert!(matches!(
                    param,
                    Param::PrivilegedRoles | Param::PrivilegedGroups
                ));
            }
            Pred::And(ps) | Pred::Or(ps) => ps.iter().for_each(check_pred),
            Pred::Not(p) => check_pred(p),
        }
    }

    fn check_text(e: &GroupExpr) {
        assert!(e.is_text(), "{e:?}");
        let mut cols = Vec::new();
        e.columns(&mut cols);
        if let GroupExpr::Case(arms) = e {
            arms.iter().for_each(|(p, _)| check_pred(p));
        }
        for c in cols {
            assert!(column_type(c).is_some(), "{c}");
        }
    }

    #[test]
    fn sections_read_only_contract_columns_with_the_right_types() {
        let mut ids = std::collections::HashSet::new();
        let mut latest = std::collections::HashMap::new();
        for s in sections() {
            assert!(ids.insert(s.id), "duplicate section {}", s.id);
            assert!(!s.criteria.is_empty(), "{} names no criteria", s.id);
            if let Some(f) = &s.filter {
                check_pred(f);
            }
            let mut names = std::collections::HashSet::new();
            for g in &s.group_by {
                assert!(
                    names.insert(g.name),
                    "{}: duplicate column {}",
                    s.id,
                    g.name
                );
                match &g.expr {
                    GroupExpr::Col(c) => {
                        assert_eq!(*c, g.name);
                        assert_eq!(column_type(c), Some(ColumnType::Text), "{c}");
                    }
                    GroupExpr::Coalesce(cs) => {
                        // A computed column must not shadow a record column (the SQL selects
                        // `r.*` beside it).
                        assert_eq!(column_type(g.name), None, "{}", g.name);
                        for c in cs {
                            assert_eq!(column_type(c), Some(ColumnType::Text), "{c}");
                        }
                    }
                    GroupExpr::Intersect(c, _) => {
                        assert_eq!(column_type(g.name), None, "{}", g.name);
                        assert_eq!(column_type(c), Some(ColumnType::TextArray), "{c}");
                    }
                    GroupExpr::Case(_) => {
                        assert_eq!(column_type(g.name), None, "{}", g.name);
                        check_text(&g.expr);
                    }
                    GroupExpr::Latest { key, label } => {
                        assert_eq!(column_type(g.name), None, "{}", g.name);
                        check_text(label);
                        let k = s.group(key).expect("Latest names a group column");
                        assert!(k.expr.is_text(), "{}: {key} is a per-record value", s.id);
                        // One name, one definition: the evaluator shares it across sections.
                        let def = format!("{:?}", g.expr);
                        let first = latest.entry(g.name).or_insert_with(|| def.clone());
                        assert_eq!(*first, def, "{}: {} defined twice", s.id, g.name);
                    }
                    GroupExpr::Values(e) => {
                        assert_eq!(column_type(g.name), None, "{}", g.name);
                        check_text(e);
                    }
                }
            }
            assert_eq!(s.measures[0].name, "requests", "{}", s.id);
            assert!(s.measures[0].filter.is_none());
            for m in &s.measures {
                assert!(
                    names.insert(m.name),
                    "{}: duplicate column {}",
                    s.id,
                    m.name
                );
                if let Some(f) = &m.filter {
                    check_pred(f);
                }
            }
            for c in s.chart {
                assert!(s.measures.iter().any(|m| m.name == *c), "{}: {c}", s.id);
            }
            if let Some(b) = &s.baseline {
                check_pred(&b.pred);
                assert!(
                    s.baseline_positions().is_some(),
                    "{}: baseline keys must be group-by columns",
                    s.id
                );
                assert!(b.min_percent < 100);
            }
        }
    }
}
