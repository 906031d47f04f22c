//! TLS for `rediss://`: the client configuration built from the URL's parameters, and errors that
//! say what went wrong in words a user can act on.
//!
//! rustls with the ring provider. The trusted CAs are either the file named by `ca=` or the
//! system's bundle (`SSL_CERT_FILE` when set, else the first of the usual distribution paths); the
//! files are read once, when the URL is parsed, so a wrong path fails at start, not at the first
//! connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::RegistryError;

/// Where the system's CA bundle is looked for when `ca=` is not given and `SSL_CERT_FILE` is not
/// set: Debian and Ubuntu, Fedora and RHEL, openSUSE, Alpine.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The TLS half of a `rediss://` URL: what the user asked for, and the configuration built from it.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) params: TlsParams,
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

impl PartialEq for Tls {
    /// The configuration follows from the parameters (and the files they name).
    fn eq(&self, other: &Tls) -> bool {
        self.params == other.params && self.server_name == other.server_name
    }
}

impl Eq for Tls {}

/// The query parameters of a `rediss://` URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    /// `ca=`: trust these CAs instead of the system's.
    pub(crate) ca: Option<PathBuf>,
    /// `cert=`: the client certificate (chain), for servers that require one.
    pub(crate) cert: Option<PathBuf>,
    /// `key=`: the client certificate's private key.
    pub(crate) key: Option<PathBuf>,
    /// `insecure=true`: no verification of the server's certificate at all.
    pub(crate) insecure: bool,
}

fn bad(message: impl Into<String>) -> RegistryError {
    RegistryError::Url(message.into())
}

fn read(param: &str, path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|e| bad(format!("cannot read {param}={}: {e}", path.display())))
}

/// Every `CERTIFICATE` block of a PEM file; none is an error.
fn certificates(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    let pem = read(param, path)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        certs.push(item.map_err(|e| bad(format!("{param}={} is not valid PEM: {e}", path.display())))?);
    }
    if certs.is_empty() {
        return Err(bad(format!(
            "{param}={} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// A client configuration for tug's other TLS clients (the CLI's `--host https://…`, webhooks):
/// the CAs in `ca` (else the system's), and a client certificate for mTLS.
pub fn client_config(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Arc<ClientConfig>, String> {
    let params = TlsParams { ca, cert, key, insecure: false };
    Tls::load(params, "localhost").map(|tls| tls.config).map_err(describe)
}

/// A server configuration (the daemon's endpoint): its certificate chain and key, and with
/// `client_ca`, clients must present a certificate that CA signed (mTLS). ALPN offers h2.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates("client_ca", ca).map_err(describe)?);
            if added == 0 {
                return Err(format!("client_ca={} holds no usable CA certificate", ca.display()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca={}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certificates("cert", cert).map_err(describe)?;
    let pem = read("key", key).map_err(describe)?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!("key={} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----): {e}", key.display())
    })?;
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("cert={} and key={} do not make a certificate: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The message without the registry's "invalid registry URL" framing.
fn describe(error: RegistryError) -> String {
    match error {
        RegistryError::Url(message) => message,
        other => other.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first of [`SYSTEM_BUNDLES`] that exists.
fn system_bundle() -> Result<(&'static str, PathBuf), RegistryError> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        return Ok(("SSL_CERT_FILE", PathBuf::from(file)));
    }
    SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file()).map(|p| ("system CA bundle", p)).ok_or_else(|| {
        bad(format!(
            "rediss:// without ca= needs the system's CA certificates, and none was found (looked for {}; \
             install the ca-certificates package, set SSL_CERT_FILE, or pass ca=/path/to/ca.pem)",
            SYSTEM_BUNDLES.join(", ")
        ))
    })
}

fn roots(params: &TlsParams) -> Result<RootCertStore, RegistryError> {
    let (what, path) = match &params.ca {
        Some(ca) => ("ca", ca.clone()),
        None => system_bundle()?,
    };
    let certs = certificates(what, &path)?;
    let mut store = RootCertStore::empty();
    let (added, _unusable) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(format!("{what}={} holds no usable CA certificate", path.display())));
    }
    Ok(store)
}

impl Tls {
    /// Reads the files the parameters name and builds the client configuration.
    pub(crate) fn load(params: TlsParams, host: &str) -> Result<Tls, RegistryError> {
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| bad(format!("{host:?} is not a valid TLS server name")))?;
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS setup: {e}")))?;
        let builder = if params.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider.signature_verification_algorithms)))
        } else {
            builder.with_root_certificates(roots(&params)?)
        };
        let config = match (&params.cert, &params.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates("cert", cert)?;
                let pem = read("key", key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    bad(format!(
                        "key={} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----): {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    bad(format!(
                        "cert={} and key={} do not make a client certificate: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Tls { params, config: Arc::new(config), server_name })
    }
}

/// `insecure=true`: accepts any certificate for any name. The handshake signatures are still
/// checked (so the session is bound to the certificate presented), which protects against nothing
/// but a passive eavesdropper.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A TLS failure, in words: certificate problems say so and say what to pass.
pub(crate) struct Explained<'a> {
    pub(crate) error: &'a rustls::Error,
    pub(crate) params: &'a TlsParams,
}

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.error;
        let client_cert = self.params.cert.is_some();
        match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                let (trusted, hint) = match &self.params.ca {
                    Some(ca) => (format!("the CA in ca={}", ca.display()), ""),
                    None => ("a CA the system trusts".to_string(), "; for a private CA, pass ca=/path/to/ca.pem"),
                };
                write!(f, "certificate problem: the server's certificate is not signed by {trusted} ({e}){hint}")
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => write!(f, "certificate problem: the server's certificate is not for this host ({e})"),
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                write!(f, "certificate problem: the server's certificate was refused ({e})")
            }
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
                write!(f, "certificate problem: the server requires a client certificate: pass cert= and key= ({e})")
            }
            rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA,
            ) if client_cert => write!(f, "certificate problem: the server refused the client certificate ({e})"),
            rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA,
            ) if !client_cert => write!(
                f,
                "the server refused the handshake; if it requires a client certificate, pass cert= and key= ({e})"
            ),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                write!(f, "the server does not speak TLS on this port (is it redis-server's --tls-port?) ({e})")
            }
            _ => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_say_certificate_and_what_to_pass() {
        let params = TlsParams::default();
        let text = |error: rustls::Error, params: &TlsParams| Explained { error: &error, params }.to_string();
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let t = text(unknown.clone(), &params);
        assert!(t.starts_with("certificate problem") && t.contains("ca=/path/to/ca.pem"), "{t}");
        let with_ca = TlsParams { ca: Some("/etc/tug/ca.pem".into()), ..TlsParams::default() };
        assert!(text(unknown, &with_ca).contains("ca=/etc/tug/ca.pem"));
        let t = text(rustls::Error::AlertReceived(AlertDescription::CertificateRequired), &params);
        assert!(t.contains("client certificate") && t.contains("cert= and key="), "{t}");
        let mtls = TlsParams { cert: Some("c".into()), key: Some("k".into()), ..TlsParams::default() };
        let t = text(rustls::Error::AlertReceived(AlertDescription::UnknownCA), &mtls);
        assert!(t.contains("refused the client certificate"), "{t}");
        let t = text(rustls::Error::InvalidCertificate(CertificateError::Expired), &params);
        assert!(t.starts_with("certificate problem"), "{t}");
    }
}
