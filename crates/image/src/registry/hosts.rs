//! Per-registry host configuration in containerd's `hosts.toml` format: which endpoints serve a
//! registry (mirrors first, then the registry itself), what each may be used for, and how to
//! talk TLS to it.
//!
//! Layout: `<dir>/<host[:port]>/hosts.toml`, with `<dir>/_default/hosts.toml` for registries that
//! have no directory of their own. Without a file the registry itself is the only endpoint, over
//! https (plain http for loopback hosts, or when the caller's default scheme says `http`).
//!
//! ```toml
//! server = "https://registry.example:5000"
//! ca = "/etc/berth/certs.d/registry.example/ca.crt"
//! [host."https://mirror.example"]
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = false
//!   [host."https://mirror.example".header]
//!     x-custom = "1"
//! ```

use std::path::{Path, PathBuf};

use super::RegistryError;

/// What an endpoint may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetching manifests and blobs by digest.
    pub pull: bool,
    /// Resolving tags to digests.
    pub resolve: bool,
    /// Uploading.
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One endpoint serving a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// The API root path, `/v2` unless `override_path` gave another.
    pub path: String,
    /// What this endpoint is for.
    pub capabilities: Capabilities,
    /// Extra CA certificates (PEM files) trusted for this endpoint, besides the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate (hosts marked so explicitly).
    pub skip_verify: bool,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
}

impl Host {
    /// The URL of `rest` (which starts with `/`) under this endpoint's API root.
    pub fn url(&self, rest: &str) -> String {
        format!("{}://{}{}{}", self.scheme, self.authority, self.path, rest)
    }
}

/// The options a pull or push brings: where `hosts.toml` files are, and the default scheme.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// The `hosts.toml` directory (`certs.d` style); none means "no per-host files".
    pub dir: Option<PathBuf>,
    /// `http` to talk plain http to registries without a configuration (ctr's `--plain-http`).
    pub default_scheme: Option<String>,
    /// Registries (`host[:port]`) that may be reached over plain http.
    pub insecure: Vec<String>,
}

/// Whether `authority` names this machine.
fn is_loopback(authority: &str) -> bool {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The endpoints for registry `domain`, in the order to try them.
pub fn hosts_for(domain: &str, opts: &HostOptions) -> Result<Vec<Host>, RegistryError> {
    let file = opts.dir.as_deref().and_then(|dir| find_file(dir, domain));
    let default_server = || {
        let plain = opts.default_scheme.as_deref() == Some("http")
            || is_loopback(domain)
            || opts.insecure.iter().any(|h| h == domain);
        let scheme = if plain { "http" } else { "https" };
        let authority = if domain == "docker.io" {
            "registry-1.docker.io"
        } else {
            domain
        };
        format!("{scheme}://{authority}")
    };
    let Some(file) = file else {
        return Ok(vec![endpoint(&default_server(), Capabilities::ALL)?]);
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| RegistryError::Config(format!("reading {}: {e}", file.display())))?;
    parse(&text, &file, &default_server())
}

fn find_file(dir: &Path, domain: &str) -> Option<PathBuf> {
    // containerd also accepts `host_port_` for `host:port`, for file systems without ':'.
    let candidates = [
        domain.to_string(),
        domain.replace(':', "_") + "_",
        "_default".to_string(),
    ];
    candidates
        .iter()
        .map(|c| dir.join(c).join("hosts.toml"))
        .find(|p| p.is_file())
}

fn endpoint(url: &str, capabilities: Capabilities) -> Result<Host, RegistryError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| RegistryError::Config(format!("host {url:?}: not a URL")))?;
    if scheme != "http" && scheme != "https" {
        return Err(RegistryError::Config(format!(
            "host {url:?}: scheme must be http or https"
        )));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(RegistryError::Config(format!("host {url:?}: no host")));
    }
    Ok(Host {
        scheme: scheme.to_string(),
        authority: authority.to_string(),
        path: format!("{path}/v2"),
        capabilities,
        ca: Vec::new(),
        client: None,
        skip_verify: false,
        headers: Vec::new(),
    })
}

/// Parses a `hosts.toml`; `default_server` is used when it names no `server`.
pub fn parse(text: &str, file: &Path, default_server: &str) -> Result<Vec<Host>, RegistryError> {
    let at = |msg: String| RegistryError::Config(format!("{}: {msg}", file.display()));
    let table: toml::Table = text.parse().map_err(|e| at(format!("{e}")))?;
    let base = file.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| at("`host` must be a table of URLs".into()))?;
        for (url, spec) in hosts {
            let spec = spec
                .as_table()
                .ok_or_else(|| at(format!("host {url:?} must be a table")))?;
            out.push(configure(url, spec, base, &at)?);
        }
    }
    let server = match table.get("server") {
        Some(v) => v
            .as_str()
            .ok_or_else(|| at("`server` must be a string".into()))?
            .to_string(),
        None => default_server.to_string(),
    };
    out.push(configure(&server, &table, base, &at)?);
    Ok(out)
}

