//! The audit record: the one place where the public schema (docs/audit-record.md) lives in code.
//!
//! The record type itself is generated from `proto/meshaudit/v1/audit_record.proto` (field names
//! are column names). [`COLUMNS`] lists every column once, in contract order, with its SQL type and
//! an accessor; the Arrow/Parquet schema, the Parquet encoder and the Postgres column list are all
//! derived from it, so a column added here appears everywhere at once.

pub mod arrow;
pub mod id;
pub mod text;

use bytes::Bytes;
pub use text::{AsText, TextExt};

/// Types generated from `proto/meshaudit/v1/audit_record.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/meshaudit.v1.rs"));
}

pub use proto::{AuditRecord, NullableString, NullableStringList, StringList};

/// The SQL type of a column, as written in docs/audit-record.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int,
    BigInt,
    Float8,
    Bool,
    Timestamptz,
    TextArray,
}

impl ColumnType {
    /// The type's name in the contract and in Postgres.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Int => "int",
            ColumnType::BigInt => "bigint",
            ColumnType::Float8 => "float8",
            ColumnType::Bool => "bool",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::TextArray => "text[]",
        }
    }
}

/// How to read one column's value out of a record.
#[derive(Clone, Copy)]
pub enum Getter {
    /// UTF-8 bytes (see [`text`]); read them with [`text::as_str`].
    Text(fn(&AuditRecord) -> Option<&[u8]>),
    Int(fn(&AuditRecord) -> Option<i32>),
    BigInt(fn(&AuditRecord) -> Option<i64>),
    Float8(fn(&AuditRecord) -> Option<f64>),
    Bool(fn(&AuditRecord) -> Option<bool>),
    /// Microseconds since the Unix epoch, UTC.
    Timestamptz(fn(&AuditRecord) -> Option<i64>),
    TextArray(fn(&AuditRecord) -> Option<&[Bytes]>),
    /// A text[] whose elements may be NULL.
    NullableTextArray(fn(&AuditRecord) -> Option<&[NullableString]>),
}

impl Getter {
    pub fn column_type(&self) -> ColumnType {
        match self {
            Getter::Text(_) => ColumnType::Text,
            Getter::Int(_) => ColumnType::Int,
            Getter::BigInt(_) => ColumnType::BigInt,
            Getter::Float8(_) => ColumnType::Float8,
            Getter::Bool(_) => ColumnType::Bool,
            Getter::Timestamptz(_) => ColumnType::Timestamptz,
            Getter::TextArray(_) | Getter::NullableTextArray(_) => ColumnType::TextArray,
        }
    }
}

/// One column of the contract.
pub struct Column {
    pub name: &'static str,
    /// False for columns the contract never leaves NULL.
    pub nullable: bool,
    pub get: Getter,
}

impl Column {
    pub fn column_type(&self) -> ColumnType {
        self.get.column_type()
    }
}

macro_rules! column {
    ($n:ident, text) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::Text(|r| r.$n.as_deref()),
        }
    };
    ($n:ident, text_not_null) => {
        Column {
            name: stringify!($n),
            nullable: false,
            get: Getter::Text(|r| Some(&r.$n[..])),
        }
    };
    ($n:ident, int) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::Int(|r| r.$n),
        }
    };
    ($n:ident, bigint) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::BigInt(|r| r.$n),
        }
    };
    ($n:ident, float8) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::Float8(|r| r.$n),
        }
    };
    ($n:ident, bool) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::Bool(|r| r.$n),
        }
    };
    ($n:ident, timestamptz) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::Timestamptz(|r| r.$n),
        }
    };
    ($n:ident, timestamptz_not_null) => {
        Column {
            name: stringify!($n),
            nullable: false,
            get: Getter::Timestamptz(|r| Some(r.$n)),
        }
    };
    ($n:ident, text_array) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::TextArray(|r| r.$n.as_ref().map(|l| l.values.as_slice())),
        }
    };
    // Never NULL: a missing list reads as the empty list.
    ($n:ident, text_array_not_null) => {
        Column {
            name: stringify!($n),
            nullable: false,
            get: Getter::TextArray(|r| {
                Some(r.$n.as_ref().map_or(&[][..], |l| l.values.as_slice()))
            }),
        }
    };
    ($n:ident, nullable_text_array) => {
        Column {
            name: stringify!($n),
            nullable: true,
            get: Getter::NullableTextArray(|r| r.$n.as_ref().map(|l| l.values.as_slice())),
        }
    };
}

macro_rules! columns {
    ($($name:ident : $kind:ident),* $(,)?) => {
        /// Every column of the contract, in the order of docs/audit-record.md.
        pub static COLUMNS: &[Column] = &[$(column!($name, $kind)),*];
    };
}

