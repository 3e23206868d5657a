//! HTTP clients per endpoint TLS configuration: rustls with the `ring` provider, the system's
//! root certificates plus per-host CA files, optional client certificates, and no verification
//! only for endpoints marked `skip_verify`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{Host, RegistryError, RegistryOptions};

/// What makes two endpoints need different clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    ca: Vec<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
    skip_verify: bool,
}

impl Key {
    pub(super) fn of(h: &Host) -> Key {
        Key {
            ca: h.ca.clone(),
            client: h.client.clone(),
            skip_verify: h.skip_verify,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trusted roots, loaded once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "loading system root certificates");
        }
        found.certs
    })
}

fn read_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(p)
        .map_err(|e| RegistryError::Config(format!("reading CA file {}: {e}", p.display())))?
        .collect();
    let certs =
        certs.map_err(|e| RegistryError::Config(format!("CA file {}: {e}", p.display())))?;
    if certs.is_empty() {
        return Err(RegistryError::Config(format!(
            "CA file {}: no PEM certificate in it",
            p.display()
        )));
    }
    Ok(certs)
}

/// A rustls client configuration for these settings.
pub(super) fn config(
    ca: &[PathBuf],
    client: Option<&(PathBuf, PathBuf)>,
    skip_verify: bool,
) -> Result<rustls::ClientConfig, RegistryError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Config(format!("TLS: {e}")))?;
    let builder = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        for p in ca {
            for c in read_certs(p)? {
                roots
                    .add(c)
                    .map_err(|e| RegistryError::Config(format!("CA file {}: {e}", p.display())))?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| RegistryError::Config(format!("client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| RegistryError::Config(format!("client certificate: {e}")))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// An HTTP client for endpoint `h`.
pub(super) fn client(h: &Host, opts: &RegistryOptions) -> Result<reqwest::Client, RegistryError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.stall_timeout)
        .user_agent(opts.user_agent.clone())
        .pool_max_idle_per_host(16);
    if h.scheme == "https" {
        b = b.use_preconfigured_tls(config(&h.ca, h.client.as_ref(), h.skip_verify)?);
    }
    b.build()
        .map_err(|e| RegistryError::Config(format!("HTTP client for {}: {e}", h.authority)))
}

/// Accepts any certificate: only for endpoints configured with `skip_verify = true`. Signatures
/// are still checked, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
