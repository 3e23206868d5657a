//! An OCI distribution-spec client: resolving tags to digests, fetching manifests and blobs
//! (with digest and size checks, and Range-resumed downloads), pushing, and the authentication
//! and TLS that registries ask for. Endpoints per registry come from [`hosts`] (`hosts.toml`),
//! the one place every pull and push path takes them from.

pub mod auth;
pub mod hosts;
mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_content::Digest;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use sha2::Digest as _;

use crate::Descriptor;
use crate::media::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, printable};
use crate::reference::ImageRef;

mod blob;
mod push;
pub use auth::{CredentialStore, Credentials};
pub use blob::BlobStream;
pub use hosts::{Capabilities, Host, HostOptions};

/// Manifests and indexes are held in memory; refuse anything bigger than this.
pub const MANIFEST_LIMIT: u64 = 8 << 20;

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference is malformed.
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    /// Host configuration (hosts.toml, CA files, credentials files) is invalid.
    #[error("registry configuration: {0}")]
    Config(String),
    /// The registry does not have what was asked for.
    #[error("{0}: not found")]
    NotFound(String),
    /// The registry wants credentials we do not have, or refused the ones we sent.
    #[error("{0}")]
    Unauthorized(String),
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: {status}{body}")]
    Status {
        /// The request method.
        method: String,
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the body, for the error's reader (empty or `: ...`).
        body: String,
    },
    /// The registry could not be reached, or the connection failed or stalled.
    #[error("{url}: {msg}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What failed, with causes.
        msg: String,
    },
    /// The bytes do not hash to the digest they were fetched by.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// The registry sent a different number of bytes than the descriptor says.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// What came (at least).
        actual: u64,
    },
    /// A document is bigger than we hold in memory, or malformed.
    #[error("{0}")]
    Invalid(String),
}

/// Transport settings shared by every registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Give up on a response that sends nothing for this long (a stalled registry).
    pub stall_timeout: Duration,
    /// Retries (with Range resume) of a blob download cut short.
    pub blob_retries: u32,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            blob_retries: 3,
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Asks the caller for credentials: `(host, WWW-Authenticate values)` → credentials, if any.
pub type CredentialCallback =
    Arc<dyn Fn(String, Vec<String>) -> BoxFuture<'static, Option<Credentials>> + Send + Sync>;

/// A registry client: TLS clients per endpoint configuration, and a cache of authorisations.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

struct Inner {
    opts: RegistryOptions,
    creds: CredentialStore,
    clients: Mutex<HashMap<tls::Key, reqwest::Client>>,
    /// `Authorization` values by (endpoint authority, repository, push?).
    auth: Mutex<HashMap<(String, String, bool), String>>,
}