columns! {
    // Event
    record_id: text_not_null,
    start_time: timestamptz,
    received_at: timestamptz_not_null,
    duration_ms: float8,
    entry_kind: text_not_null,
    log_name: text,
    node_id: text,
    mesh_cluster: text,
    // Traffic
    protocol: text,
    method: text,
    scheme: text,
    authority: text,
    path: text,
    route_name: text,
    status_code: int,
    response_flags: text_array_not_null,
    response_code_details: text,
    request_bytes: bigint,
    response_bytes: bigint,
    request_id: text,
    trace_id: text,
    user_agent: text,
    client_address: text,
    upstream_cluster: text,
    upstream_host: text,
    source_principal: text,
    source_namespace: text,
    source_workload: text,
    destination_principal: text,
    destination_namespace: text,
    destination_service: text,
    // Identity
    identity_kind: text_not_null,
    identity_source: text_not_null,
    token_status: text_not_null,
    tenant_id: text,
    object_id: text,
    subject: text,
    user_principal: text,
    display_name: text,
    app_id: text,
    app_display_name: text,
    groups: text_array,
    group_names: nullable_text_array,
    groups_overage: bool,
    roles: text_array,
    scopes: text_array,
    issuer: text,
    audience: text,
    token_version: text,
    token_id: text,
    token_issued_at: timestamptz,
    token_expires_at: timestamptz,
    auth_methods: text_array,
    // Policy decision
    decision: text_not_null,
    decision_engine: text_not_null,
    policy_name: text,
    shadow_policy_name: text,
    shadow_result: text,
    // Ingest checks
    start_time_reported_secs: bigint,
}

/// Builds a `StringList` (a present text[] value).
pub fn string_list<I, S>(values: I) -> StringList
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    StringList {
        values: values.into_iter().map(|v| text::copy(v.as_ref())).collect(),
    }
}

/// Values of the closed-set text columns. Kept as constants so that a typo cannot invent a new
/// value that dashboards and reports would not know.
pub mod values {
    pub const ENTRY_HTTP: &str = "http";
    pub const ENTRY_TCP: &str = "tcp";

    pub const KIND_USER: &str = "user";
    pub const KIND_GUEST: &str = "guest";
    pub const KIND_SERVICE_PRINCIPAL: &str = "service_principal";
    pub const KIND_MANAGED_IDENTITY: &str = "managed_identity";
    pub const KIND_WORKLOAD: &str = "workload";
    pub const KIND_ANONYMOUS: &str = "anonymous";

    pub const SOURCE_JWT_METADATA: &str = "jwt_metadata";
    pub const SOURCE_JWT_HEADER: &str = "jwt_header";
    pub const SOURCE_PAYLOAD_HEADER: &str = "payload_header";
    pub const SOURCE_MTLS: &str = "mtls";
    /// Istio peer metadata alone (no peer certificate in the entry): a claim the other proxy
    /// made, not a certificate.
    pub const SOURCE_PEER_METADATA: &str = "peer_metadata";
    pub const SOURCE_NONE: &str = "none";

    pub const TOKEN_VERIFIED: &str = "verified";
    pub const TOKEN_PROXY_VERIFIED: &str = "proxy_verified";
    pub const TOKEN_EXPIRED: &str = "expired";
    pub const TOKEN_NOT_YET_VALID: &str = "not_yet_valid";
    pub const TOKEN_BAD_SIGNATURE: &str = "bad_signature";
    pub const TOKEN_UNKNOWN_KEY: &str = "unknown_key";
    pub const TOKEN_WRONG_AUDIENCE: &str = "wrong_audience";
    pub const TOKEN_UNTRUSTED_ISSUER: &str = "untrusted_issuer";
    pub const TOKEN_MALFORMED: &str = "malformed";
    pub const TOKEN_ABSENT: &str = "absent";

    pub const DECISION_ALLOW: &str = "allow";
    pub const DECISION_DENY: &str = "deny";
    pub const DECISION_DRY_RUN_DENY: &str = "dry_run_deny";
    pub const DECISION_ERROR: &str = "error";
    pub const DECISION_UNEVALUATED: &str = "unevaluated";

    pub const ENGINE_RBAC: &str = "rbac";
    pub const ENGINE_EXT_AUTHZ: &str = "ext_authz";
    pub const ENGINE_JWT_AUTHN: &str = "jwt_authn";
    pub const ENGINE_NONE: &str = "none";

    pub const SHADOW_ALLOWED: &str = "allowed";
    pub const SHADOW_DENIED: &str = "denied";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in COLUMNS {
            assert!(seen.insert(c.name), "duplicate column {}", c.name);
            assert!(
                c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{}",
                c.name
            );
        }
    }

    /// The column tables of the contract (docs/audit-record.md, a copy of the shared spec):
    /// same names, same order, same types.
    #[test]
    fn columns_match_the_contract() {
        let doc = include_str!("../../docs/audit-record.md");
        let mut contract = Vec::new();
        let mut in_table = false;
        for line in doc.lines() {
            if line.starts_with("| column | type |") {
                in_table = true;
                continue;
            }
            if !line.starts_with('|') {
                in_table = false;
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if in_table && cells.len() > 3 && !cells[1].starts_with("---") {
                contract.push((cells[1].to_owned(), cells[2].to_owned()));
            }
        }
        assert!(
            contract.len() > 50,
            "parsed too few columns: {}",
            contract.len()
        );
        let ours: Vec<(String, String)> = COLUMNS
            .iter()
            .map(|c| (c.name.to_owned(), c.column_type().sql().to_owned()))
            .collect();
        assert_eq!(ours, contract);
    }

    #[test]
    fn not_null_list_reads_missing_as_empty() {
        let r = AuditRecord::default();
        let col = COLUMNS
            .iter()
            .find(|c| c.name == "response_flags")
            .expect("column exists");
        match col.get {
            Getter::TextArray(f) => assert_eq!(f(&r), Some(&[][..])),
            _ => panic!("response_flags must be text[]"),
        }
        let groups = COLUMNS
            .iter()
            .find(|c| c.name == "groups")
            .expect("column exists");
        match groups.get {
            Getter::TextArray(f) => assert_eq!(f(&r), None),
            _ => panic!("groups must be text[]"),
        }
    }
}
