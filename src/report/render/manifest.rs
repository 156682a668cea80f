//! The manifest: the SHA-256 of every file the report wrote, as `manifest.json` and as
//! `SHA256SUMS` (the `sha256sum -c` format, so an auditor can check the set with a stock tool).
//! `SHA256SUMS` also covers `manifest.json`; neither can contain its own hash.

use sha2::{Digest, Sha256};

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the output directory, `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

pub fn entry(path: &str, data: &[u8]) -> Entry {
    Entry {
        path: path.to_owned(),
        bytes: data.len() as u64,
        sha256: sha256_hex(data),
    }
}

/// `manifest.json`.
pub fn json(entries: &[Entry], generated_at: &str) -> String {
    let files: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| serde_json::json!({"path": e.path, "bytes": e.bytes, "sha256": e.sha256}))
        .collect();
    let doc = serde_json::json!({
        "generator": format!("meshaudit {}", env!("CARGO_PKG_VERSION")),
        "generated_at": generated_at,
        "algorithm": "SHA-256",
        "files": files,
        "note": "SHA256SUMS holds the same hashes plus this file's, for `sha256sum -c SHA256SUMS`",
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
    s.push('\n');
    s
}

/// `SHA256SUMS`: `<hex>  <path>` lines.
pub fn sums(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}  {}\n", e.sha256, e.path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let e = entry("a.csv", b"abc");
        assert_eq!(
            sums(std::slice::from_ref(&e)),
            format!("{}  a.csv\n", e.sha256)
        );
        assert!(json(&[e], "t").contains("\"bytes\": 3"));
    }
}
