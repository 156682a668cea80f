//! The Ed25519 key that signs digests, and public keys that verify them.
//!
//! Files are PEM, the formats OpenSSL reads and writes: the private key is PKCS#8
//! (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ed25519` makes), the public key
//! SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` makes). A public
//! key may also be given as the bare base64 of its 32 bytes (what the collector logs).
//!
//! A generated key file is created with mode 0600 (its directory 0700) under a temporary name and
//! linked into place without replacing anything, so two collectors starting together on one
//! data dir end up with one key.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use tracing::warn;

use super::canonical::sha256;
use super::DigestError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 } BIT STRING (33 bytes, 0 unused bits) }, followed by the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The private signing key. Its Debug output shows only the public half.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key that lives only in memory (tests, benchmarks).
    pub fn generate() -> Result<SigningKey, DigestError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| DigestError::KeyGen)?;
        Self::from_pkcs8(pkcs8.as_ref(), Path::new("(generated)"))
    }

    fn from_pkcs8(der: &[u8], path: &Path) -> Result<SigningKey, DigestError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| DigestError::BadKey {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey {
            pair,
            public: PublicKey(public),
        })
    }

    /// Reads a PEM PKCS#8 Ed25519 key.
    pub fn load(path: &Path) -> Result<SigningKey, DigestError> {
        let text = fs::read_to_string(path).map_err(|source| DigestError::KeyIo {
            path: path.to_owned(),
            source,
        })?;
        let der = pem_body(&text, "PRIVATE KEY").ok_or_else(|| DigestError::BadKey {
            path: path.to_owned(),
            reason: "not a PEM `PRIVATE KEY` (PKCS#8) file".into(),
        })?;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{mode:o}"), "the digest signing key is readable by other users; chmod 600 it (a Kubernetes Secret volume: defaultMode 0400)");
            }
        }
        Self::from_pkcs8(&der, path)
    }

    /// Loads the key at `path`, or creates one there (mode 0600) if there is none.
    /// Returns the key and whether it was created now.
    pub fn load_or_generate(path: &Path) -> Result<(SigningKey, bool), DigestError> {
        if path.exists() {
            return Self::load(path).map(|k| (k, false));
        }
        let io = |source| DigestError::KeyIo {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir).map_err(io)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| DigestError::KeyGen)?;
        let tmp: PathBuf = dir.join(format!(
            ".{}.{:08x}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
            rand::random::<u32>()
        ));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())?;
            f.sync_all()?;
            // Never replaces a key another process created meanwhile.
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok((Self::from_pkcs8(pkcs8.as_ref(), path)?, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(path).map(|k| (k, false))
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let sig = self.pair.sign(msg);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

/// An Ed25519 public key (its 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PublicKey {
    /// Parses a PEM SubjectPublicKeyInfo, or the bare base64 of the 32 key bytes.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let der = match pem_body(text, "PUBLIC KEY") {
            Some(der) => {
                if der.len() != 44 || der[..12] != SPKI_PREFIX {
                    return Err("the PEM `PUBLIC KEY` is not an Ed25519 key".into());
                }
                der[12..].to_vec()
            }
            None => B64
                .decode(text.trim())
                .map_err(|_| "neither a PEM `PUBLIC KEY` nor base64 of 32 bytes".to_owned())?,
        };
        let bytes: [u8; 32] = der
            .as_slice()
            .try_into()
            .map_err(|_| format!("an Ed25519 public key has 32 bytes, not {}", der.len()))?;
        Ok(PublicKey(bytes))
    }

    pub fn read(path: &Path) -> Result<PublicKey, DigestError> {
        let bad = |reason| DigestError::BadPublicKey {
            path: path.to_owned(),
            reason,
        };
        let text = fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        PublicKey::parse(&text).map_err(bad)
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem("PUBLIC KEY", &der)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// `SHA256:` and the first 16 hex digits of SHA-256 over the key bytes: short, for logs and
    /// reports.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", &hex::encode(sha256(&self.0))[..16])
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    B64.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_file_is_private_and_reloads_to_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/signing.pem");
        let (k1, created) = SigningKey::load_or_generate(&path).expect("generate");
        assert!(created);
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let (k2, created) = SigningKey::load_or_generate(&path).expect("load");
        assert!(!created);
        assert_eq!(k1.public(), k2.public());
        let sig = k2.sign(b"msg");
        assert!(k1.public().verify(b"msg", &sig));
        assert!(!k1.public().verify(b"msg2", &sig));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // Debug never shows the private key.
        let dbg = format!("{k1:?}");
        assert!(dbg.contains(&k1.public().to_base64()), "{dbg}");
        assert!(!fs::read_to_string(&path)
            .expect("pem")
            .lines()
            .any(|l| l.len() > 20 && dbg.contains(l)));
    }

    #[test]
    fn public_key_round_trips_through_pem_and_base64() {
        let k = SigningKey::generate().expect("key").public();
        assert_eq!(PublicKey::parse(&k.to_pem()), Ok(k));
        assert_eq!(PublicKey::parse(&k.to_base64()), Ok(k));
        assert!(k
            .to_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert!(PublicKey::parse("not a key").is_err());
        assert!(PublicKey::parse(&B64.encode([0u8; 31])).is_err());
    }

    #[test]
    fn a_key_made_by_openssl_loads() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key inside) and what
        // `openssl pkey -pubout` printed for it.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFq1bvcOioh78fr1OtxGsLFeOW00tTFIiuAkFluryE/I\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAY36FgA+hbChlnZ2aF0Da0RwfLi/IMTSbz+shuBLbC4c=\n-----END PUBLIC KEY-----\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        fs::write(&path, pem).expect("write");
        let k = SigningKey::load(&path).expect("openssl key loads");
        assert_eq!(PublicKey::parse(public), Ok(k.public()));
        assert_eq!(k.public().to_pem(), public);
        assert!(k.public().verify(b"x", &k.sign(b"x")));
    }
}
