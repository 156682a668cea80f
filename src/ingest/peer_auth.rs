//! Which TLS peers may write access logs: checked once per stream, before any message is read.
//!
//! The TLS layer (see [`super::tls`]) has already verified that a presented client certificate
//! chains to the configured client CA and that the peer holds its key. Here the stream's peer is
//! held to the allow-list:
//!
//! - no certificate where the listener requires one → `UNAUTHENTICATED`;
//! - with an allow-list: the certificate must be an X509-SVID, i.e. carry exactly one URI SAN,
//!   a valid SPIFFE ID, and that ID must match an allowed ID or trust domain → else
//!   `PERMISSION_DENIED`. Without an allow-list any certificate from the client CA may write.
//!
//! # Allow-list rules
//!
//! - `--als-allowed-trust-domain cluster.local` (or `spiffe://cluster.local`): any SPIFFE ID in
//!   that trust domain. Trust domains compare case-insensitively (the SPIFFE spec makes them
//!   lower-case); a value with a path is refused at start-up, since it would allow the whole
//!   domain while looking like one ID.
//! - `--als-allowed-spiffe-id spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account`:
//!   exactly that ID. A path segment that is exactly `*` matches any one non-empty segment, so
//!   `spiffe://cluster.local/ns/istio-system/sa/*` allows every service account of
//!   `istio-system` and `spiffe://cluster.local/ns/*/sa/istio-ingressgateway-service-account`
//!   that account in any namespace. There is no partial-segment or multi-segment wildcard, and
//!   the trust domain cannot be a wildcard: a pattern always names its trust domain and its
//!   number of segments.
//!
//! Refusal messages name what was wrong and the peer's SPIFFE ID (an identity, not a secret);
//! they never echo certificate bytes.

use spiffe::{SpiffeId, TrustDomain};
use thiserror::Error;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::Status;

use crate::telemetry::Rejection;

/// An allow-list entry that is not a valid SPIFFE ID / trust domain.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{value}` is not a valid {what}: {problem}")]
pub struct PatternError {
    pub value: String,
    pub what: &'static str,
    pub problem: String,
}

/// One `--als-allowed-spiffe-id` entry: a trust domain and path segments, `None` = `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdPattern {
    trust_domain: TrustDomain,
    segments: Vec<Option<String>>,
}

impl IdPattern {
    fn parse(value: &str) -> Result<Self, PatternError> {
        let err = |problem: String| PatternError {
            value: value.to_owned(),
            what: "SPIFFE ID (spiffe://<trust-domain>/<path>, `*` for one whole segment)",
            problem,
        };
        // Validate with the wildcards replaced by a valid segment, so every other rule of the
        // SPIFFE spec (characters, empty and dot segments, trailing slash) applies unchanged.
        let probe: Vec<&str> = value
            .split('/')
            .enumerate()
            .map(|(i, s)| if i >= 3 && s == "*" { "x" } else { s })
            .collect();
        let id = SpiffeId::new(probe.join("/")).map_err(|e| err(e.to_string()))?;
        if id.path().is_empty() {
            return Err(err(
                "it has no path; to allow a whole trust domain use --als-allowed-trust-domain"
                    .into(),
            ));
        }
        let segments = value
            .split('/')
            .skip(3)
            .map(|s| (s != "*").then(|| s.to_owned()))
            .collect();
        Ok(IdPattern {
            trust_domain: id.trust_domain().clone(),
            segments,
        })
    }

    fn matches(&self, id: &SpiffeId) -> bool {
        if !id.is_member_of(&self.trust_domain) {
            return false;
        }
        // A valid SPIFFE path starts with '/' and has no empty segments.
        let mut segs = id.path().split('/').skip(1);
        for want in &self.segments {
            match (segs.next(), want) {
                (None, _) => return false,
                (Some(got), Some(want)) if got != want => return false,
                _ => {}
            }
        }
        segs.next().is_none()
    }
}

/// Why a stream's peer may not write. Each maps to a gRPC status and a counted rejection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("this ALS listener requires a client certificate issued by its client CA; none was presented")]
    NoCertificate,
    #[error("the client certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error(
        "the client certificate carries {0} URI SANs; an X509-SVID carries exactly one SPIFFE ID"
    )]
    NotOneUri(usize),
    #[error("the client certificate's URI SAN is not a valid SPIFFE ID ({0})")]
    NotSpiffe(String),
    #[error("SPIFFE ID {0} is not allowed to write access logs (see --als-allowed-spiffe-id / --als-allowed-trust-domain)")]
    NotAllowed(String),
}

