//! The config against this host: the second step after the pure [`Config::parse`].
//!
//! [`crate::config`] judges the text alone. What only the host can answer is checked here: the
//! CPUs the executors are pinned to, the tier directories, and the `[https]` certificate and key
//! files (through [`Certificates::load`], the same loading the server does, so `check-config`
//! catches what `serve` would refuse). [`Config::load`] runs the whole flow, read → parse and
//! validate → [`Config::check_host`]; `edgeplane serve`, `edgeplane check-config` and reload
//! use it. `edgeplane check` calls the pieces it does not report as items of its own.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::tls::Certificates;

impl Config {
    /// Reads a config file, parses and validates it ([`Config::parse`]) and checks it against
    /// this host ([`Config::check_host`]). Errors name the key, or the file when it cannot be
    /// read.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let config = Self::parse(&text, &path.display().to_string())?;
        config.check_host()?;
        Ok(config)
    }

    /// Checks what the text alone cannot say: the CPUs ([`Config::check_cpus`]), the tier
    /// directories ([`Config::check_tiers`]), then the certificates
    /// ([`Config::check_certificates`]). The first problem is the error.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        self.check_cpus()?;
        self.check_tiers()?;
        self.check_certificates()
    }

    /// `cores` and `cpus` against the CPUs this process may run on.
    pub fn check_cpus(&self) -> Result<(), ConfigError> {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus_fit(self, online)
    }

    /// Each tier directory exists and can be listed ([`check_tier_path`]).
    pub fn check_tiers(&self) -> Result<(), ConfigError> {
        for (i, tier) in self.tiers.iter().enumerate() {
            check_tier_path(&tier.path)
                .map_err(|problem| ConfigError::new(format!("tier[{i}].path"), problem))?;
        }
        Ok(())
    }

    /// With `[https]`: every certificate and key file reads, parses and matches its pair.
    pub fn check_certificates(&self) -> Result<(), ConfigError> {
        match &self.https {
            Some(https) => Certificates::load(https).map(drop),
            None => Ok(()),
        }
    }
}

/// `cores` and `cpus` against a host with `online` CPUs (numbered from 0).
fn cpus_fit(config: &Config, online: usize) -> Result<(), ConfigError> {
    match &config.cpus {
        Some(cpus) => {
            if let Some(bad) = cpus.iter().find(|&&c| c >= online) {
                return Err(ConfigError::new(
                    "cpus",
                    format!("CPU {bad} does not exist (this host has {online} CPUs)"),
                ));
            }
        }
        None if config.cores > online => {
            return Err(ConfigError::new(
                "cores",
                format!("is {} but this host has only {online} CPUs", config.cores),
            ));
        }
        None => {}
    }
    Ok(())
}

