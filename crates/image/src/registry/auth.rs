//! Registry authentication: `WWW-Authenticate` challenges (Bearer and Basic), credentials from
//! the daemon's configuration and from a Docker `config.json`, and bearer-token exchange.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::RegistryError;

/// A user name and secret for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (empty with an identity token).
    pub username: String,
    /// Password, or a refresh/identity token when `username` is empty.
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.secret))
        )
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic`, lower-cased.
    pub scheme: String,
    /// The parameters (`realm`, `service`, `scope`, ...), keys lower-cased.
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value: `Scheme k="v", k2=v2, Scheme2 ...`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        // A token followed by `=` is a parameter of the current challenge; otherwise a scheme.
        let end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..end];
        let after = rest[end..].trim_start();
        if let Some(v) = after.strip_prefix('=')
            && let Some(current) = out.last_mut()
        {
            let v = v.trim_start();
            let (value, remaining) = if let Some(q) = v.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let mut close = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            close = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &q[close.min(q.len())..])
            } else {
                let e = v.find([',', ' ']).unwrap_or(v.len());
                (v[..e].to_string(), &v[e..])
            };
            current.params.insert(token.to_ascii_lowercase(), value);
            rest = remaining.trim_start().trim_start_matches(',').trim_start();
            continue;
        }
        if !token.is_empty() {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
        rest = after.trim_start_matches(',').trim_start();
        if token.is_empty() && rest.len() == after.len() {
            // Nothing consumed: skip one character so hostile input cannot loop forever.
            let mut chars = rest.chars();
            chars.next();
            rest = chars.as_str();
        }
    }
    out
}

/// Credentials per registry host, from the daemon's configuration and a Docker `config.json`.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    by_host: BTreeMap<String, Credentials>,
}

impl CredentialStore {
    /// Adds (or replaces) the credentials for `host`.
    pub fn insert(&mut self, host: &str, creds: Credentials) {
        self.by_host.insert(normalize_host(host), creds);
    }

    /// Reads a Docker `config.json` (`auths.<host>.auth` = base64 `user:pass`, or `username` and
    /// `password`, or `identitytoken`). Credential helpers are not run. A missing file is empty.
    pub fn load_docker_config(&mut self, path: &Path) -> Result<(), RegistryError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(RegistryError::Config(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            auth: Option<String>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<String>,
            #[serde(default)]
            identitytoken: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
        }
        let file: File = serde_json::from_slice(&text)
            .map_err(|e| RegistryError::Config(format!("parsing {}: {e}", path.display())))?;
        for (host, e) in file.auths {
            let creds = if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
                let decoded = B64.decode(auth.trim()).map_err(|_| {
                    RegistryError::Config(format!(
                        "{}: auths.{host}.auth is not base64",
                        path.display()
                    ))
                })?;
                let decoded = String::from_utf8(decoded).map_err(|_| {
                    RegistryError::Config(format!(
                        "{}: auths.{host}.auth is not UTF-8",
                        path.display()
                    ))
                })?;
                let (u, p) = decoded.split_once(':').ok_or_else(|| {
                    RegistryError::Config(format!(
                        "{}: auths.{host}.auth is not user:password",
                        path.display()
                    ))
                })?;
                Credentials {
                    username: u.to_string(),
                    secret: p.to_string(),
                }
            } else if let Some(token) = e.identitytoken.filter(|t| !t.is_empty()) {
                Credentials {
                    username: String::new(),
                    secret: token,
                }
            } else {
                Credentials {
                    username: e.username.unwrap_or_default(),
                    secret: e.password.unwrap_or_default(),
                }
            };
            self.insert(&host, creds);
        }
        Ok(())
    }

    /// The credentials for registry `host`, if any.
    pub fn get(&self, host: &str) -> Option<&Credentials> {
        self.by_host.get(&normalize_host(host))
    }
}

/// Docker config keys may be URLs (`https://index.docker.io/v1/`); reduce them to `host[:port]`.
fn normalize_host(h: &str) -> String {
    let h = h
        .strip_prefix("https://")
        .or_else(|| h.strip_prefix("http://"))
        .unwrap_or(h);
    let h = h.split('/').next().unwrap_or(h);
    match h {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.example/token");
        assert_eq!(c[0].params["scope"], "repository:a/b:pull,push");
        let c = parse_challenges(r#"Basic realm="Registry Realm", Bearer realm=x"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["realm"], "x");
        for hostile in [
            "",
            "=",
            "\"",
            "a=\"unterminated",
            ",,,=,=",
            "Bearer realm=\"\\",
        ] {
            let _ = parse_challenges(hostile);
        }
    }

    #[test]
    fn docker_config_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},
                "r.example:5000":{{"username":"u","password":"p"}},
                "t.example":{{"identitytoken":"tok"}}}}}}"#,
                B64.encode("alice:s3:cret")
            ),
        )
        .unwrap();
        let mut s = CredentialStore::default();
        s.load_docker_config(&p).unwrap();
        assert_eq!(s.get("docker.io").unwrap().secret, "s3:cret");
        assert_eq!(s.get("r.example:5000").unwrap().username, "u");
        assert_eq!(s.get("t.example").unwrap().username, "");
        assert!(s.get("other").is_none());
        s.load_docker_config(&dir.path().join("missing")).unwrap();
        std::fs::write(&p, r#"{"auths":{"h":{"auth":"!!"}}}"#).unwrap();
        let e = s.load_docker_config(&p).unwrap_err().to_string();
        assert!(e.contains("auths.h.auth"), "{e}");
        let dbg = format!("{:?}", s.get("docker.io").unwrap());
        assert!(!dbg.contains("s3:cret"));
    }
}