impl Refusal {
    pub fn rejection(&self) -> Rejection {
        match self {
            Refusal::NoCertificate => Rejection::Unauthenticated,
            _ => Rejection::NotAllowed,
        }
    }

    pub fn to_status(&self) -> Status {
        match self {
            Refusal::NoCertificate => Status::unauthenticated(self.to_string()),
            _ => Status::permission_denied(self.to_string()),
        }
    }
}

/// The policy for stream peers. `PeerAuth::default()` admits every peer (plaintext, or TLS
/// without client certificates).
#[derive(Debug, Clone, Default)]
pub struct PeerAuth {
    require_cert: bool,
    ids: Vec<IdPattern>,
    trust_domains: Vec<TrustDomain>,
}

impl PeerAuth {
    /// A policy requiring a client certificate, restricted by `ids` and `trust_domains` unless
    /// both are empty.
    pub fn require_cert(ids: &[String], trust_domains: &[String]) -> Result<Self, PatternError> {
        let ids = ids
            .iter()
            .map(|s| IdPattern::parse(s))
            .collect::<Result<_, _>>()?;
        let trust_domains = trust_domains
            .iter()
            .map(|s| parse_trust_domain(s))
            .collect::<Result<_, _>>()?;
        Ok(PeerAuth {
            require_cert: true,
            ids,
            trust_domains,
        })
    }

    pub fn requires_cert(&self) -> bool {
        self.require_cert
    }

    pub fn has_allow_list(&self) -> bool {
        !self.ids.is_empty() || !self.trust_domains.is_empty()
    }

    /// Checks a stream's peer; `certs` is its chain as TLS presented it (end entity first).
    /// Returns the peer's SPIFFE ID when it has one, for the stream's log span.
    pub fn check(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<Option<String>, Refusal> {
        if !self.require_cert {
            return Ok(None);
        }
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Err(Refusal::NoCertificate);
        };
        let id = match spiffe_id(leaf) {
            Ok(id) => id,
            // Without an allow-list the CA alone decides; an ID is only used for logging.
            Err(_) if !self.has_allow_list() => return Ok(None),
            Err(refusal) => return Err(refusal),
        };
        if self.has_allow_list()
            && !self.trust_domains.iter().any(|td| id.is_member_of(td))
            && !self.ids.iter().any(|p| p.matches(&id))
        {
            return Err(Refusal::NotAllowed(id.to_string()));
        }
        Ok(Some(id.to_string()))
    }
}

fn parse_trust_domain(value: &str) -> Result<TrustDomain, PatternError> {
    let err = |problem: String| PatternError {
        value: value.to_owned(),
        what: "trust domain (cluster.local or spiffe://cluster.local)",
        problem,
    };
    let rest = value.strip_prefix("spiffe://").unwrap_or(value);
    if rest.contains('/') {
        return Err(err(
            "it has a path; list single IDs with --als-allowed-spiffe-id instead".into(),
        ));
    }
    TrustDomain::new(rest).map_err(|e| err(e.to_string()))
}

