//! Policy decision columns (`decision`, `decision_engine`, `policy_name`, `shadow_policy_name`,
//! `shadow_result`) from what the proxy's authorizers left in an entry
//! (docs/wire-and-identity.md §2.3-2.5, docs/audit-record.md "Policy decision").
//!
//! Pure: no I/O, no clock, and nothing is allocated until [`Decision::fill`] copies the result
//! into the record. Struct metadata is read with the borrowing [`StructView`].
//!
//! Evidence, strongest first:
//! 1. `response_code_details` (HTTP), then `connection_termination_details` (network filters):
//!    `rbac_access_denied_matched_policy[ID]` → deny by rbac (`[none]` / `[]` = no policy
//!    matched, so `policy_name` is NULL); `jwt_authn_access_denied{..}` → deny by jwt_authn;
//!    `ext_authz_denied` → deny by ext_authz; `ext_authz_error` / `ext_authz_invalid` → error by
//!    ext_authz. These name the filter that actually ended the request.
//! 2. The UAEX response flag (`unauthorized_details`) → deny by ext_authz.
//! 3. RBAC dynamic metadata (`envoy.filters.http.rbac`, or `envoy.filters.network.rbac` for TCP):
//!    `<prefix>enforced_engine_result` = `denied` → deny; = `allowed` → allow, with
//!    `<prefix>enforced_effective_policy_id` as the policy.
//! 4. ext_authz ran and did not deny → allow by ext_authz. "Ran" means the ext_authz metadata
//!    namespace is present, or Istio's CUSTOM gate (below) matched a policy.
//!
//! When RBAC and ext_authz both allowed: an RBAC allow that names a matched policy (an ALLOW
//! policy matched) is reported, being the last check of Istio's CUSTOM → DENY → ALLOW order and
//! naming a policy; an RBAC allow with no policy (a DENY filter that matched nothing) only means
//! "no objection", so ext_authz is reported as the engine that allowed.
//!
//! Shadow engines: every `<prefix>shadow_engine_result` / `<prefix>shadow_effective_policy_id`
//! pair is a shadow engine (Istio: `istio_dry_run_allow_`, `istio_dry_run_deny_`; plain Envoy:
//! any prefix, including none), EXCEPT Istio's CUSTOM gate: prefix `istio_ext_authz_`, or (Istio
//! before the prefix existed) a policy id starting `istio-ext-authz`. The gate's shadow engine
//! only decides whether ext_authz is called; it is not a dry run and never fills `shadow_*`.
//! Of several shadow engines the record shows one: a `denied` over an `allowed`, one naming a
//! policy over one that does not, then `istio_dry_run_deny_` over `istio_dry_run_allow_` over
//! others. An allowed request whose shown shadow engine says `denied` is `dry_run_deny` (engine
//! `rbac`). A shadow engine alone (no enforcing authorizer) still means the RBAC filter evaluated
//! the request, so the request is `allow` (or `dry_run_deny`) by `rbac` with no `policy_name`.
//!
//! Policy ids are normalized by [`PolicyId::parse`]: Istio's `ns[NS]-policy[NAME]-rule[N]` becomes
//! `NS/NAME/N`; the CUSTOM forms `istio-ext-authz-ns[..]..` and `istio-ext-authz-<provider>-ns[..]..`
//! and the fail-closed `..-deny-due-to-bad-CUSTOM-action` suffix normalize to the same
//! `NS/NAME/N` (the raw id stays visible in `response_code_details`); anything else is kept raw.
//!
//! Known limits: a dry-run ALLOW policy that would deny matched nothing, so Envoy writes no
//! shadow policy id and such a `dry_run_deny` has a NULL `shadow_policy_name`. More than
//! [`MAX_ENGINES`] distinct RBAC key prefixes in one entry: the extra ones are ignored.

use std::fmt;

use thiserror::Error;

use crate::ingest::pbstruct::{StructError, StructView, Value};
use crate::ingest::wire::{HttpAccessLogEntry, Metadata, ResponseFlags, TcpAccessLogEntry};
use crate::record::id::EntryType;
use crate::record::{text, values, AuditRecord};
use bytes::Bytes;

pub const HTTP_RBAC_NAMESPACE: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_NAMESPACE: &str = "envoy.filters.network.rbac";
pub const HTTP_EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";
pub const NETWORK_EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.network.ext_authz";

/// Istio's shadow-rules prefix for the RBAC filter that gates ext_authz (CUSTOM action).
const EXT_AUTHZ_GATE_PREFIX: &[u8] = b"istio_ext_authz_";
/// Istio's policy-id prefix for CUSTOM policies.
const EXT_AUTHZ_POLICY_PREFIX: &str = "istio-ext-authz";
const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";
const DRY_RUN_DENY_PREFIX: &[u8] = b"istio_dry_run_deny_";
const DRY_RUN_ALLOW_PREFIX: &[u8] = b"istio_dry_run_allow_";

const RBAC_DENIED_DETAILS: &str = "rbac_access_denied_matched_policy[";
const JWT_DENIED_DETAILS: &str = "jwt_authn_access_denied";
const EXT_AUTHZ_DENIED_DETAILS: &str = "ext_authz_denied";
const EXT_AUTHZ_ERROR_DETAILS: [&str; 2] = ["ext_authz_error", "ext_authz_invalid"];

/// Distinct (enforced/shadow, prefix) RBAC engines read from one entry.
pub const MAX_ENGINES: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed `{namespace}` dynamic metadata: {source}")]
pub struct PolicyError {
    pub namespace: &'static str,
    #[source]
    pub source: StructError,
}

/// What the policy columns are read from, borrowed from a decoded entry.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    pub kind: EntryType,
    pub metadata: Option<&'a Metadata>,
    pub response_flags: Option<&'a ResponseFlags>,
    pub response_code_details: &'a [u8],
    pub connection_termination_details: &'a [u8],
}

