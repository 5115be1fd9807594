//! HTTPS configuration: certificates (PEM files, chosen by SNI, swapped whole on reload) and the
//! rustls server configuration the HTTPS listener hands every handshake.
//!
//! No sockets here: the runtime drives connections (`runtime::tls`) and moves their keys into
//! the kernel where it can (`runtime::ktls`). Cipher suites are limited to the ones Linux kernel
//! TLS can take over (AES-GCM and ChaCha20-Poly1305, TLS 1.2 and 1.3), so a connection never
//! negotiates something the `sendfile` path could not serve later.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{ConfigError, HttpsConfig, SniName};

/// The only ALPN protocol offered: HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// TLS 1.2 sessions remembered for resumption by session id (TLS 1.3 and TLS 1.2 clients that
/// support tickets resume statelessly from a ticket instead). Shared by every core; an entry is
/// a few hundred bytes.
pub const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

/// The cipher suites kernel TLS can take over, in the server's order of preference (AES-GCM is
/// hardware-accelerated on the CPUs this runs on; ChaCha20 serves clients without AES).
fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The crypto provider: ring, with the kernel-compatible suites and ECDHE groups only
/// (X25519, P-256, P-384).
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: cipher_suites(),
        kx_groups: ring::ALL_KX_GROUPS.to_vec(),
        ..ring::default_provider()
    }
}

/// The server configuration every HTTPS handshake uses: TLS 1.3 and 1.2, ALPN `http/1.1`,
/// resumption by ticket and by session id, certificates from `resolver`, and secret extraction
/// enabled so a finished handshake's keys can be handed to the kernel.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer = ring::Ticketer::new()?;
    config.enable_secret_extraction = true;
    Ok(config)
}

/// One generation of certificates: the default and the SNI ones.
#[derive(Debug)]
pub struct Certificates {
    default: Arc<CertifiedKey>,
    by_name: Vec<(SniName, Arc<CertifiedKey>)>,
}

impl Certificates {
    /// Reads and checks every certificate and key named in `[https]`. Errors name the key
    /// (`https.cert`, `https.sni[1].key`, ...).
    pub fn load(config: &HttpsConfig) -> Result<Certificates, ConfigError> {
        let provider = provider();
        let default = load_pair(
            &provider,
            &config.cert,
            &config.key,
            "https.cert",
            "https.key",
        )?;
        let mut by_name = Vec::with_capacity(config.sni.len());
        for (i, sni) in config.sni.iter().enumerate() {
            let name = SniName::parse(&sni.name)
                .map_err(|p| ConfigError::new(format!("https.sni[{i}].name"), p))?;
            let pair = load_pair(
                &provider,
                &sni.cert,
                &sni.key,
                &format!("https.sni[{i}].cert"),
                &format!("https.sni[{i}].key"),
            )?;
            by_name.push((name, pair));
        }
        Ok(Certificates { default, by_name })
    }

    /// The certificate for an SNI name: an exact name first, then a wildcard, else the default.
    pub fn select(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(host) = server_name else {
            return &self.default;
        };
        let exact = self
            .by_name
            .iter()
            .find(|(n, _)| !n.is_wildcard() && n.matches(host));
        let any = exact.or_else(|| self.by_name.iter().find(|(n, _)| n.matches(host)));
        any.map_or(&self.default, |(_, key)| key)
    }
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
    cert_key: &str,
    key_key: &str,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let cert_err =
        |problem: String| ConfigError::new(cert_key, format!("{}: {problem}", cert_path.display()));
    let key_err =
        |problem: String| ConfigError::new(key_key, format!("{}: {problem}", key_path.display()));
    let cert_pem = read_pem_file(cert_path).map_err(cert_err)?;
    let key_pem = read_pem_file(key_path).map_err(key_err)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "no \"BEGIN CERTIFICATE\" block (expected a PEM certificate chain, leaf first)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => key_err(
            "no private key (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \
             \"EC PRIVATE KEY\" block)"
                .into(),
        ),
        e => key_err(format!("bad PEM: {e}")),
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_err(format!(
            "does not match the certificate in {cert_key} ({})",
            cert_path.display()
        )),
        rustls::Error::General(msg) => key_err(format!("unusable private key: {msg}")),
        e => cert_err(format!("unusable certificate or key: {e}")),
    })?;
    Ok(Arc::new(certified))
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot read: {e}"),
    })
}

/// Picks each handshake's certificate by SNI; [`CertResolver::reload`] swaps in freshly read
/// files without touching connections already established (they keep what they negotiated).
#[derive(Debug)]
pub struct CertResolver {
    config: ArcSwap<HttpsConfig>,
    current: ArcSwap<Certificates>,
}

impl CertResolver {
    /// Loads the certificates named in `config`.
    pub fn new(config: HttpsConfig) -> Result<CertResolver, ConfigError> {
        let certs = Certificates::load(&config)?;
        Ok(CertResolver {
            config: ArcSwap::from_pointee(config),
            current: ArcSwap::from_pointee(certs),
        })
    }

    /// Re-reads every certificate and key. On any error the previous ones stay in use.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let certs = Certificates::load(&self.config.load())?;
        self.current.store(Arc::new(certs));
        Ok(())
    }

    /// Takes the certificate paths and SNI entries of a reloaded config; the next
    /// [`CertResolver::reload`] reads them.
    pub fn reconfigure(&self, config: HttpsConfig) {
        self.config.store(Arc::new(config));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .load()
                .select(client_hello.server_name())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_offers_only_kernel_compatible_suites() {
        use rustls::CipherSuite as C;
        let p = provider();
        let suites: Vec<C> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites.len(), 9);
        for s in &suites {
            let name = format!("{s:?}");
            assert!(
                name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"),
                "{name} is not kernel-TLS compatible"
            );
        }
        assert!(suites.contains(&C::TLS13_AES_128_GCM_SHA256));
        assert!(suites.contains(&C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256));
    }
}