fn configure(
    url: &str,
    spec: &toml::Table,
    base: &Path,
    at: &dyn Fn(String) -> RegistryError,
) -> Result<Host, RegistryError> {
    let mut caps = Capabilities::ALL;
    if let Some(list) = spec.get("capabilities") {
        let list = list
            .as_array()
            .ok_or_else(|| at(format!("{url}: capabilities must be a list")))?;
        caps = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for c in list {
            match c.as_str() {
                Some("pull") => caps.pull = true,
                Some("resolve") => caps.resolve = true,
                Some("push") => caps.push = true,
                other => {
                    return Err(at(format!("{url}: unknown capability {other:?}")));
                }
            }
        }
    }
    let mut host = endpoint(url, caps).map_err(|e| at(e.to_string()))?;
    if spec.get("override_path").and_then(toml::Value::as_bool) == Some(true) {
        host.path = host.path.trim_end_matches("/v2").to_string();
    }
    let path_of = |v: &toml::Value| -> Result<PathBuf, RegistryError> {
        let s = v
            .as_str()
            .ok_or_else(|| at(format!("{url}: certificate paths must be strings")))?;
        Ok(base.join(s))
    };
    match spec.get("ca") {
        None => {}
        Some(toml::Value::Array(list)) => {
            for v in list {
                host.ca.push(path_of(v)?);
            }
        }
        Some(v) => host.ca.push(path_of(v)?),
    }
    if let Some(client) = spec.get("client") {
        // `client = "cert.pem"`, `["cert.pem", "key.pem"]` or `[["cert.pem", "key.pem"]]`.
        let pair = match client {
            toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_array) => {
                a[0].as_array().cloned().unwrap_or_default()
            }
            toml::Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        let cert = pair
            .first()
            .ok_or_else(|| at(format!("{url}: client needs a certificate")))?;
        let cert = path_of(cert)?;
        let key = match pair.get(1) {
            Some(k) => path_of(k)?,
            None => cert.with_extension("key"),
        };
        host.client = Some((cert, key));
    }
    match spec.get("skip_verify") {
        None => {}
        Some(toml::Value::Boolean(b)) => host.skip_verify = *b,
        Some(_) => return Err(at(format!("{url}: skip_verify must be true or false"))),
    }
    if let Some(h) = spec.get("header") {
        let h = h
            .as_table()
            .ok_or_else(|| at(format!("{url}: header must be a table")))?;
        for (k, v) in h {
            match v {
                toml::Value::String(s) => host.headers.push((k.clone(), s.clone())),
                toml::Value::Array(a) => {
                    for s in a {
                        let s = s
                            .as_str()
                            .ok_or_else(|| at(format!("{url}: header {k} must be strings")))?;
                        host.headers.push((k.clone(), s.to_string()));
                    }
                }
                _ => return Err(at(format!("{url}: header {k} must be a string"))),
            }
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_file_the_registry_itself_serves() {
        let h = hosts_for("registry.example:5000", &HostOptions::default()).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].url("/x"), "https://registry.example:5000/v2/x");
        let h = hosts_for("127.0.0.1:5000", &HostOptions::default()).unwrap();
        assert_eq!(h[0].scheme, "http");
        let h = hosts_for("docker.io", &HostOptions::default()).unwrap();
        assert_eq!(h[0].authority, "registry-1.docker.io");
        let opts = HostOptions {
            default_scheme: Some("http".into()),
            ..Default::default()
        };
        assert_eq!(hosts_for("r.example", &opts).unwrap()[0].scheme, "http");
    }

    #[test]
    fn mirrors_come_first_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("r.example");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"
server = "https://r.example"
ca = "ca.pem"
[host."https://z-mirror.example/sub"]
  capabilities = ["pull"]
  skip_verify = true
  override_path = true
  [host."https://z-mirror.example/sub".header]
    x-a = "1"
[host."http://a-mirror.example:5000"]
  capabilities = ["pull", "resolve"]
  client = [["c.pem", "k.pem"]]
"#,
        )
        .unwrap();
        let opts = HostOptions {
            dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let h = hosts_for("r.example", &opts).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].url("/x"), "https://z-mirror.example/sub/x");
        assert!(h[0].skip_verify && h[0].capabilities.pull && !h[0].capabilities.resolve);
        assert_eq!(h[0].headers, vec![("x-a".to_string(), "1".to_string())]);
        assert_eq!(h[1].url("/x"), "http://a-mirror.example:5000/v2/x");
        assert_eq!(h[1].client, Some((d.join("c.pem"), d.join("k.pem"))));
        assert_eq!(h[2].ca, vec![d.join("ca.pem")]);
        assert_eq!(h[2].capabilities, Capabilities::ALL);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let f = Path::new("/x/hosts.toml");
        let e = parse("server = 1", f, "https://d").unwrap_err().to_string();
        assert!(e.contains("server"), "{e}");
        let e = parse("[host.\"ftp://m\"]", f, "https://d")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheme"), "{e}");
        let e = parse(
            "[host.\"https://m\"]\ncapabilities=[\"fly\"]",
            f,
            "https://d",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fly"), "{e}");
        assert!(parse("server = ", f, "https://d").is_err());
    }
}
