//! The one certificate verifier that trusts any server, for tests and tools that talk TLS to a
//! server whose certificate they do not (or cannot) check.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};

/// Accepts any server certificate: no chain, name or validity checks.
///
/// [`TrustAnyCert::new`] still checks the handshake signatures against the certificate's key
/// (the server must hold the key of the certificate it sent), for looking at which certificate
/// a server picks. [`TrustAnyCert::without_signature_checks`] accepts those too, for
/// handshakes that only have to produce keys (e.g. with a placeholder certificate).
#[derive(Debug, Clone, Copy)]
pub struct TrustAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
    check_signatures: bool,
}

impl TrustAnyCert {
    /// Checks handshake signatures with ring's algorithms.
    pub fn new() -> Self {
        Self::with_provider(&rustls::crypto::ring::default_provider())
    }

    /// Checks handshake signatures with `provider`'s algorithms.
    pub fn with_provider(provider: &CryptoProvider) -> Self {
        TrustAnyCert {
            algorithms: provider.signature_verification_algorithms,
            check_signatures: true,
        }
    }

    /// Accepts every handshake signature unchecked (offering ring's schemes).
    pub fn without_signature_checks() -> Self {
        TrustAnyCert {
            check_signatures: false,
            ..Self::new()
        }
    }
}

/// rustls's `verify_tls12_signature` or `verify_tls13_signature`.
type VerifySignature = fn(
    &[u8],
    &CertificateDer<'_>,
    &DigitallySignedStruct,
    &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, Error>;

impl TrustAnyCert {
    /// `verify` with this verifier's algorithms, or a pass without signature checks.
    fn check(
        &self,
        verify: VerifySignature,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if self.check_signatures {
            verify(message, cert, dss, &self.algorithms)
        } else {
            Ok(HandshakeSignatureValid::assertion())
        }
    }
}

impl Default for TrustAnyCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for TrustAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check(rustls::crypto::verify_tls12_signature, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check(rustls::crypto::verify_tls13_signature, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client configuration (ring, the safe default protocol versions) that accepts any
/// server certificate but checks the handshake signatures ([`TrustAnyCert::new`]).
pub fn tls_client_any_cert() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = TrustAnyCert::with_provider(&provider);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}
