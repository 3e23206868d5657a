//! The daemon's configuration: a TOML file with documented defaults embedded in the binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The default configuration, with comments; `berthd config default` prints it.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("../../../deploy/config.toml");

/// Where `berthd` looks for a configuration file when `--config` is not given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) version: u32,
    pub(crate) root: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) grpc: Grpc,
    pub(crate) runtime: RuntimeConfig,
    pub(crate) log: Log,
    pub(crate) otlp: Otlp,
    pub(crate) registry: RegistryConfig,
    /// Kubernetes CRI.
    #[serde(default)]
    pub(crate) cri: berth_cri::CriConfig,
    /// External plugins by name, as containerd's `[proxy_plugins.<name>]`.
    #[serde(default)]
    pub(crate) proxy_plugins: std::collections::BTreeMap<String, ProxyPlugin>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyPlugin {
    /// Only `snapshot` is supported.
    pub(crate) r#type: String,
    /// The plugin's unix socket.
    pub(crate) address: PathBuf,
    /// containerd also accepts a platform; it is not used here.
    #[serde(default)]
    pub(crate) platform: String,
    /// The `snapshotter` field sent in requests (default: the plugin's name, as containerd
    /// sends it); for remotes that serve several snapshotters, such as another berthd.
    #[serde(default)]
    pub(crate) snapshotter: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistryConfig {
    pub(crate) config_path: PathBuf,
    pub(crate) docker_config: PathBuf,
    pub(crate) insecure: Vec<String>,
    pub(crate) max_concurrent_downloads: usize,
    pub(crate) stall_timeout_seconds: u64,
    #[serde(default)]
    pub(crate) auths: std::collections::BTreeMap<String, RegistryAuth>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistryAuth {
    #[serde(default)]
    pub(crate) username: String,
    #[serde(default)]
    pub(crate) password: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grpc {
    pub(crate) address: PathBuf,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) max_recv_message_size: usize,
    pub(crate) max_send_message_size: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeConfig {
    /// Idle Berth shims kept started ahead of need (see `runtime.rs`, warm shims).
    pub(crate) warm_shims: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    pub(crate) level: String,
    pub(crate) format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Otlp {
    pub(crate) endpoint: String,
    pub(crate) service_name: String,
    pub(crate) sampling_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse(DEFAULT_CONFIG).expect("the embedded default configuration is valid")
    }
}

/// Merges a user file over the defaults: a table in the file overrides the same keys only.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Parses a configuration file's text; keys it leaves out keep their defaults.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Config> {
        let mut base: toml::Table = DEFAULT_CONFIG.parse().context("embedded default config")?;
        let user: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))?;
        merge(&mut base, user);
        let cfg: Config = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads `path`, or the default path if it exists, or the embedded defaults.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    anyhow::anyhow!("config file {}: not valid UTF-8", path.display())
                })?;
                Config::parse(&text).with_context(|| format!("config file {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(e) => Err(e).with_context(|| format!("reading config file {}", path.display())),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.version != 1 {
            bail!(
                "version: unsupported config version {} (this berthd reads version 1)",
                self.version
            );
        }
        self.check_overrides()?;
        self.cri.validate().map_err(|e| anyhow::anyhow!(e))?;
        for (name, p) in &self.proxy_plugins {
            if p.r#type != "snapshot" {
                bail!(
                    "proxy_plugins.{name}.type: {:?} is not supported (only \"snapshot\")",
                    p.r#type
                );
            }
            if name == "overlayfs"
                || name == "native"
                || berth_store::validate_identifier(name).is_err()
            {
                bail!("proxy_plugins.{name}: the name must be a new identifier");
            }
            if !p.address.is_absolute() {
                bail!("proxy_plugins.{name}.address: must be an absolute socket path");
            }
        }
        if !(1..=64).contains(&self.registry.max_concurrent_downloads) {
            bail!(
                "registry.max_concurrent_downloads: {} is out of range (1 to 64)",
                self.registry.max_concurrent_downloads
            );
        }
        if self.registry.stall_timeout_seconds == 0 {
            bail!("registry.stall_timeout_seconds: must be at least 1");
        }
        if self.grpc.max_recv_message_size < 1024 || self.grpc.max_recv_message_size > 1 << 30 {
            bail!(
                "grpc.max_recv_message_size: {} is out of range (1024 to 1073741824 bytes)",
                self.grpc.max_recv_message_size
            );
        }
        if self.grpc.max_send_message_size < 1024 || self.grpc.max_send_message_size > 1 << 30 {
            bail!(
                "grpc.max_send_message_size: {} is out of range (1024 to 1073741824 bytes)",
                self.grpc.max_send_message_size
            );
        }
        crate::telemetry::log_filter(&self.log.level).map_err(|e| {
            anyhow::anyhow!("log.level: {:?} is not a valid filter: {e}", self.log.level)
        })?;
        if !(0.0..=1.0).contains(&self.otlp.sampling_ratio) {
            bail!(
                "otlp.sampling_ratio: {} is not between 0.0 and 1.0",
                self.otlp.sampling_ratio
            );
        }
        let ep = &self.otlp.endpoint;
        if !ep.is_empty() && !ep.starts_with("http://") && !ep.starts_with("https://") {
            bail!(
                "otlp.endpoint: {:?} must start with http:// or https://",
                self.otlp.endpoint
            );
        }
        Ok(())
    }

    /// Checks what command-line flags can override: paths and the log level.
    pub(crate) fn check_overrides(&self) -> anyhow::Result<()> {
        for (name, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("grpc.address", &self.grpc.address),
        ] {
            if !p.is_absolute() {
                bail!(
                    "{name}: must be an absolute path, got {:?}",
                    p.display().to_string()
                );
            }
        }
        // The kernel's sun_path holds 108 bytes including the terminating NUL.
        if self.grpc.address.as_os_str().len() > 101 {
            bail!(
                "grpc.address: unix socket path longer than 101 bytes (the .ttrpc socket next to it must fit 107)"
            );
        }
        crate::telemetry::log_filter(&self.log.level).map_err(|e| {
            anyhow::anyhow!("log.level: {:?} is not a valid filter: {e}", self.log.level)
        })?;
        Ok(())
    }

    /// The ttrpc socket shims forward events to: the gRPC address plus `.ttrpc`, as containerd.
    pub(crate) fn ttrpc_address(&self) -> PathBuf {
        let mut s = self.grpc.address.clone().into_os_string();
        s.push(".ttrpc");
        PathBuf::from(s)
    }

    /// Path of the metadata database.
    pub(crate) fn db_path(&self) -> PathBuf {
        self.root.join("meta.sled")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_and_match_the_documentation() {
        let c = Config::default();
        assert_eq!(c.root, PathBuf::from("/var/lib/berth"));
        assert_eq!(c.state, PathBuf::from("/run/berth"));
        assert_eq!(c.grpc.address, PathBuf::from("/run/berth/berthd.sock"));
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.otlp.endpoint.is_empty());
    }

    #[test]
    fn partial_files_override_only_what_they_name() {
        let c = Config::parse("root = \"/tmp/x\"\n[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/x"));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.state, PathBuf::from("/run/berth"));
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn bad_files_name_the_problem() {
        let cases = [
            ("root = ", "line 1"),
            ("[grpc\naddress = \"/x\"", "line 1"),
            ("roots = \"/x\"", "roots"),
            ("[grpc]\nadress = \"/x\"", "adress"),
            ("root = 5", "root"),
            ("root = \"relative\"", "root"),
            ("version = 2", "version"),
            ("[log]\nformat = \"xml\"", "xml"),
            ("[log]\nlevel = \"[[[\"", "log.level"),
            ("[otlp]\nsampling_ratio = 2.0", "sampling_ratio"),
            ("[otlp]\nendpoint = \"localhost:4317\"", "otlp.endpoint"),
            ("[grpc]\nmax_recv_message_size = 1", "max_recv_message_size"),
        ];
        for (text, needle) in cases {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn truncated_default_file_is_an_error_or_a_subset() {
        // Every prefix of the default file either parses or fails cleanly; none panics.
        for n in 0..DEFAULT_CONFIG.len() {
            if DEFAULT_CONFIG.is_char_boundary(n) {
                let _ = Config::parse(&DEFAULT_CONFIG[..n]);
            }
        }
    }
}
