//! The appliance's one config file as the `edgeplane` command reads it: the data plane's
//! sections ([`edgeplane_dataplane::config::Config`]) and the agent's `[agent]` section
//! ([`edgeplane_control::agent::AgentConfig`]), from the same text. Each library parses and
//! validates its own part; this is the only place that knows both. Parsing is pure; loading
//! then checks the data plane's part against the host ([`Config::check_host`]).

use std::path::Path;

use edgeplane_control::agent::AgentConfig;
use edgeplane_dataplane::config::{Config, ConfigError};
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Clone)]
pub(crate) struct ApplianceConfig {
    /// Everything `edgeplane serve` reads.
    pub(crate) dataplane: Config,
    /// `[agent]`, when present (`edgeplane agent`).
    pub(crate) agent: Option<AgentConfig>,
}

impl ApplianceConfig {
    /// Reads, parses and validates a config file, then checks it against this host (CPUs,
    /// tier directories, certificate files): what `serve`, `agent` and `check-config` use.
    pub(crate) fn load(path: &Path) -> Result<ApplianceConfig, ConfigError> {
        let text = read(path)?;
        let config = Self::parse(&text, &path.display().to_string())?;
        config.dataplane.check_host()?;
        Ok(config)
    }

    /// Parses and validates config text (pure: nothing on the host is looked at); `origin`
    /// names the file in errors. The agent's section is checked first, as one file has one
    /// first error whatever reads it.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<ApplianceConfig, ConfigError> {
        let agent = agent_section(text, origin)?;
        let dataplane = Config::parse(text, origin)?;
        Ok(ApplianceConfig { dataplane, agent })
    }
}

/// The file's text, or an error naming the file.
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display().to_string(), format!("cannot read: {e}")))
}

/// Parses and validates `[agent]` alone; the other sections are the data plane's to judge.
pub(crate) fn agent_section(text: &str, origin: &str) -> Result<Option<AgentConfig>, ConfigError> {
    #[derive(Deserialize)]
    struct AgentOnly {
        #[serde(default)]
        agent: Option<AgentConfig>,
    }
    let parsed: AgentOnly =
        toml::from_str(text).map_err(|e| ConfigError::from_toml(&e, text, origin))?;
    if let Some(agent) = &parsed.agent {
        agent
            .validate()
            .map_err(|e| ConfigError::new(e.key, e.problem))?;
    }
    Ok(parsed.agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[signing]\nenabled = false\n[[tier]]\nname = \"t\"\nkind = \"flash\"\npath = \"{}\"\n",
            dir.path().display()
        );
        (dir, text)
    }

    #[test]
    fn without_agent_section() {
        let (_dir, text) = tier();
        let c = ApplianceConfig::parse(&text, "f").unwrap();
        assert!(c.agent.is_none());
        assert_eq!(c.dataplane.tiers.len(), 1);
    }

    #[test]
    fn parse_is_pure_and_load_checks_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let text = format!(
            "[signing]\nenabled = false\n[[tier]]\nname = \"t\"\nkind = \"flash\"\npath = \"{}\"\n",
            missing.display()
        );
        ApplianceConfig::parse(&text, "f").expect("parse looks at nothing on the host");
        let path = dir.path().join("edgeplane.toml");
        std::fs::write(&path, &text).unwrap();
        let e = ApplianceConfig::load(&path).unwrap_err();
        assert_eq!(e.key, "tier[0].path");
        assert_eq!(e.problem, format!("{}: does not exist", missing.display()));
        std::fs::create_dir(&missing).unwrap();
        assert!(ApplianceConfig::load(&path).unwrap().agent.is_none());
    }

    #[test]
    fn agent_type_error_names_the_key_and_line() {
        let (_dir, text) = tier();
        let text = format!("{text}[agent]\nid = 7\n");
        let e = ApplianceConfig::parse(&text, "f").unwrap_err();
        assert!(e.key.starts_with("agent.id (f line 8)"), "{e}");
    }

    #[test]
    fn unknown_agent_key_is_refused() {
        let (_dir, text) = tier();
        let text = format!("{text}[agent]\nno_such_key = 1\n");
        let e = ApplianceConfig::parse(&text, "f").unwrap_err();
        assert!(e.to_string().contains("no_such_key"), "{e}");
    }
}
