//! The test PKI: a CA and server certificates made once per test process with the `openssl`
//! CLI, and rustls client configurations that trust it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::scratch::{temp_dir, write_file};

/// The test PKI's server certificates, all issued by one test CA ([`Pki::ca`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PkiCert {
    /// ECDSA P-256 (SEC1 "EC PRIVATE KEY"): `localhost`, `edgeplane.test`, `127.0.0.1`.
    Default,
    /// Another ECDSA P-256 certificate (PKCS#8 key) for the same names, for reload tests.
    Alternate,
    /// RSA 2048 (PKCS#1 "RSA PRIVATE KEY"): `rsa.test`.
    Rsa,
    /// ECDSA P-384 (PKCS#8): `*.wild.test`.
    Wildcard,
}

/// PEM texts of the test PKI (kept in memory; each server gets its own copies).
pub struct Pki {
    /// The CA certificate (PEM).
    pub ca: String,
    certs: Vec<(PkiCert, String, String)>,
}

impl Pki {
    /// (certificate PEM, key PEM)
    pub fn pem(&self, which: PkiCert) -> (&str, &str) {
        let (_, cert, key) = self
            .certs
            .iter()
            .find(|(w, _, _)| *w == which)
            .expect("every PkiCert is generated");
        (cert, key)
    }

    /// The leaf certificate as DER (what a client sees first in the server's chain).
    pub fn der(&self, which: PkiCert) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(self.pem(which).0.as_bytes())
            .expect("test certificate PEM")
            .to_vec()
    }

    /// Writes `DIR/NAME.pem` and `DIR/NAME.key`; returns their paths.
    pub fn write(&self, which: PkiCert, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        fs::create_dir_all(dir).expect("create tls directory");
        let (cert, key) = self.pem(which);
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        write_file(&cert_path, cert.as_bytes());
        write_file(&key_path, key.as_bytes());
        (cert_path, key_path)
    }
}

/// The test PKI, generated on first use (about a second: one RSA key).
pub fn pki() -> &'static Pki {
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(make_pki)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); install it with scripts/setup.sh"));
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki() -> Pki {
    let tmp = temp_dir();
    let dir = tmp.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=edgeplane test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let leaves: [(PkiCert, &str, &[&str], &str); 4] = [
        (
            PkiCert::Default,
            "default",
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                "default.key",
            ],
            "DNS:localhost,DNS:edgeplane.test,IP:127.0.0.1",
        ),
        (
            PkiCert::Alternate,
            "alternate",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "alternate.key",
            ],
            "DNS:localhost,DNS:edgeplane.test,IP:127.0.0.1",
        ),
        (
            PkiCert::Rsa,
            "rsa",
            &["genrsa", "-traditional", "-out", "rsa.key", "2048"],
            "DNS:rsa.test",
        ),
        (
            PkiCert::Wildcard,
            "wild",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "wild.key",
            ],
            "DNS:*.wild.test",
        ),
    ];
    let mut certs = Vec::new();
    for (serial, (which, name, keygen, san)) in leaves.into_iter().enumerate() {
        openssl(dir, keygen);
        let ext = format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n"
        );
        fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &(1000 + serial).to_string(),
                "-days",
                "3",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
        let read = |f: String| fs::read_to_string(dir.join(f)).unwrap();
        certs.push((
            which,
            read(format!("{name}.pem")),
            read(format!("{name}.key")),
        ));
    }
    Pki {
        ca: fs::read_to_string(dir.join("ca.pem")).unwrap(),
        certs,
    }
}

/// A rustls client configuration that trusts the test CA, for the given protocol versions and
/// ALPN offer.
pub fn tls_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki().ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