impl<'a> Evidence<'a> {
    pub fn http(entry: &'a HttpAccessLogEntry) -> Self {
        let common = entry.common_properties.as_ref();
        Evidence {
            kind: EntryType::Http,
            metadata: common.and_then(|c| c.metadata.as_ref()),
            response_flags: common.and_then(|c| c.response_flags.as_ref()),
            response_code_details: entry
                .response
                .as_ref()
                .map_or(&[][..], |r| &r.response_code_details[..]),
            connection_termination_details: common
                .map_or(&[][..], |c| &c.connection_termination_details[..]),
        }
    }

    pub fn tcp(entry: &'a TcpAccessLogEntry) -> Self {
        let common = entry.common_properties.as_ref();
        Evidence {
            kind: EntryType::Tcp,
            metadata: common.and_then(|c| c.metadata.as_ref()),
            response_flags: common.and_then(|c| c.response_flags.as_ref()),
            response_code_details: &[],
            connection_termination_details: common
                .map_or(&[][..], |c| &c.connection_termination_details[..]),
        }
    }
}

/// A policy id as the proxy reported it, parsed but not yet copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyId<'a> {
    /// An Istio AuthorizationPolicy rule; shown as `NAMESPACE/NAME/RULE`.
    Istio {
        namespace: &'a str,
        name: &'a str,
        rule: &'a str,
    },
    /// Any other id, shown as is.
    Raw(&'a str),
}

impl<'a> PolicyId<'a> {
    pub fn parse(id: &'a str) -> Self {
        match istio_parts(id) {
            Some((namespace, name, rule)) => PolicyId::Istio {
                namespace,
                name,
                rule,
            },
            None => PolicyId::Raw(id),
        }
    }
}

impl PolicyId<'_> {
    /// The column value, written straight into the record's text (`to_string` would allocate
    /// and grow a string as the formatter writes each piece).
    pub fn to_column(&self) -> Bytes {
        match self {
            PolicyId::Istio {
                namespace,
                name,
                rule,
            } => text::concat(&[namespace, "/", name, "/", rule]),
            PolicyId::Raw(id) => text::copy(id),
        }
    }
}

impl fmt::Display for PolicyId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyId::Istio {
                namespace,
                name,
                rule,
            } => write!(f, "{namespace}/{name}/{rule}"),
            PolicyId::Raw(id) => f.write_str(id),
        }
    }
}

/// `ns[NS]-policy[NAME]-rule[N]`, optionally behind Istio's CUSTOM prefix (with or without a
/// provider) and before the bad-CUSTOM suffix. Names are read from the outside in (namespace up
/// to the first `]-policy[`, rule after the last `]-rule[`), so brackets inside a name survive.
/// Anything that would not round-trip as `NS/NAME/N` (empty part, `/` in a part, non-numeric
/// rule) is not an Istio id.
fn istio_parts(id: &str) -> Option<(&str, &str, &str)> {
    let mut s = id;
    if let Some(rest) = s.strip_prefix(EXT_AUTHZ_POLICY_PREFIX) {
        let rest = rest.strip_prefix('-')?;
        s = if rest.starts_with("ns[") {
            rest
        } else {
            // `istio-ext-authz-<provider>-ns[...]`
            &rest[rest.find("-ns[")? + 1..]
        };
    }
    let s = s.strip_suffix(BAD_CUSTOM_SUFFIX).unwrap_or(s);
    let body = s.strip_prefix("ns[")?.strip_suffix(']')?;
    let (namespace, rest) = body.split_once("]-policy[")?;
    let (name, rule) = rest.rsplit_once("]-rule[")?;
    let part = |p: &str| !p.is_empty() && !p.contains('/');
    let numeric = !rule.is_empty() && rule.bytes().all(|b| b.is_ascii_digit());
    (part(namespace) && part(name) && numeric).then_some((namespace, name, rule))
}

/// The policy columns of one entry, borrowing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub decision: &'static str,
    pub engine: &'static str,
    pub policy: Option<PolicyId<'a>>,
    pub shadow_policy: Option<PolicyId<'a>>,
    pub shadow_result: Option<&'static str>,
}

impl Decision<'_> {
    /// Copies the decision into the record's policy columns.
    pub fn fill(&self, rec: &mut AuditRecord) {
        rec.decision = text::fixed(self.decision);
        rec.decision_engine = text::fixed(self.engine);
        rec.policy_name = self.policy.map(|p| p.to_column());
        rec.shadow_policy_name = self.shadow_policy.map(|p| p.to_column());
        rec.shadow_result = self.shadow_result.map(text::fixed);
    }
}

/// Reads the policy decision from an entry's evidence.
pub fn decide<'a>(ev: &Evidence<'a>) -> Result<Decision<'a>, PolicyError> {
    let (rbac_ns, ext_authz_ns) = match ev.kind {
        EntryType::Http => (HTTP_RBAC_NAMESPACE, HTTP_EXT_AUTHZ_NAMESPACE),
        EntryType::Tcp => (NETWORK_RBAC_NAMESPACE, NETWORK_EXT_AUTHZ_NAMESPACE),
    };
    let mut rbac_struct = None;
    let mut ext_authz_metadata = false;
    for entry in ev.metadata.map_or(&[][..], |m| &m.filter_metadata[..]) {
        // Map semantics: when a namespace repeats, the last one wins.
        if entry.key == rbac_ns.as_bytes() {
            rbac_struct = Some(&entry.value[..]);
        } else if entry.key == ext_authz_ns.as_bytes() {
            ext_authz_metadata = true;
        }
    }
    let engines = match rbac_struct {
        Some(buf) => Engines::read(StructView::new(buf)).map_err(|source| PolicyError {
            namespace: rbac_ns,
            source,
        })?,
        None => Engines::default(),
    };

    let gate_policy = engines.ext_authz_gate_policy().map(PolicyId::parse);
    let ext_authz_ran = ext_authz_metadata || gate_policy.is_some();
    let enforced = engines.enforced();
    let shadow = engines.shadow();

    let from_details = verdict(ev.response_code_details)
        .or_else(|| verdict(ev.connection_termination_details))
        .or_else(|| {
            ev.response_flags
                .is_some_and(|f| f.unauthorized_details.is_some())
                .then_some(Verdict {
                    decision: values::DECISION_DENY,
                    engine: values::ENGINE_EXT_AUTHZ,
                    policy: None,
                })
        });
    let mut v = match from_details {
        Some(mut v) => {
            if v.engine == values::ENGINE_EXT_AUTHZ {
                // The CUSTOM policy that sent the request to ext_authz.
                v.policy = gate_policy;
            }
            v
        }
        None => fallback(enforced, shadow.is_some(), ext_authz_ran, gate_policy),
    };
    if v.decision == values::DECISION_ALLOW
        && shadow.is_some_and(|s| s.result == Some(EngineResult::Denied))
    {
        v.decision = values::DECISION_DRY_RUN_DENY;
        v.engine = values::ENGINE_RBAC;
    }
    Ok(Decision {
        decision: v.decision,
        engine: v.engine,
        policy: v.policy,
        shadow_policy: shadow.and_then(|s| s.policy).map(PolicyId::parse),
        shadow_result: shadow.and_then(|s| s.result).map(EngineResult::column),
    })
}

