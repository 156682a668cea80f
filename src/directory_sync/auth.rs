//! Getting a Microsoft Graph token with the OAuth 2.0 client credentials grant, the three ways
//! a workload on Azure Kubernetes authenticates:
//!
//! - **Workload identity** (federated credential): the projected service account token in
//!   `AZURE_FEDERATED_TOKEN_FILE` is the client assertion. The file is re-read for every token
//!   request, since the kubelet rotates it.
//! - **Client secret**, from a file (`--client-secret-file`) or `AZURE_CLIENT_SECRET`; never
//!   from a flag (a flag's value is visible to every user of the host in the process list).
//! - **Client certificate**: a JWT client assertion signed RS256 with the certificate's private
//!   key, naming the certificate by its SHA-256 (`x5t#S256`) and SHA-1 (`x5t`) thumbprints.
//!
//! Secrets live in [`Secret`] (no `Display`, a redacted `Debug`) and are only ever written into
//! the token request's body. Errors name files and settings, never a secret's value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::SyncError;

/// A secret value: shown as `[redacted]` by `Debug`, never displayed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How the sync proves who it is to the token endpoint.
pub enum Credential {
    Secret(Secret),
    FederatedToken(PathBuf),
    Certificate(Box<CertificateKey>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

impl Credential {
    /// For logs: which kind, nothing else.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Secret(_) => "client secret",
            Credential::FederatedToken(_) => "workload identity (federated token)",
            Credential::Certificate(_) => "client certificate",
        }
    }

    /// The form fields that authenticate the client, for a token request to `token_url`.
    pub fn form_fields(
        &self,
        client_id: &str,
        token_url: &str,
    ) -> Result<Vec<(&'static str, Secret)>, SyncError> {
        const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
        let assertion = |a: Secret| {
            vec![
                ("client_assertion_type", Secret::new(ASSERTION_TYPE.into())),
                ("client_assertion", a),
            ]
        };
        Ok(match self {
            Credential::Secret(s) => vec![("client_secret", s.clone())],
            Credential::FederatedToken(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| SyncError::Credential {
                    setting: "--federated-token-file / AZURE_FEDERATED_TOKEN_FILE",
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                assertion(Secret::new(token.trim().to_owned()))
            }
            Credential::Certificate(c) => assertion(c.assertion(client_id, token_url)?),
        })
    }
}

/// A certificate's private key and thumbprints, for signed client assertions.
pub struct CertificateKey {
    key: RsaKeyPair,
    x5t_s256: String,
    x5t: String,
}

impl CertificateKey {
    const SETTING: &'static str = "--client-certificate / AZURE_CLIENT_CERTIFICATE_PATH";

    /// Reads a PEM file holding the certificate and its RSA private key (PKCS#8 or PKCS#1), as
    /// Azure's tooling writes it.
    pub fn load(path: &Path) -> Result<CertificateKey, SyncError> {
        let bad = |reason: String| SyncError::Credential {
            setting: Self::SETTING,
            reason: format!("{}: {reason}", path.display()),
        };
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
        let cert = CertificateDer::pem_slice_iter(&pem)
            .next()
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?
            .map_err(|_| bad("the CERTIFICATE block is not valid PEM".into()))?;
        // The error of a key parser may quote bytes of the key: it is never passed on.
        let key = match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(PrivateKeyDer::Pkcs8(k)) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Pkcs1(k)) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            Ok(_) => return Err(bad("the private key is not an RSA key".into())),
            Err(_) => return Err(bad("no PRIVATE KEY block (PKCS#8 or PKCS#1 RSA)".into())),
        }
        .map_err(|_| bad("the private key is not a usable RSA key".into()))?;
        let sha256 = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref());
        Ok(CertificateKey {
            key,
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
        })
    }

    /// A client assertion (RFC 7523) for `aud` = the token endpoint, valid for 10 minutes.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<Secret, SyncError> {
        let rng = SystemRandom::new();
        let mut jti = [0u8; 16];
        rng.fill(&mut jti).map_err(|_| SyncError::Credential {
            setting: Self::SETTING,
            reason: "no random numbers for the assertion id".into(),
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({
            "alg": "RS256", "typ": "JWT", "x5t#S256": self.x5t_s256, "x5t": self.x5t,
        });
        let claims = serde_json::json!({
            "aud": token_url, "iss": client_id, "sub": client_id, "jti": hex::encode(jti),
            "iat": now, "nbf": now, "exp": now + 600,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut sig)
            .map_err(|_| SyncError::Credential {
                setting: Self::SETTING,
                reason: "signing the client assertion failed".into(),
            })?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(&sig)
        )))
    }
}

/// `application/x-www-form-urlencoded` (the WHATWG byte set: alphanumerics and `*-._` kept,
/// space as `+`).
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, k);
        out.push('=');
        encode_into(&mut out, v);
    }
    out
}

fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push_str(&format!("{b:02X}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_and_redaction() {
        assert_eq!(
            form_encode(&[("a b", "x=y&z/é"), ("scope", "https://g/.default")]),
            "a+b=x%3Dy%26z%2F%C3%A9&scope=https%3A%2F%2Fg%2F.default"
        );
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(
            format!("{:?}", Credential::Secret(s)),
            "client secret",
            "Debug names the kind only"
        );
    }
}