/// Why a tier directory cannot be used, if it cannot.
pub fn check_tier_path(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => match std::fs::read_dir(path) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: cannot list directory: {e}", path.display())),
        },
        Ok(_) => Err(format!("{}: not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{}: does not exist", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Config text with one tier at `tier` and `extra` before it.
    fn text(extra: &str, tier: &Path) -> String {
        format!(
            "{extra}\n[[tier]]\nname = \"t\"\nkind = \"storage\"\npath = {:?}\n",
            tier.display().to_string()
        )
    }

    #[test]
    fn a_missing_tier_directory_parses_and_fails_the_host_step() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        let config = Config::parse(&text("", &missing), "f").expect("parse is pure");
        let err = config.check_host().unwrap_err();
        assert_eq!(err.key, "tier[0].path");
        assert_eq!(
            err.problem,
            format!("{}: does not exist", missing.display())
        );
        assert_eq!(config.check_tiers().unwrap_err(), err);

        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let config = Config::parse(&text("", &file), "f").expect("parse is pure");
        let err = config.check_host().unwrap_err();
        assert_eq!(err.key, "tier[0].path");
        assert_eq!(err.problem, format!("{}: not a directory", file.display()));

        let config = Config::parse(&text("", dir.path()), "f").unwrap();
        config.check_host().unwrap();
    }

    #[test]
    fn missing_certificate_files_parse_and_fail_the_host_step() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let https = format!(
            "[https]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\
             [[https.sni]]\nname = \"*.example.net\"\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        );
        let config = Config::parse(&text(&https, dir.path()), "f").expect("parse is pure");
        assert_eq!(config.https.as_ref().unwrap().sni.len(), 1);
        config.check_cpus().unwrap();
        config.check_tiers().unwrap();
        let err = config.check_host().unwrap_err();
        assert_eq!(err.key, "https.cert");
        assert_eq!(err.problem, format!("{}: does not exist", cert.display()));

        std::fs::write(&cert, "not a certificate\n").unwrap();
        let err = config.check_certificates().unwrap_err();
        assert_eq!(err.key, "https.key");
        assert_eq!(err.problem, format!("{}: does not exist", key.display()));

        std::fs::write(&key, "").unwrap();
        let err = config.check_certificates().unwrap_err();
        assert_eq!(err.key, "https.cert");
        assert!(
            err.problem.contains("no \"BEGIN CERTIFICATE\" block"),
            "{err}"
        );
    }

    #[test]
    fn sni_name_syntax_is_judged_by_parse_without_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let https = "[https]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n\
                     [[https.sni]]\nname = \"a_b.example\"\ncert = \"/x\"\nkey = \"/y\"\n";
        let err = Config::parse(&text(https, dir.path()), "f").unwrap_err();
        assert_eq!(err.key, "https.sni[0].name");
        assert!(err.problem.contains("is not a host name"), "{err}");
    }

    #[test]
    fn cpus_beyond_the_host_fail_the_host_step_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&text("cores = 4096", dir.path()), "f").expect("parse is pure");
        let online = std::thread::available_parallelism().unwrap().get();
        let err = config.check_host().unwrap_err();
        assert_eq!(err.key, "cores");
        assert_eq!(
            err.problem,
            format!("is 4096 but this host has only {online} CPUs")
        );

        let config =
            Config::parse(&text("cores = 1\ncpus = [4096]", dir.path()), "f").expect("pure");
        let err = config.check_cpus().unwrap_err();
        assert_eq!(err.key, "cpus");
        assert_eq!(
            err.problem,
            format!("CPU 4096 does not exist (this host has {online} CPUs)")
        );

        let config = Config::parse(&text("cores = 2\ncpus = [0, 1]", dir.path()), "f").unwrap();
        assert_eq!(cpus_fit(&config, 2), Ok(()));
        assert_eq!(cpus_fit(&config, 1).unwrap_err().key, "cpus");
        let config = Config::parse(&text("cores = 2", dir.path()), "f").unwrap();
        assert_eq!(cpus_fit(&config, 2), Ok(()));
        assert_eq!(
            cpus_fit(&config, 1).unwrap_err(),
            ConfigError::new("cores", "is 2 but this host has only 1 CPUs")
        );
        // The count of entries is the text's business: parse catches it.
        let err = Config::parse(&text("cores = 2\ncpus = [0]", dir.path()), "f").unwrap_err();
        assert_eq!(err.key, "cpus");
    }

    #[test]
    fn load_reads_parses_and_checks_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgeplane.toml");
        let err = Config::load(&path).unwrap_err();
        assert_eq!(err.key, path.display().to_string());
        assert!(err.problem.starts_with("cannot read: "), "{err}");

        std::fs::write(&path, text("", &dir.path().join("gone"))).unwrap();
        assert_eq!(Config::load(&path).unwrap_err().key, "tier[0].path");
        std::fs::write(&path, text("cores = 0", dir.path())).unwrap();
        assert_eq!(Config::load(&path).unwrap_err().key, "cores");
        std::fs::write(&path, text("", dir.path())).unwrap();
        assert_eq!(Config::load(&path).unwrap().tiers[0].path, dir.path());
    }
}