#[derive(Debug, Clone, Copy)]
struct Verdict<'a> {
    decision: &'static str,
    engine: &'static str,
    policy: Option<PolicyId<'a>>,
}

/// What a `response_code_details` / `connection_termination_details` value says, if it names an
/// authorizer's outcome.
fn verdict(details: &[u8]) -> Option<Verdict<'_>> {
    let d = std::str::from_utf8(details).ok()?;
    let deny = |engine, policy| {
        Some(Verdict {
            decision: values::DECISION_DENY,
            engine,
            policy,
        })
    };
    if let Some(rest) = d.strip_prefix(RBAC_DENIED_DETAILS) {
        let id = rest.strip_suffix(']').unwrap_or(rest);
        let policy = (!id.is_empty() && id != "none").then(|| PolicyId::parse(id));
        return deny(values::ENGINE_RBAC, policy);
    }
    if d.starts_with(JWT_DENIED_DETAILS) {
        return deny(values::ENGINE_JWT_AUTHN, None);
    }
    if d.starts_with(EXT_AUTHZ_DENIED_DETAILS) {
        return deny(values::ENGINE_EXT_AUTHZ, None);
    }
    if EXT_AUTHZ_ERROR_DETAILS.iter().any(|e| d.starts_with(e)) {
        return Some(Verdict {
            decision: values::DECISION_ERROR,
            engine: values::ENGINE_EXT_AUTHZ,
            policy: None,
        });
    }
    None
}

/// The decision when no details or flag named an outcome (see the module docs for the order).
fn fallback<'a>(
    enforced: Option<EngineReport<'a>>,
    shadow_ran: bool,
    ext_authz_ran: bool,
    gate_policy: Option<PolicyId<'a>>,
) -> Verdict<'a> {
    let rbac = |decision, e: EngineReport<'a>| Verdict {
        decision,
        engine: values::ENGINE_RBAC,
        policy: e.policy.map(PolicyId::parse),
    };
    match enforced {
        Some(e) if e.result == Some(EngineResult::Denied) => rbac(values::DECISION_DENY, e),
        Some(e) if e.policy.is_some() => rbac(values::DECISION_ALLOW, e),
        _ if ext_authz_ran => Verdict {
            decision: values::DECISION_ALLOW,
            engine: values::ENGINE_EXT_AUTHZ,
            policy: gate_policy,
        },
        Some(e) => rbac(values::DECISION_ALLOW, e),
        None if shadow_ran => Verdict {
            decision: values::DECISION_ALLOW,
            engine: values::ENGINE_RBAC,
            policy: None,
        },
        None => Verdict {
            decision: values::DECISION_UNEVALUATED,
            engine: values::ENGINE_NONE,
            policy: None,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineResult {
    Allowed,
    Denied,
}

impl EngineResult {
    fn parse(v: Value<'_>) -> Option<Self> {
        match v.as_str()? {
            "allowed" => Some(EngineResult::Allowed),
            "denied" => Some(EngineResult::Denied),
            _ => None,
        }
    }

    fn column(self) -> &'static str {
        match self {
            EngineResult::Allowed => values::SHADOW_ALLOWED,
            EngineResult::Denied => values::SHADOW_DENIED,
        }
    }
}

/// One RBAC engine's keys: `<prefix>{enforced,shadow}_{engine_result,effective_policy_id}`.
#[derive(Debug, Clone, Copy)]
struct EngineReport<'a> {
    shadow: bool,
    prefix: &'a [u8],
    result: Option<EngineResult>,
    policy: Option<&'a str>,
}

impl EngineReport<'_> {
    fn is_ext_authz_gate(&self) -> bool {
        self.prefix == EXT_AUTHZ_GATE_PREFIX
            || self
                .policy
                .is_some_and(|p| p.starts_with(EXT_AUTHZ_POLICY_PREFIX))
    }

    /// Which of several engines to show: denied first, then one naming a policy.
    fn rank(&self) -> (bool, bool, u8) {
        let prefix = match self.prefix {
            DRY_RUN_DENY_PREFIX => 2,
            DRY_RUN_ALLOW_PREFIX => 1,
            _ => 0,
        };
        (
            self.result == Some(EngineResult::Denied),
            self.policy.is_some(),
            prefix,
        )
    }
}

#[derive(Clone, Copy)]
enum Field {
    Result,
    Policy,
}

/// Key suffixes Envoy's RBAC filters write, after an optional stat prefix.
const KEYS: [(&[u8], bool, Field); 4] = [
    (b"shadow_engine_result", true, Field::Result),
    (b"shadow_effective_policy_id", true, Field::Policy),
    (b"enforced_engine_result", false, Field::Result),
    (b"enforced_effective_policy_id", false, Field::Policy),
];

/// The RBAC engines of one entry, in a fixed array: no allocation per entry.
#[derive(Default)]
struct Engines<'a> {
    slots: [Option<EngineReport<'a>>; MAX_ENGINES],
}

