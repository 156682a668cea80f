//! Tamper evidence (issue #7): every Parquet file and every Postgres batch gets a digest, a
//! SHA-256 over its records in a canonical encoding, chained to the previous digest of the same
//! sink and collector instance and signed with Ed25519, modelled on AWS CloudTrail's digest
//! files. `meshaudit verify` (crate::verify) checks stored data against them.
//! docs/tamper-evidence.md is the specification.
//!
//! - `canonical`: the record encoding and the hashes built on it.
//! - `statement`: what a digest signs; the JSON digest file of a Parquet file.
//! - `key`: the signing key (generated on first start, 0600) and public keys.
//! - `files`: the Parquet chain, `DATA_DIR/_digests/<instance_id>/`.
//! - `postgres`: the Postgres chain, table `audit_digests`, written in the batch's transaction.
//!
//! Hashing runs where the records are written (the Parquet writer thread, the Postgres batch),
//! never on the ingest path.

pub mod canonical;
pub mod files;
pub mod key;
pub mod postgres;
pub mod statement;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tracing::info;

use self::key::SigningKey;

#[derive(Debug, Error)]
pub enum DigestError {
    #[error("digest signing key {path}: {source}. Fix: make the file (or its directory) readable and writable by the collector, or point --signing-key at another file")]
    KeyIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("digest signing key {path} is not usable: {reason}. Fix: give a PEM PKCS#8 Ed25519 key (openssl genpkey -algorithm ed25519 -out FILE), or remove the file to have one generated")]
    BadKey { path: PathBuf, reason: String },
    #[error("public key {path}: {reason}. Fix: give the PEM file `meshaudit public-key` writes (or the base64 key the collector logs at start-up)")]
    BadPublicKey { path: PathBuf, reason: String },
    #[error("cannot generate a digest signing key: the system random source failed")]
    KeyGen,
    #[error("collector instance id {path}: {source}. Fix: the spool directory must be writable")]
    InstanceIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("collector instance id in {path} is not valid: {reason}. Fix: remove the file (a new id starts a new digest chain) or write 1 to 64 characters of [A-Za-z0-9._-]")]
    BadInstance { path: PathBuf, reason: String },
    #[error("digest files: I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DigestError + '_ {
    move |source| DigestError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Name of the file in the spool directory that holds the collector's instance id.
pub const INSTANCE_FILE: &str = "instance-id";
/// Default signing key, relative to the data dir.
pub const DEFAULT_KEY_PATH: &str = "_keys/digest-signing-key.pem";
/// Directory of the Parquet digest chains, relative to the data dir.
pub const DIGESTS_DIR: &str = "_digests";

fn valid_instance(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("{} characters", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("character {c:?}"));
    }
    if s.starts_with('.') {
        return Err("starts with '.'".into());
    }
    Ok(())
}

/// The collector's instance id: read from `dir/instance-id`, or created there (16 random hex
/// digits). It lives in the spool directory, which one process owns at a time (the spool's
/// lock), so two replicas never share a chain even when they share a data dir.
pub fn instance_id(dir: &Path) -> Result<String, DigestError> {
    let path = dir.join(INSTANCE_FILE);
    let io = |source| DigestError::InstanceIo {
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim().to_owned();
            valid_instance(&id).map_err(|reason| DigestError::BadInstance {
                path: path.clone(),
                reason,
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io)?;
            let id = format!("{:016x}", rand::random::<u64>());
            let tmp = dir.join(format!(".{INSTANCE_FILE}.tmp"));
            fs::write(&tmp, format!("{id}\n")).map_err(io)?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

/// What the sinks need to sign: the key and the instance id. Built once at start-up.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: Arc<SigningKey>,
    pub instance_id: String,
}

impl Signer {
    /// Loads (or generates) the key and the instance id, and logs the public key: operators
    /// pin it for `meshaudit verify`.
    pub fn start(key_path: &Path, spool_dir: &Path) -> Result<Signer, DigestError> {
        let (key, created) = SigningKey::load_or_generate(key_path)?;
        let instance_id = instance_id(spool_dir)?;
        let public = key.public();
        info!(
            key_file = %key_path.display(),
            generated = created,
            public_key = %public.to_base64(),
            fingerprint = %public.fingerprint(),
            instance_id = %instance_id,
            "digest signing key ready; verify with `meshaudit verify --public-key FILE` (write FILE with `meshaudit public-key`)"
        );
        Ok(Signer {
            key: Arc::new(key),
            instance_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_created_once_and_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = instance_id(dir.path()).expect("create");
        assert_eq!(a.len(), 16);
        assert_eq!(instance_id(dir.path()).expect("read"), a);
        fs::write(dir.path().join(INSTANCE_FILE), "collector-0\n").expect("write");
        assert_eq!(instance_id(dir.path()).expect("read"), "collector-0");
        fs::write(dir.path().join(INSTANCE_FILE), "../etc\n").expect("write");
        let err = instance_id(dir.path()).expect_err("invalid").to_string();
        assert!(err.contains("Fix:"), "{err}");
    }
}
