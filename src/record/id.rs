//! `record_id`: 32 lowercase hex characters, deterministic from the proxy's node id, the log name
//! and the entry's encoded bytes, so that an entry sent twice is stored once, while the same entry
//! from another proxy is another record.
//!
//! BLAKE3 in key-derivation mode (a fixed context string) over (node id, log name, kind,
//! BLAKE3(entry)), truncated to 128 bits: a cryptographic hash, so that a
//! writer cannot craft two different entries with one id and have the second silently dropped
//! by the idempotent Postgres write. On these machines BLAKE3 and SHA-256 (SHA-NI) cost the same
//! on one 4.5 KB entry (~2.1 µs); the two-level form halves it (see below); XXH3 would cost
//! ~0.1 µs but lets anyone who can shape an entry craft collisions.

const CONTEXT: &str = "meshaudit 2026-11 record_id v2";

/// The derive-key context hashed once per process: `Hasher::new_derive_key` would hash the
/// context string again for every record (one extra compression each).
static CONTEXT_KEY: std::sync::LazyLock<blake3::hazmat::ContextKey> =
    std::sync::LazyLock::new(|| blake3::hazmat::hash_derive_key_context(CONTEXT));

/// Which ALS entry type the bytes encode; part of the hash so an HTTP and a TCP entry with equal
/// bytes cannot collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Http,
    Tcp,
}

pub fn record_id(node_id: &[u8], log_name: &[u8], kind: EntryType, entry: &[u8]) -> bytes::Bytes {
    // The entry is hashed on its own first: starting at a chunk boundary lets BLAKE3 hash its
    // 1 KiB chunks in parallel SIMD lanes. Hashing it after the prefix fields (as one stream)
    // measured twice as slow on 4.5 KB entries, most of it in serial compression.
    let entry_digest = blake3::hash(entry);
    let mut h = <blake3::Hasher as blake3::hazmat::HasherExt>::new_from_context_key(&CONTEXT_KEY);
    // Length prefixes keep the fields apart: ("ab","c") and ("a","bc") hash differently.
    h.update(&(node_id.len() as u64).to_le_bytes());
    h.update(node_id);
    h.update(&(log_name.len() as u64).to_le_bytes());
    h.update(log_name);
    h.update(&[match kind {
        EntryType::Http => 1,
        EntryType::Tcp => 2,
    }]);
    h.update(entry_digest.as_bytes());
    let digest = h.finalize();
    // blake3's own table-driven hex, truncated to 128 bits (32 characters).
    let hex = digest.to_hex();
    super::text::copy(&hex[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id as first written (derive-key mode with the context string hashed per call): the
    /// cached context key must give the very same ids, or every stored record would change id.
    fn reference(node_id: &[u8], log_name: &[u8], kind: EntryType, entry: &[u8]) -> String {
        let mut h = blake3::Hasher::new_derive_key(CONTEXT);
        h.update(&(node_id.len() as u64).to_le_bytes());
        h.update(node_id);
        h.update(&(log_name.len() as u64).to_le_bytes());
        h.update(log_name);
        h.update(&[match kind {
            EntryType::Http => 1,
            EntryType::Tcp => 2,
        }]);
        h.update(blake3::hash(entry).as_bytes());
        h.finalize().to_hex()[..32].to_owned()
    }

    #[test]
    fn same_ids_as_the_reference_form() {
        let big = vec![0x5au8; 4500];
        for (node, log, kind, entry) in [
            (&b"node-a"[..], &b"als"[..], EntryType::Http, &b"entry"[..]),
            (b"", b"", EntryType::Tcp, b""),
            (
                b"sidecar~10.1.2.3~x.ns~ns.svc.cluster.local",
                b"http_envoy_accesslog",
                EntryType::Http,
                &big[..],
            ),
        ] {
            assert_eq!(
                record_id(node, log, kind, entry),
                reference(node, log, kind, entry)
            );
        }
        // A fixed value, so a change of the scheme itself cannot pass unnoticed.
        assert_eq!(
            record_id(b"node-a", b"als", EntryType::Http, b"entry"),
            "fd67ef401c962cc9bbc972d9c1c58e6e"
        );
    }

    #[test]
    fn stable_and_distinct() {
        let a = record_id(b"node-a", b"als", EntryType::Http, b"entry");
        assert_eq!(a, record_id(b"node-a", b"als", EntryType::Http, b"entry"));
        assert_eq!(a.len(), 32);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, record_id(b"node-b", b"als", EntryType::Http, b"entry"));
        assert_ne!(a, record_id(b"node-a", b"als2", EntryType::Http, b"entry"));
        assert_ne!(a, record_id(b"node-a", b"als", EntryType::Tcp, b"entry"));
        assert_ne!(a, record_id(b"node-a", b"als", EntryType::Http, b"entry2"));
        assert_ne!(
            record_id(b"ab", b"c", EntryType::Http, b""),
            record_id(b"a", b"bc", EntryType::Http, b"")
        );
    }
}
