//! Checks shared by both sinks: a digest's signature and key, and the links of each chain.

use std::collections::BTreeMap;

use crate::store::digest::canonical::Hash;
use crate::store::digest::key::PublicKey;
use crate::store::digest::statement::{format_micros, Statement};

use super::report::{ChainHead, ChainSummary, Finding, FindingKind, Report};

/// True when `st` is signed by its key and that key is one of `keys`; reports otherwise.
pub fn trusted(
    st: &Statement,
    sig: &[u8],
    keys: &[PublicKey],
    sink: &'static str,
    report: &mut Report,
) -> bool {
    if !st.signature_valid(sig) {
        report.push(
            Finding::new(
                FindingKind::SignatureInvalid,
                sink,
                "the signature does not match the digest's content: the digest was altered",
            )
            .digest(&st.instance_id, st.seq),
        );
        return false;
    }
    if !keys.contains(&st.public_key) {
        let given: Vec<String> = keys.iter().map(PublicKey::fingerprint).collect();
        report.push(
            Finding::new(
                FindingKind::UnknownKey,
                sink,
                format!(
                    "signed by key {} ({}), which is not the key given ({})",
                    st.public_key.fingerprint(),
                    st.public_key.to_base64(),
                    given.join(", ")
                ),
            )
            .digest(&st.instance_id, st.seq),
        );
        return false;
    }
    true
}

/// One link of a chain, as found.
pub struct Link {
    pub instance_id: String,
    pub seq: u64,
    pub digest_sha256: Hash,
    pub previous: Option<Hash>,
    pub created_at_us: i64,
}

/// Checks every chain's seq numbers and links; returns one summary per chain.
pub fn check_chains(
    sink: &'static str,
    links: Vec<Link>,
    report: &mut Report,
) -> Vec<ChainSummary> {
    let mut chains: BTreeMap<String, Vec<Link>> = BTreeMap::new();
    for l in links {
        chains.entry(l.instance_id.clone()).or_default().push(l);
    }
    let mut out = Vec::new();
    for (instance, mut links) in chains {
        links.sort_by_key(|l| l.seq);
        let Some(first) = links.first() else { continue };
        if first.seq != 1 {
            report.push(
                Finding::new(
                    FindingKind::ChainGap,
                    sink,
                    format!(
                        "the chain starts at seq {}: digests 1..={} are missing",
                        first.seq,
                        first.seq - 1
                    ),
                )
                .digest(&instance, first.seq),
            );
        } else if first.previous.is_some() {
            report.push(
                Finding::new(
                    FindingKind::ChainBroken,
                    sink,
                    "the first digest of the chain links to a previous one",
                )
                .digest(&instance, 1),
            );
        }
        for pair in links.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.seq == a.seq {
                report.push(
                    Finding::new(
                        FindingKind::DigestMisplaced,
                        sink,
                        "two digests with the same seq",
                    )
                    .digest(&instance, b.seq),
                );
            } else if b.seq != a.seq + 1 {
                report.push(
                    Finding::new(
                        FindingKind::ChainGap,
                        sink,
                        format!(
                            "digests {}..={} of the chain are missing",
                            a.seq + 1,
                            b.seq - 1
                        ),
                    )
                    .digest(&instance, b.seq),
                );
            } else if b.previous != Some(a.digest_sha256) {
                let detail = match b.previous {
                    None => format!("no link to digest {} (the collector could not read its chain head; see its log)", a.seq),
                    Some(p) => format!(
                        "links to {} but digest {} hashes to {}",
                        hex::encode(p),
                        a.seq,
                        hex::encode(a.digest_sha256)
                    ),
                };
                report.push(
                    Finding::new(FindingKind::ChainBroken, sink, detail).digest(&instance, b.seq),
                );
            }
        }
        if let Some(last) = links.last() {
            out.push(ChainSummary {
                sink,
                instance_id: instance.clone(),
                digests: links.len() as u64,
                first_seq: links[0].seq,
                last_seq: last.seq,
                head_digest_sha256: hex::encode(last.digest_sha256),
                head_created_at: format_micros(last.created_at_us),
                head: ChainHead {
                    instance_id: instance.clone(),
                    seq: last.seq,
                    created_at: format_micros(last.created_at_us),
                    digest_sha256: hex::encode(last.digest_sha256),
                },
            });
        }
    }
    out
}