/// What the caller adds to a pull or push: host options, credentials, extra headers.
#[derive(Clone, Default)]
pub struct Session {
    /// Where hosts.toml files are, default scheme, insecure hosts.
    pub hosts: HostOptions,
    /// Asked when a registry wants credentials the store does not have.
    pub credentials: Option<CredentialCallback>,
    /// Headers added to every request.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("hosts", &self.hosts)
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A client with `opts`, knowing the credentials in `creds`.
    pub fn new(opts: RegistryOptions, creds: CredentialStore) -> Self {
        // reqwest builds a rustls configuration of its own in some paths (plain-http clients
        // too), and then needs a process-wide provider: ring, installed once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry {
            inner: Arc::new(Inner {
                opts,
                creds,
                clients: Mutex::new(HashMap::new()),
                auth: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The repository `r` names, reached through the endpoints its registry is configured with.
    pub fn repository(&self, r: &ImageRef, session: &Session) -> Result<Repository, RegistryError> {
        let hosts = hosts::hosts_for(&r.domain, &session.hosts)?;
        Ok(Repository {
            inner: self.inner.clone(),
            reference: r.clone(),
            hosts,
            session: session.clone(),
        })
    }
}

/// One repository of one registry.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
    /// The reference this repository was opened for.
    pub reference: ImageRef,
    hosts: Vec<Host>,
    session: Session,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("reference", &self.reference.to_string())
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, */*;q=0.8";

fn transport(url: &str, e: &reqwest::Error) -> RegistryError {
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cur = c.source();
    }
    if e.is_timeout() {
        msg.push_str(" (the registry stalled)");
    }
    RegistryError::Transport {
        url: url.to_string(),
        msg,
    }
}

/// A manifest media type from a `Content-Type` header, without parameters.
fn media_type_of(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let v = v.split(';').next()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Guesses a manifest's media type from its JSON when the registry did not say.
fn sniff_media_type(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) if !m.is_empty() => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

fn is_manifest_type(mt: &str) -> bool {
    matches!(
        mt,
        OCI_INDEX | OCI_MANIFEST | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
    )
}

impl Repository {
    fn hosts_with(&self, cap: fn(&Capabilities) -> bool) -> Vec<&Host> {
        self.hosts.iter().filter(|h| cap(&h.capabilities)).collect()
    }

    fn client(&self, host: &Host) -> Result<reqwest::Client, RegistryError> {
        let key = tls::Key::of(host);
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let c = tls::client(host, &self.inner.opts)?;
        clients.insert(key, c.clone());
        Ok(c)
    }

    /// Sends a request to `host`, answering an authentication challenge once.
    async fn send(
        &self,
        host: &Host,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
        push: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let client = self.client(host)?;
        let key = (host.authority.clone(), self.reference.path.clone(), push);
        let mut challenged = false;
        loop {
            let mut req = client.request(method.clone(), url);
            for (k, v) in host.headers.iter().chain(&self.session.headers) {
                req = req.header(k.as_str(), v.as_str());
            }
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            let cached = self
                .inner
                .auth
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            if let Some(a) = cached {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let resp = req.send().await.map_err(|e| transport(url, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || challenged {
                if resp.status() == StatusCode::UNAUTHORIZED {
                    return Err(RegistryError::Unauthorized(format!(
                        "{method} {url}: 401 Unauthorized: the registry refused the credentials"
                    )));
                }
                return Ok(resp);
            }
            challenged = true;
            let www: Vec<String> = resp
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            let value = self.authorize(host, &www, push, url).await?;
            self.inner
                .auth
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), value);
        }
    }

    /// Works out an `Authorization` value for a challenge.
    async fn authorize(
        &self,
        host: &Host,
        www: &[String],
        push: bool,
        url: &str,
    ) -> Result<String, RegistryError> {
        let challenges: Vec<auth::Challenge> =
            www.iter().flat_map(|h| auth::parse_challenges(h)).collect();
        let mut creds = None;
        if let Some(cb) = &self.session.credentials {
            creds = cb(host.authority.clone(), www.to_vec()).await;
        }
        if creds.is_none() {
            creds = self
                .inner
                .creds
                .get(&host.authority)
                .or_else(|| self.inner.creds.get(&self.reference.domain))
                .cloned();
        }
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.bearer(c, creds.as_ref(), push).await;
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match creds {
                Some(c) => Ok(c.basic()),
                None => Err(RegistryError::Unauthorized(format!(
                    "{url}: the registry {} asks for a user name and password and none is \
                     configured (config file [registry.auths], Docker config.json, or --user)",
                    host.authority
                ))),
            };
        }
        Err(RegistryError::Unauthorized(format!(
            "{url}: 401 Unauthorized without a usable WWW-Authenticate challenge ({})",
            printable(&www.join(" | "))
        )))
    }

    async fn bearer(
        &self,
        c: &auth::Challenge,
        creds: Option<&Credentials>,
        push: bool,
    ) -> Result<String, RegistryError> {
        let Some(realm) = c.params.get("realm") else {
            return Err(RegistryError::Unauthorized(
                "bearer challenge without a realm".into(),
            ));
        };
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RegistryError::Unauthorized(format!(
                "bearer realm {} is not an http(s) URL",
                printable(realm)
            )));
        }
        let actions = if push { "pull,push" } else { "pull" };
        let scope = format!("repository:{}:{actions}", self.reference.path);
        let mut query: Vec<(&str, &str)> = vec![("scope", &scope)];
        if let Some(s) = c.params.get("service") {
            query.push(("service", s));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(self.inner.opts.connect_timeout)
            .read_timeout(self.inner.opts.stall_timeout)
            .use_preconfigured_tls(tls::config(&[], None, false)?)
            .build()
            .map_err(|e| transport(realm, &e))?;
        let url = reqwest::Url::parse_with_params(realm, &query).map_err(|e| {
            RegistryError::Unauthorized(format!("bearer realm {}: {e}", printable(realm)))
        })?;
        let mut req = client.get(url);
        if let Some(cr) = creds {
            req = req.header(AUTHORIZATION, cr.basic());
        }
        let resp = req.send().await.map_err(|e| transport(realm, &e))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Unauthorized(format!(
                "token server {}: {}",
                printable(realm),
                resp.status()
            )));
        }
        let body = read_capped(resp, 1 << 20, realm).await?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Unauthorized(format!("token server {}: {e}", printable(realm)))
        })?;
        match t.token.or(t.access_token).filter(|t| !t.is_empty()) {
            Some(t) => Ok(format!("Bearer {t}")),
            None => Err(RegistryError::Unauthorized(format!(
                "token server {} returned no token",
                printable(realm)
            ))),
        }
    }

    /// Tries `f` on each endpoint in turn; the last error wins if none succeeds. A definite
    /// answer (not found on the last host, unauthorised, bad data) is returned at once only by
    /// the last endpoint; mirrors that fail are skipped.
    async fn each_host<'a, T, F>(
        &'a self,
        hosts: Vec<&'a Host>,
        mut f: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(&'a Host) -> BoxFuture<'a, Result<T, RegistryError>>,
    {
        let mut last = RegistryError::Config(format!(
            "no endpoint of {} has the needed capability",
            self.reference.domain
        ));
        for h in hosts {
            match f(h).await {
                Ok(v) => return Ok(v),
                Err(
                    e @ (RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. }),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(host = %h.authority, error = %e, "registry endpoint failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Resolves the reference's tag (or digest) to the descriptor of its manifest or index.
    pub async fn resolve(&self) -> Result<Descriptor, RegistryError> {
        let object = self.reference.object();
        let hosts = if self.reference.digest.is_some() {
            self.hosts_with(|c| c.pull || c.resolve)
        } else {
            self.hosts_with(|c| c.resolve)
        };
        self.each_host(hosts, |h| Box::pin(self.resolve_on(h, object.clone())))
            .await
    }

    async fn resolve_on(&self, host: &Host, object: String) -> Result<Descriptor, RegistryError> {
        let url = host.url(&format!("/{}/manifests/{object}", self.reference.path));
        let accept = [(ACCEPT.as_str(), MANIFEST_ACCEPT.to_string())];
        let resp = self
            .send(host, Method::HEAD, &url, &accept, None, false)
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound(self.reference.to_string()));
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let size = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let mt = media_type_of(resp.headers());
        if status.is_success()
            && let (Some(d), Some(size), Some(mt)) = (&header_digest, size, &mt)
            && is_manifest_type(mt)
            && size > 0
        {
            if let Some(want) = &self.reference.digest
                && want != d
            {
                return Err(RegistryError::DigestMismatch {
                    what: self.reference.to_string(),
                    expected: want.clone(),
                    actual: d.clone(),
                });
            }
            return Ok(Descriptor {
                media_type: mt.clone(),
                digest: d.clone(),
                size,
                annotations: Default::default(),
            });
        }
        // HEAD said too little: fetch the manifest and hash it.
        let resp = self
            .send(host, Method::GET, &url, &accept, None, false)
            .await?;
        let resp = check_status(resp, "GET", &url, &self.reference.to_string()).await?;
        let mt = media_type_of(resp.headers());
        let body = read_capped(resp, MANIFEST_LIMIT, &url).await?;
        let actual = Digest::of(&body);
        if let Some(want) = &self.reference.digest
            && *want != actual
        {
            return Err(RegistryError::DigestMismatch {
                what: self.reference.to_string(),
                expected: want.clone(),
                actual,
            });
        }
        let mt = match mt {
            Some(m) if is_manifest_type(&m) => m,
            _ => sniff_media_type(&body),
        };
        Ok(Descriptor {
            media_type: mt,
            digest: actual,
            size: body.len() as i64,
            annotations: Default::default(),
        })
    }

    /// Fetches a manifest or index (or any small blob) into memory, checking size and digest.
    pub async fn fetch_manifest(&self, desc: &Descriptor) -> Result<Bytes, RegistryError> {
        if desc.size < 0 || desc.size as u64 > MANIFEST_LIMIT {
            return Err(RegistryError::Invalid(format!(
                "{}: {} bytes is over the {MANIFEST_LIMIT}-byte manifest limit",
                desc.digest, desc.size
            )));
        }
        let is_manifest = is_manifest_type(&desc.media_type);
        let hosts = self.hosts_with(|c| c.pull);
        self.each_host(hosts, |h| {
            let kind = if is_manifest { "manifests" } else { "blobs" };
            let url = h.url(&format!("/{}/{kind}/{}", self.reference.path, desc.digest));
            Box::pin(async move {
                let accept = [(ACCEPT.as_str(), MANIFEST_ACCEPT.to_string())];
                let resp = self
                    .send(h, Method::GET, &url, &accept, None, false)
                    .await?;
                let resp = check_status(resp, "GET", &url, desc.digest.as_str()).await?;
                let body = read_capped(resp, desc.size as u64 + 1, &url).await?;
                verify(desc, &body)?;
                Ok(body)
            })
        })
        .await
    }

    /// Whether the registry already has a blob (for push).
    pub async fn has_blob(&self, desc: &Descriptor) -> Result<bool, RegistryError> {
        let hosts = self.hosts_with(|c| c.push);
        let Some(h) = hosts.first() else {
            return Err(RegistryError::Config(format!(
                "no endpoint of {} may be pushed to",
                self.reference.domain
            )));
        };
        let url = h.url(&format!("/{}/blobs/{}", self.reference.path, desc.digest));
        let resp = self.send(h, Method::HEAD, &url, &[], None, true).await?;
        Ok(resp.status().is_success())
    }
}

fn verify(desc: &Descriptor, body: &[u8]) -> Result<(), RegistryError> {
    if body.len() as u64 != desc.size as u64 {
        return Err(RegistryError::SizeMismatch {
            what: desc.digest.to_string(),
            expected: desc.size as u64,
            actual: body.len() as u64,
        });
    }
    let actual = Digest::of(body);
    if actual != desc.digest {
        return Err(RegistryError::DigestMismatch {
            what: desc.digest.to_string(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(())
}

async fn check_status(
    resp: reqwest::Response,
    method: &str,
    url: &str,
    what: &str,
) -> Result<reqwest::Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(RegistryError::NotFound(what.to_string()));
    }
    if status == StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized(format!(
            "{method} {url}: 403 Forbidden"
        )));
    }
    let body = read_capped(resp, 4096, url).await.unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    let body = body.trim();
    Err(RegistryError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status,
        body: if body.is_empty() {
            String::new()
        } else {
            format!(": {}", printable(body))
        },
    })
}

/// Reads a whole body, refusing more than `limit` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    limit: u64,
    url: &str,
) -> Result<Bytes, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(url, &e))? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::Invalid(format!(
                "{url}: response is larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}