impl<'a> Engines<'a> {
    fn read(view: StructView<'a>) -> Result<Self, StructError> {
        let mut out = Engines::default();
        for entry in view.entries() {
            let (key, value) = entry?;
            let Some((shadow, field, prefix)) = KEYS.iter().find_map(|(suffix, shadow, field)| {
                key.strip_suffix(*suffix).map(|p| (*shadow, *field, p))
            }) else {
                continue;
            };
            let Some(slot) = out.slot(shadow, prefix) else {
                continue;
            };
            match field {
                Field::Result => slot.result = EngineResult::parse(value),
                Field::Policy => slot.policy = value.as_str().filter(|s| !s.is_empty()),
            }
        }
        Ok(out)
    }

    fn slot(&mut self, shadow: bool, prefix: &'a [u8]) -> Option<&mut EngineReport<'a>> {
        let i = self.slots.iter().position(|s| match s {
            Some(e) => e.shadow == shadow && e.prefix == prefix,
            None => true,
        })?;
        Some(self.slots[i].get_or_insert(EngineReport {
            shadow,
            prefix,
            result: None,
            policy: None,
        }))
    }

    fn reported(&self) -> impl Iterator<Item = EngineReport<'a>> + '_ {
        self.slots.iter().flatten().copied()
    }

    fn best(&self, keep: impl Fn(&EngineReport<'a>) -> bool) -> Option<EngineReport<'a>> {
        self.reported()
            .filter(|e| e.result.is_some() && keep(e))
            .max_by_key(EngineReport::rank)
    }

    fn enforced(&self) -> Option<EngineReport<'a>> {
        self.best(|e| !e.shadow)
    }

    fn shadow(&self) -> Option<EngineReport<'a>> {
        self.best(|e| e.shadow && !e.is_ext_authz_gate())
    }

    /// The CUSTOM policy whose match makes Istio call ext_authz, if one matched.
    fn ext_authz_gate_policy(&self) -> Option<&'a str> {
        self.reported()
            .find(|e| e.shadow && e.is_ext_authz_gate() && e.policy.is_some())
            .and_then(|e| e.policy)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use envoy_types::pb::envoy::config::core::v3::Metadata as EnvoyMetadata;
    use envoy_types::pb::envoy::data::accesslog::v3 as al;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, UInt32Value, Value as PbValue};
    use prost::Message;

    use super::*;
    use crate::join::{JoinError, Joiner, StreamContext};
    use crate::record::values::*;
    use crate::record::{AsText, TextExt};

    const HTTP: EntryType = EntryType::Http;
    const TCP: EntryType = EntryType::Tcp;
    const RBAC: &str = HTTP_RBAC_NAMESPACE;
    const NET_RBAC: &str = NETWORK_RBAC_NAMESPACE;
    const VIA: &str = "via_upstream";

    /// One entry in, the five policy columns out.
    struct Case {
        name: &'static str,
        kind: EntryType,
        /// Dynamic metadata: namespace → string-valued keys.
        metadata: &'static [(&'static str, &'static [(&'static str, &'static str)])],
        details: &'static str,
        termination: &'static str,
        uaex: bool,
        want: Want,
    }

    struct Want {
        decision: &'static str,
        engine: &'static str,
        policy: Option<&'static str>,
        shadow_policy: Option<&'static str>,
        shadow_result: Option<&'static str>,
    }

    const fn want(
        decision: &'static str,
        engine: &'static str,
        policy: Option<&'static str>,
    ) -> Want {
        Want {
            decision,
            engine,
            policy,
            shadow_policy: None,
            shadow_result: None,
        }
    }

    const fn shadowed(
        decision: &'static str,
        engine: &'static str,
        policy: Option<&'static str>,
        shadow_policy: Option<&'static str>,
        shadow_result: &'static str,
    ) -> Want {
        Want {
            decision,
            engine,
            policy,
            shadow_policy,
            shadow_result: Some(shadow_result),
        }
    }

    const fn case(name: &'static str, want: Want) -> Case {
        Case {
            name,
            kind: HTTP,
            metadata: &[],
            details: "",
            termination: "",
            uaex: false,
            want,
        }
    }

