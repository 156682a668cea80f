//! SPIFFE IDs as Istio issues them: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    pub trust_domain: &'a str,
    pub namespace: Option<&'a str>,
    pub service_account: Option<&'a str>,
}

/// Parses a SPIFFE URI; `None` if it is not one. Paths other than Istio's `/ns/X/sa/Y` keep the
/// trust domain and leave namespace and service account unknown.
pub fn parse(uri: &str) -> Option<SpiffeId<'_>> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    if td.is_empty() {
        return None;
    }
    let mut id = SpiffeId {
        trust_domain: td,
        namespace: None,
        service_account: None,
    };
    // Read in place (no Vec of segments: this runs twice per record).
    let mut segs = path.split('/');
    if let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
        segs.next(),
        segs.next(),
        segs.next(),
        segs.next(),
        segs.next(),
    ) {
        if !ns.is_empty() && !sa.is_empty() {
            id.namespace = Some(ns);
            id.service_account = Some(sa);
        }
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let id = parse("spiffe://cluster.local/ns/orders/sa/checkout").expect("spiffe");
        assert_eq!(id.trust_domain, "cluster.local");
        assert_eq!(id.namespace, Some("orders"));
        assert_eq!(id.service_account, Some("checkout"));
        let odd = parse("spiffe://example.org/workload/x").expect("spiffe");
        assert_eq!((odd.namespace, odd.service_account), (None, None));
        assert!(parse("https://cluster.local/ns/a/sa/b").is_none());
        let long = parse("spiffe://td/ns/a/sa/b/extra").expect("spiffe");
        assert_eq!((long.namespace, long.service_account), (None, None));
        let short = parse("spiffe://td/ns/a/sa").expect("spiffe");
        assert_eq!((short.namespace, short.service_account), (None, None));
        assert_eq!(parse("spiffe://td").map(|i| i.namespace), Some(None));
        assert!(parse("spiffe:///ns/a/sa/b").is_none());
        assert_eq!(
            parse("spiffe://td/ns//sa/b").map(|i| i.namespace),
            Some(None)
        );
    }
}
