//! Writing the report: HTML, CSV and JSON renderings of the same evaluated sections, and a
//! manifest with the SHA-256 of every file written.

pub mod csv;
pub mod html;
pub mod json;
pub mod manifest;

/// Terms every rendering explains the same way.
pub const DEFINITIONS: &[(&str, &str)] = &[
    (
        "requests",
        "distinct audit records (DISTINCT record_id) matching the section, by request start time",
    ),
    (
        "verified",
        "records whose token the collector verified or the proxy verified for that request \
         (token_status verified or proxy_verified); nothing else is ever counted as verified",
    ),
    (
        "mtls_workload",
        "records whose caller is a mesh workload identified by its mTLS certificate alone \
         (identity_kind workload with the certificate's URI SAN in source_principal), shown \
         apart from token-verified identities",
    ),
    (
        "peer_metadata_workload",
        "records whose caller is a mesh workload named only by Istio peer metadata \
         (identity_kind workload, no peer certificate: source_principal NULL): a claim the \
         other proxy made, not a certificate, and never counted as identified",
    ),
    (
        "unverified",
        "all other records: anonymous callers and tokens that failed a check; any identity \
         shown for them is a claim, not a verified fact. verified + mtls_workload + \
         peer_metadata_workload + unverified = requests",
    ),
    (
        "denied / not_denied",
        "decision = deny (an authorizer refused the request), and every other decision",
    ),
    (
        "NULL",
        "the record does not know this value (the contract never stores unknown as empty)",
    ),
];