    fn pb_struct(fields: &[(&str, &str)]) -> Struct {
        Struct {
            fields: fields
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

    /// Encodes the case with Envoy's full generated types, as a proxy would.
    fn encode(c: &Case) -> Bytes {
        let common = al::AccessLogCommon {
            metadata: (!c.metadata.is_empty()).then(|| EnvoyMetadata {
                filter_metadata: c
                    .metadata
                    .iter()
                    .map(|(ns, fields)| ((*ns).to_owned(), pb_struct(fields)))
                    .collect(),
                ..Default::default()
            }),
            response_flags: c.uaex.then(|| al::ResponseFlags {
                unauthorized_details: Some(al::response_flags::Unauthorized { reason: 1 }),
                ..Default::default()
            }),
            connection_termination_details: c.termination.to_owned(),
            ..Default::default()
        };
        match c.kind {
            EntryType::Http => al::HttpAccessLogEntry {
                common_properties: Some(common),
                protocol_version: 3,
                request: Some(al::HttpRequestProperties {
                    request_method: 1,
                    path: "/orders".into(),
                    ..Default::default()
                }),
                response: Some(al::HttpResponseProperties {
                    response_code: Some(UInt32Value { value: 200 }),
                    response_code_details: c.details.to_owned(),
                    ..Default::default()
                }),
            }
            .encode_to_vec()
            .into(),
            EntryType::Tcp => al::TcpAccessLogEntry {
                common_properties: Some(common),
                connection_properties: Some(al::ConnectionProperties {
                    received_bytes: 10,
                    sent_bytes: 20,
                }),
            }
            .encode_to_vec()
            .into(),
        }
    }

    fn join(kind: EntryType, entry: &Bytes) -> Result<AuditRecord, JoinError> {
        Joiner::default().join(&StreamContext::default(), kind, entry, 0)
    }

    const ISTIO_ALLOW: (&str, &str) = (
        "enforced_effective_policy_id",
        "ns[istio-system]-policy[require-entra-jwt]-rule[0]",
    );
    const ENFORCED_ALLOWED: (&str, &str) = ("enforced_engine_result", "allowed");
    const GATE_MATCHED: [(&str, &str); 2] = [
        ("istio_ext_authz_shadow_engine_result", "denied"),
        (
            "istio_ext_authz_shadow_effective_policy_id",
            "istio-ext-authz-ns[shop]-policy[opa]-rule[0]",
        ),
    ];
    const DRY_RUN_DENY_MATCHED: [(&str, &str); 2] = [
        ("istio_dry_run_deny_shadow_engine_result", "denied"),
        (
            "istio_dry_run_deny_shadow_effective_policy_id",
            "ns[payments]-policy[deny-guests]-rule[0]",
        ),
    ];

    /// `rbac_access_denied_matched_policy[...]` details → deny by rbac with this `policy_name`.
    const RBAC_DENY_DETAILS: [(&str, &str, Option<&str>); 7] = [
        (
            "details deny, Istio id normalized",
            "rbac_access_denied_matched_policy[ns[payments]-policy[deny-contractors]-rule[0]]",
            Some("payments/deny-contractors/0"),
        ),
        ("[] also means no policy", "rbac_access_denied_matched_policy[]", None),
        (
            "non-Istio id kept raw",
            "rbac_access_denied_matched_policy[deny_all_the_things]",
            Some("deny_all_the_things"),
        ),
        (
            "brackets inside a name",
            "rbac_access_denied_matched_policy[ns[a]-policy[x[1]]-rule[0]]",
            Some("a/x[1]/0"),
        ),
        (
            "non-numeric rule kept raw",
            "rbac_access_denied_matched_policy[ns[a]-policy[b]-rule[x]]",
            Some("ns[a]-policy[b]-rule[x]"),
        ),
        (
            "truncated details: id kept raw",
            "rbac_access_denied_matched_policy[ns[a]-policy[b]",
            Some("ns[a]-policy[b"),
        ),
        (
            "bad CUSTOM provider: RBAC denies in ext_authz's place",
            "rbac_access_denied_matched_policy[istio-ext-authz-ns[foo]-policy[httpbin-1]-rule[0]-deny-due-to-bad-CUSTOM-action]",
            Some("foo/httpbin-1/0"),
        ),
    ];

    fn cases() -> Vec<Case> {
        let details_denials = RBAC_DENY_DETAILS
            .iter()
            .map(|&(name, details, policy)| Case {
                details,
                ..case(name, want(DECISION_DENY, ENGINE_RBAC, policy))
            });
        details_denials
            .chain([
                // --- nothing ran ---
                Case {
                    details: VIA,
                    ..case("no evidence", want(DECISION_UNEVALUATED, ENGINE_NONE, None))
                },
                Case {
                    metadata: &[(RBAC, &[("enforced_engine_result", "maybe")])],
                    details: VIA,
                    ..case(
                        "unknown engine result is ignored",
                        want(DECISION_UNEVALUATED, ENGINE_NONE, None),
                    )
                },
                Case {
                    metadata: &[(RBAC, &[("istio_ext_authz_shadow_engine_result", "allowed")])],
                    details: VIA,
                    ..case(
                        "CUSTOM gate matched no policy: ext_authz not called, not a dry run",
                        want(DECISION_UNEVALUATED, ENGINE_NONE, None),
                    )
                },
                Case {
                    metadata: &[("envoy.filters.http.jwt_authn", &[("payload", "x")])],
                    details: VIA,
                    ..case(
                        "other namespaces are not authorizers",
                        want(DECISION_UNEVALUATED, ENGINE_NONE, None),
                    )
                },
                // --- RBAC allow ---
                Case {
                    metadata: &[(RBAC, &[ENFORCED_ALLOWED, ISTIO_ALLOW])],
                    details: VIA,
                    ..case(
                        "enforced allow names the Istio policy",
                        want(
                            DECISION_ALLOW,
                            ENGINE_RBAC,
                            Some("istio-system/require-entra-jwt/0"),
                        ),
                    )
                },
                Case {
                    metadata: &[(RBAC, &[ENFORCED_ALLOWED])],
                    details: VIA,
                    ..case(
                        "enforced allow with no matched policy (DENY filter, no match)",
                        want(DECISION_ALLOW, ENGINE_RBAC, None),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("gw_enforced_engine_result", "allowed"),
                            ("gw_enforced_effective_policy_id", "allow-gateway"),
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "rules_stat_prefix, raw policy id",
                        want(DECISION_ALLOW, ENGINE_RBAC, Some("allow-gateway")),
                    )
                },
                // --- RBAC deny ---
                Case {
                    metadata: &[(RBAC, &[("enforced_engine_result", "denied")])],
                    details: "rbac_access_denied_matched_policy[none]",
                    ..case(
                        "[none]: an ALLOW policy exists and nothing matched",
                        want(DECISION_DENY, ENGINE_RBAC, None),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("enforced_engine_result", "denied"),
                            (
                                "enforced_effective_policy_id",
                                "ns[shop]-policy[deny-bots]-rule[2]",
                            ),
                        ],
                    )],
                    ..case(
                        "metadata deny without details",
                        want(DECISION_DENY, ENGINE_RBAC, Some("shop/deny-bots/2")),
                    )
                },
                Case {
                    metadata: &[(RBAC, &[ENFORCED_ALLOWED, ISTIO_ALLOW])],
                    details:
                        "rbac_access_denied_matched_policy[ns[shop]-policy[deny-bots]-rule[0]]",
                    ..case(
                        "details beat stale metadata",
                        want(DECISION_DENY, ENGINE_RBAC, Some("shop/deny-bots/0")),
                    )
                },
                // --- jwt_authn ---
                Case {
                    details: "jwt_authn_access_denied{Jwt_is_expired}",
                    ..case(
                        "jwt_authn deny",
                        want(DECISION_DENY, ENGINE_JWT_AUTHN, None),
                    )
                },
                // --- ext_authz ---
                Case {
                    metadata: &[(RBAC, &GATE_MATCHED)],
                    details: "ext_authz_denied",
                    uaex: true,
                    ..case(
                        "ext_authz deny names the CUSTOM policy; the gate is not a shadow",
                        want(DECISION_DENY, ENGINE_EXT_AUTHZ, Some("shop/opa/0")),
                    )
                },
                Case {
                    details: "request_headers_failed_strict_check",
                    uaex: true,
                    ..case(
                        "UAEX flag alone",
                        want(DECISION_DENY, ENGINE_EXT_AUTHZ, None),
                    )
                },
                Case {
                    metadata: &[(RBAC, &GATE_MATCHED)],
                    details: "ext_authz_error",
                    ..case(
                        "ext_authz error",
                        want(DECISION_ERROR, ENGINE_EXT_AUTHZ, Some("shop/opa/0")),
                    )
                },
                Case {
                    details: "ext_authz_invalid",
                    ..case(
                        "ext_authz invalid response",
                        want(DECISION_ERROR, ENGINE_EXT_AUTHZ, None),
                    )
                },
                Case {
                    metadata: &[(HTTP_EXT_AUTHZ_NAMESPACE, &[("tenant", "contoso")])],
                    details: VIA,
                    ..case(
                        "ext_authz metadata, not denied",
                        want(DECISION_ALLOW, ENGINE_EXT_AUTHZ, None),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("istio_ext_authz_shadow_engine_result", "denied"),
                            (
                                "istio_ext_authz_shadow_effective_policy_id",
                                "istio-ext-authz-my-opa-ns[shop]-policy[opa]-rule[1]",
                            ),
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "CUSTOM gate with provider, ext_authz allowed",
                        want(DECISION_ALLOW, ENGINE_EXT_AUTHZ, Some("shop/opa/1")),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("shadow_engine_result", "denied"),
                            (
                                "shadow_effective_policy_id",
                                "istio-ext-authz-ns[shop]-policy[opa]-rule[0]",
                            ),
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "pre-prefix Istio CUSTOM gate (unprefixed keys)",
                        want(DECISION_ALLOW, ENGINE_EXT_AUTHZ, Some("shop/opa/0")),
                    )
                },
                Case {
                    metadata: &[
                        (RBAC, &[ENFORCED_ALLOWED, ISTIO_ALLOW]),
                        (HTTP_EXT_AUTHZ_NAMESPACE, &[("tenant", "contoso")]),
                    ],
                    details: VIA,
                    ..case(
                        "RBAC ALLOW match and ext_authz: the RBAC policy is reported",
                        want(
                            DECISION_ALLOW,
                            ENGINE_RBAC,
                            Some("istio-system/require-entra-jwt/0"),
                        ),
                    )
                },
                Case {
                    metadata: &[
                        (RBAC, &[ENFORCED_ALLOWED]),
                        (HTTP_EXT_AUTHZ_NAMESPACE, &[("tenant", "contoso")]),
                    ],
                    details: VIA,
                    ..case(
                        "RBAC no-objection and ext_authz: ext_authz is reported",
                        want(DECISION_ALLOW, ENGINE_EXT_AUTHZ, None),
                    )
                },
                // --- shadow / dry run ---
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ENFORCED_ALLOWED,
                            ISTIO_ALLOW,
                            DRY_RUN_DENY_MATCHED[0],
                            DRY_RUN_DENY_MATCHED[1],
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "dry-run DENY policy would deny",
                        shadowed(
                            DECISION_DRY_RUN_DENY,
                            ENGINE_RBAC,
                            Some("istio-system/require-entra-jwt/0"),
                            Some("payments/deny-guests/0"),
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[("istio_dry_run_allow_shadow_engine_result", "denied")],
                    )],
                    details: VIA,
                    ..case(
                        "dry-run ALLOW policies matched nothing: no policy id exists",
                        shadowed(
                            DECISION_DRY_RUN_DENY,
                            ENGINE_RBAC,
                            None,
                            None,
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("istio_dry_run_allow_shadow_engine_result", "allowed"),
                            (
                                "istio_dry_run_allow_shadow_effective_policy_id",
                                "ns[shop]-policy[allow-readers]-rule[0]",
                            ),
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "dry-run ALLOW matched, shadow only",
                        shadowed(
                            DECISION_ALLOW,
                            ENGINE_RBAC,
                            None,
                            Some("shop/allow-readers/0"),
                            SHADOW_ALLOWED,
                        ),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ENFORCED_ALLOWED,
                            ("shadow_engine_result", "denied"),
                            ("shadow_effective_policy_id", "legacy-deny"),
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "plain Envoy shadow rules, no prefix",
                        shadowed(
                            DECISION_DRY_RUN_DENY,
                            ENGINE_RBAC,
                            None,
                            Some("legacy-deny"),
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("istio_dry_run_allow_shadow_engine_result", "allowed"),
                            (
                                "istio_dry_run_allow_shadow_effective_policy_id",
                                "ns[shop]-policy[allow-readers]-rule[0]",
                            ),
                            DRY_RUN_DENY_MATCHED[0],
                            DRY_RUN_DENY_MATCHED[1],
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "both dry-run prefixes: the denying one is shown",
                        shadowed(
                            DECISION_DRY_RUN_DENY,
                            ENGINE_RBAC,
                            None,
                            Some("payments/deny-guests/0"),
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("istio_dry_run_allow_shadow_engine_result", "denied"),
                            DRY_RUN_DENY_MATCHED[0],
                            DRY_RUN_DENY_MATCHED[1],
                        ],
                    )],
                    details: VIA,
                    ..case(
                        "both deny: the one naming a policy is shown",
                        shadowed(
                            DECISION_DRY_RUN_DENY,
                            ENGINE_RBAC,
                            None,
                            Some("payments/deny-guests/0"),
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            ("enforced_engine_result", "denied"),
                            DRY_RUN_DENY_MATCHED[0],
                            DRY_RUN_DENY_MATCHED[1],
                        ],
                    )],
                    details: "rbac_access_denied_matched_policy[none]",
                    ..case(
                        "shadow is reported on a plain deny too",
                        shadowed(
                            DECISION_DENY,
                            ENGINE_RBAC,
                            None,
                            Some("payments/deny-guests/0"),
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    metadata: &[
                        (RBAC, &[DRY_RUN_DENY_MATCHED[0], DRY_RUN_DENY_MATCHED[1]]),
                        (HTTP_EXT_AUTHZ_NAMESPACE, &[("tenant", "contoso")]),
                    ],
                    details: VIA,
                    ..case(
                        "ext_authz allowed, dry-run would deny: dry_run_deny by rbac",
                        shadowed(
                            DECISION_DRY_RUN_DENY,
                            ENGINE_RBAC,
                            None,
                            Some("payments/deny-guests/0"),
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    metadata: &[(
                        RBAC,
                        &[
                            GATE_MATCHED[0],
                            GATE_MATCHED[1],
                            ("istio_dry_run_deny_shadow_engine_result", "allowed"),
                        ],
                    )],
                    details: "ext_authz_denied",
                    uaex: true,
                    ..case(
                        "gate ignored, real dry run kept",
                        shadowed(
                            DECISION_DENY,
                            ENGINE_EXT_AUTHZ,
                            Some("shop/opa/0"),
                            None,
                            SHADOW_ALLOWED,
                        ),
                    )
                },
                // --- TCP / network filters ---
                Case {
                    kind: TCP,
                    termination:
                        "rbac_access_denied_matched_policy[ns[db]-policy[deny-all]-rule[0]]",
                    ..case(
                        "network RBAC deny in connection_termination_details",
                        want(DECISION_DENY, ENGINE_RBAC, Some("db/deny-all/0")),
                    )
                },
                Case {
                    kind: TCP,
                    metadata: &[(
                        NET_RBAC,
                        &[
                            ("tcp.enforced_engine_result", "allowed"),
                            (
                                "tcp.enforced_effective_policy_id",
                                "ns[db]-policy[allow-app]-rule[0]",
                            ),
                            DRY_RUN_DENY_MATCHED[0],
                            DRY_RUN_DENY_MATCHED[1],
                        ],
                    )],
                    ..case(
                        "network RBAC allow with a dry-run deny",
                        shadowed(
                            DECISION_DRY_RUN_DENY,
                            ENGINE_RBAC,
                            Some("db/allow-app/0"),
                            Some("payments/deny-guests/0"),
                            SHADOW_DENIED,
                        ),
                    )
                },
                Case {
                    kind: TCP,
                    metadata: &[(RBAC, &[ENFORCED_ALLOWED, ISTIO_ALLOW])],
                    ..case(
                        "HTTP RBAC namespace on a TCP entry is not read",
                        want(DECISION_UNEVALUATED, ENGINE_NONE, None),
                    )
                },
                Case {
                    metadata: &[(NET_RBAC, &[ENFORCED_ALLOWED, ISTIO_ALLOW])],
                    details: VIA,
                    ..case(
                        "network RBAC namespace on an HTTP entry is not read",
                        want(DECISION_UNEVALUATED, ENGINE_NONE, None),
                    )
                },
                Case {
                    kind: TCP,
                    uaex: true,
                    ..case(
                        "network ext_authz deny (UAEX)",
                        want(DECISION_DENY, ENGINE_EXT_AUTHZ, None),
                    )
                },
                Case {
                    kind: TCP,
                    metadata: &[(NETWORK_EXT_AUTHZ_NAMESPACE, &[("tenant", "contoso")])],
                    ..case(
                        "network ext_authz metadata",
                        want(DECISION_ALLOW, ENGINE_EXT_AUTHZ, None),
                    )
                },
            ])
            .collect()
    }

    #[test]
    fn entry_in_policy_columns_out() {
        let cases = cases();
        let mut failures = Vec::new();
        for c in &cases {
            let rec = match join(c.kind, &encode(c)) {
                Ok(rec) => rec,
                Err(e) => {
                    failures.push(format!("{}: join failed: {e}", c.name));
                    continue;
                }
            };
            let got = (
                rec.decision.as_text(),
                rec.decision_engine.as_text(),
                rec.policy_name.text(),
                rec.shadow_policy_name.text(),
                rec.shadow_result.text(),
            );
            let w = &c.want;
            let want = (
                w.decision,
                w.engine,
                w.policy,
                w.shadow_policy,
                w.shadow_result,
            );
            if got != want {
                failures.push(format!("{}:\n   got  {got:?}\n   want {want:?}", c.name));
            }
            check_invariants(c.name, &rec, &mut failures);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));

        // Every decision value and every engine appears in the table.
        for d in [
            DECISION_ALLOW,
            DECISION_DENY,
            DECISION_DRY_RUN_DENY,
            DECISION_ERROR,
            DECISION_UNEVALUATED,
        ] {
            assert!(
                cases.iter().any(|c| c.want.decision == d),
                "no case for {d}"
            );
        }
        for e in [ENGINE_RBAC, ENGINE_EXT_AUTHZ, ENGINE_JWT_AUTHN, ENGINE_NONE] {
            assert!(cases.iter().any(|c| c.want.engine == e), "no case for {e}");
        }
    }

    /// The contract's rules that hold for every record.
    fn check_invariants(name: &str, rec: &AuditRecord, failures: &mut Vec<String>) {
        if (rec.decision == DECISION_UNEVALUATED) != (rec.decision_engine == ENGINE_NONE) {
            failures.push(format!("{name}: engine none iff unevaluated"));
        }
        if rec.decision == DECISION_DRY_RUN_DENY
            && (rec.decision_engine != ENGINE_RBAC
                || rec.shadow_result.text() != Some(SHADOW_DENIED))
        {
            failures.push(format!(
                "{name}: dry_run_deny needs engine rbac, shadow denied"
            ));
        }
        if rec.shadow_policy_name.is_some() && rec.shadow_result.is_none() {
            failures.push(format!("{name}: shadow policy without a shadow result"));
        }
    }

    #[test]
    fn policy_ids_normalize_or_stay_raw() {
        let table = [
            (
                "ns[istio-system]-policy[require-entra-jwt]-rule[0]",
                "istio-system/require-entra-jwt/0",
            ),
            ("ns[a]-policy[b]-rule[12]", "a/b/12"),
            ("istio-ext-authz-ns[foo]-policy[bar]-rule[0]", "foo/bar/0"),
            (
                "istio-ext-authz-opa-grpc-ns[foo]-policy[bar]-rule[3]",
                "foo/bar/3",
            ),
            (
                "istio-ext-authz-ns[foo]-policy[bar]-rule[0]-deny-due-to-bad-CUSTOM-action",
                "foo/bar/0",
            ),
            (
                "istio-ext-authz-opa-ns[foo]-policy[bar]-rule[1]-deny-due-to-bad-CUSTOM-action",
                "foo/bar/1",
            ),
            ("ns[a]-policy[x[1]]-rule[0]", "a/x[1]/0"),
            ("ns[a]-policy[x]-rule[0]]-rule[1]", "a/x]-rule[0]/1"),
            // Kept raw: anything that would not round-trip.
            ("ns[]-policy[b]-rule[0]", "ns[]-policy[b]-rule[0]"),
            ("ns[a]-policy[]-rule[0]", "ns[a]-policy[]-rule[0]"),
            ("ns[a/b]-policy[c]-rule[0]", "ns[a/b]-policy[c]-rule[0]"),
            ("ns[a]-policy[b]-rule[]", "ns[a]-policy[b]-rule[]"),
            ("ns[a]-policy[b]-rule[-1]", "ns[a]-policy[b]-rule[-1]"),
            ("ns[a]-policy[b]", "ns[a]-policy[b]"),
            (
                "ns[a]-policy[b]-rule[0]trailing",
                "ns[a]-policy[b]-rule[0]trailing",
            ),
            ("istio-ext-authz", "istio-ext-authz"),
            (
                "istio-ext-authz-provider-only",
                "istio-ext-authz-provider-only",
            ),
            (
                "istio-ext-authzns[a]-policy[b]-rule[0]",
                "istio-ext-authzns[a]-policy[b]-rule[0]",
            ),
            ("my policy", "my policy"),
            ("", ""),
        ];
        for (id, want) in table {
            assert_eq!(PolicyId::parse(id).to_string(), want, "{id}");
            assert_eq!(PolicyId::parse(id).to_column(), want, "{id}");
        }
    }

    #[test]
    fn malformed_rbac_struct_is_a_join_error_naming_the_namespace() {
        use crate::ingest::wire;
        // A Struct whose first field claims 5 bytes but carries 1.
        let entry = wire::HttpAccessLogEntry {
            common_properties: Some(wire::AccessLogCommon {
                metadata: Some(wire::Metadata {
                    filter_metadata: vec![wire::BytesEntry {
                        key: Bytes::from_static(RBAC.as_bytes()),
                        value: Bytes::from_static(&[0x0a, 0x05, 0x01]),
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = join(HTTP, &entry.encode_to_vec().into()).expect_err("malformed metadata");
        assert!(
            matches!(
                &err,
                JoinError::Policy(PolicyError {
                    namespace: HTTP_RBAC_NAMESPACE,
                    source: StructError::Truncated
                })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "malformed `envoy.filters.http.rbac` dynamic metadata: truncated protobuf value"
        );

        // Every truncation of a real RBAC Struct is an error or a decision, never a panic.
        let good =
            pb_struct(&[ENFORCED_ALLOWED, ISTIO_ALLOW, DRY_RUN_DENY_MATCHED[0]]).encode_to_vec();
        let mut errors = 0;
        for cut in 0..good.len() {
            errors += usize::from(decide_raw_rbac(&good[..cut], b"").is_err());
        }
        assert!(errors > 0, "some truncation must be reported");
    }

    #[test]
    fn non_string_values_are_ignored() {
        let mut s = pb_struct(&[ISTIO_ALLOW]);
        s.fields.insert(
            "enforced_engine_result".into(),
            PbValue {
                kind: Some(Kind::BoolValue(true)),
            },
        );
        let got = decide_raw_rbac(&s.encode_to_vec(), VIA.as_bytes());
        assert_eq!(got, Ok((DECISION_UNEVALUATED, ENGINE_NONE, None)));
    }

    #[test]
    fn more_prefixes_than_slots_are_ignored_not_fatal() {
        let keys: Vec<(String, String)> = (0..MAX_ENGINES + 3)
            .map(|i| (format!("p{i}_shadow_engine_result"), "allowed".to_owned()))
            .collect();
        let fields: Vec<(&str, &str)> =
            keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let got = decide_raw_rbac(&pb_struct(&fields).encode_to_vec(), b"");
        assert_eq!(got, Ok((DECISION_ALLOW, ENGINE_RBAC, Some(SHADOW_ALLOWED))));
    }

    /// Decides an HTTP entry whose RBAC namespace holds `rbac` as is (possibly malformed):
    /// decision, engine, shadow result.
    fn decide_raw_rbac(
        rbac: &[u8],
        details: &[u8],
    ) -> Result<(&'static str, &'static str, Option<&'static str>), PolicyError> {
        let md = crate::ingest::wire::Metadata {
            filter_metadata: vec![crate::ingest::wire::BytesEntry {
                key: Bytes::from_static(RBAC.as_bytes()),
                value: Bytes::copy_from_slice(rbac),
            }],
        };
        let ev = Evidence {
            kind: HTTP,
            metadata: Some(&md),
            response_flags: None,
            response_code_details: details,
            connection_termination_details: b"",
        };
        decide(&ev).map(|d| (d.decision, d.engine, d.shadow_result))
    }
}