/// The SPIFFE ID of an X509-SVID: its only URI SAN.
fn spiffe_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, Refusal> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
    let mut uris = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(Refusal::NotOneUri(san.map_or(0, |s| {
            s.value
                .general_names
                .iter()
                .filter(|n| matches!(n, GeneralName::URI(_)))
                .count()
        })));
    };
    SpiffeId::new(uri).map_err(|e| Refusal::NotSpiffe(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*u).expect("ia5"),
            ));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    fn policy(ids: &[&str], tds: &[&str]) -> PeerAuth {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        PeerAuth::require_cert(&own(ids), &own(tds)).expect("valid allow-list")
    }

    const GW: &str =
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

    #[test]
    fn allow_list_table() {
        // (allowed ids, allowed trust domains, peer URI SANs, expected)
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            Result<&'a str, Refusal>,
        );
        let cases: &[Case] = &[
            (&[GW], &[], &[GW], Ok(GW)),
            (
                &[GW],
                &[],
                &["spiffe://cluster.local/ns/istio-system/sa/other"],
                Err(Refusal::NotAllowed(
                    "spiffe://cluster.local/ns/istio-system/sa/other".into(),
                )),
            ),
            (
                &["spiffe://cluster.local/ns/istio-system/sa/*"],
                &[],
                &[GW],
                Ok(GW),
            ),
            (
                &["spiffe://cluster.local/ns/*/sa/istio-ingressgateway-service-account"],
                &[],
                &["spiffe://cluster.local/ns/gw/sa/istio-ingressgateway-service-account"],
                Ok("spiffe://cluster.local/ns/gw/sa/istio-ingressgateway-service-account"),
            ),
            // `*` is one segment, never more or fewer.
            (
                &["spiffe://cluster.local/ns/*"],
                &[],
                &[GW],
                Err(Refusal::NotAllowed(GW.into())),
            ),
            (
                &["spiffe://cluster.local/ns/istio-system/sa/*"],
                &[],
                &["spiffe://cluster.local/ns/istio-system/sa"],
                Err(Refusal::NotAllowed(
                    "spiffe://cluster.local/ns/istio-system/sa".into(),
                )),
            ),
            // Another trust domain with the same path is not the same workload.
            (
                &[GW],
                &[],
                &["spiffe://evil.example/ns/istio-system/sa/istio-ingressgateway-service-account"],
                Err(Refusal::NotAllowed(
                    "spiffe://evil.example/ns/istio-system/sa/istio-ingressgateway-service-account"
                        .into(),
                )),
            ),
            (
                &[],
                &["cluster.local"],
                &["spiffe://cluster.local/anything/here"],
                Ok("spiffe://cluster.local/anything/here"),
            ),
            (&[], &["spiffe://Cluster.Local"], &[GW], Ok(GW)),
            (
                &[],
                &["cluster.local"],
                &["spiffe://cluster.local.evil/ns/a/sa/b"],
                Err(Refusal::NotAllowed(
                    "spiffe://cluster.local.evil/ns/a/sa/b".into(),
                )),
            ),
            (&[GW], &[], &[], Err(Refusal::NotOneUri(0))),
            (&[GW], &[], &[GW, GW], Err(Refusal::NotOneUri(2))),
            (
                &[GW],
                &[],
                &["https://cluster.local/ns/a"],
                Err(Refusal::NotSpiffe("scheme is missing or invalid".into())),
            ),
            (
                &[GW],
                &[],
                &["spiffe://cluster.local/ns/../sa/x"],
                Err(Refusal::NotSpiffe(
                    "path cannot contain dot segments".into(),
                )),
            ),
        ];
        for (ids, tds, sans, want) in cases {
            let got = policy(ids, tds).check(Some(&[svid(sans)]));
            assert_eq!(
                got,
                want.clone().map(|s| Some(s.to_owned())),
                "ids {ids:?} tds {tds:?} peer {sans:?}"
            );
        }
    }

    #[test]
    fn certificates_are_required_and_the_ca_alone_decides_without_an_allow_list() {
        let p = policy(&[], &[]);
        assert_eq!(p.check(None), Err(Refusal::NoCertificate));
        assert_eq!(p.check(Some(&[])), Err(Refusal::NoCertificate));
        assert_eq!(p.check(Some(&[svid(&[])])), Ok(None));
        assert_eq!(p.check(Some(&[svid(&[GW])])), Ok(Some(GW.to_owned())));
        assert_eq!(
            p.check(Some(&[CertificateDer::from(vec![0x30, 0x03, 0x01])])),
            Ok(None)
        );
        assert!(matches!(
            policy(&[GW], &[]).check(Some(&[CertificateDer::from(vec![0x30, 0x03, 0x01])])),
            Err(Refusal::BadCertificate(_))
        ));
        assert_eq!(PeerAuth::default().check(None), Ok(None));
    }

    #[test]
    fn statuses_and_reasons() {
        assert_eq!(
            Refusal::NoCertificate.to_status().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            Refusal::NoCertificate.rejection(),
            Rejection::Unauthenticated
        );
        let r = Refusal::NotAllowed(GW.into());
        assert_eq!(r.to_status().code(), tonic::Code::PermissionDenied);
        assert_eq!(r.rejection(), Rejection::NotAllowed);
        assert!(r.to_status().message().contains(GW));
    }

    #[test]
    fn bad_allow_list_entries_are_refused() {
        let own = |s: &str| vec![s.to_owned()];
        for bad in [
            "cluster.local/ns/a",
            "spiffe://cluster.local",
            "spiffe://*/ns/a/sa/b",
            "spiffe://cluster.local/ns/a*/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/",
        ] {
            assert!(PeerAuth::require_cert(&own(bad), &[]).is_err(), "{bad}");
        }
        for bad in ["spiffe://cluster.local/ns/a", "", "clu$ter"] {
            assert!(PeerAuth::require_cert(&[], &own(bad)).is_err(), "{bad:?}");
        }
    }
}
