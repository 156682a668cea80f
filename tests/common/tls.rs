//! Certificates for the TLS tests (generated with rcgen per run) and TLS gRPC clients.
//!
//! A [`Pki`] is a CA with a server certificate for `localhost`/127.0.0.1 and can issue client
//! certificates carrying SPIFFE IDs as URI SANs, the way Istio's CA issues X509-SVIDs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A test CA and the server certificate it issued, written as PEM files under a directory.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Pki {
    /// A new CA named `name`; files go to `dir/<name>-*.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&key).expect("CA cert");
        let issuer = Issuer::new(params, key);

        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("server");
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");

        let write = |suffix: &str, pem: &str| {
            let p = dir.join(format!("{name}-{suffix}.pem"));
            std::fs::write(&p, pem).expect("write PEM");
            p
        };
        Pki {
            ca_file: write("ca", &ca.pem()),
            server_cert: write("server", &server_cert.pem()),
            server_key: write("server-key", &server_key.serialize_pem()),
            ca_pem: ca.pem(),
            issuer,
        }
    }

    /// A client certificate with these URI SANs (SPIFFE IDs), as a tonic identity.
    pub fn client(&self, uris: &[&str]) -> Identity {
        let (cert, key) = self.client_pem(uris);
        Identity::from_pem(cert, key)
    }

    /// A client certificate and its key as PEM.
    pub fn client_pem(&self, uris: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        for u in uris {
            params.subject_alt_names.push(SanType::URI(
                rcgen::string::Ia5String::try_from(*u).expect("URI is IA5"),
            ));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.serialize_pem())
    }

    /// `--als-tls-cert`, `--als-tls-key` and (with `client_ca`) `--als-tls-client-ca`.
    pub fn server_args(&self, client_ca: bool) -> Vec<String> {
        let mut a = vec![
            "--als-tls-cert".to_owned(),
            path(&self.server_cert),
            "--als-tls-key".to_owned(),
            path(&self.server_key),
        ];
        if client_ca {
            a.extend(["--als-tls-client-ca".to_owned(), path(&self.ca_file)]);
        }
        a
    }
}

pub fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

/// A TLS channel to the collector at `addr` trusting `ca_pem`, presenting `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<Identity>,
) -> Result<Channel, tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))
}

/// Streams `messages` over TLS on one new stream and waits for the server's answer.
pub async fn tls_stream(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<Identity>,
    messages: Vec<StreamAccessLogsMessage>,
) -> Result<(), tonic::Status> {
    let channel = tls_channel(addr, ca_pem, identity).await?;
    AccessLogServiceClient::new(channel)
        .stream_access_logs(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}
