//! The HTTP side: the listener, the token URLs the CRI hands out, and the upgrade of a request
//! to SPDY/3.1 or WebSocket, decided by its headers as the kubelet decides it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::cache::TokenCache;
use crate::error::StreamError;
use crate::request::{AttachRequest, ExecRequest, PortForwardRequest, Prepared};
use crate::runtime::Runtime;
use crate::{remote, spdy_portforward, websocket};

/// Subprotocols of remote command over SPDY, in the order the server prefers them (the
/// client's order decides, as in the kubelet).
pub(crate) const REMOTE_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The subprotocol of port forwarding over SPDY.
pub(crate) const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

const HEADER_PROTOCOL: &str = "x-stream-protocol-version";
const HEADER_ACCEPTED: &str = "x-accepted-stream-protocol-versions";

/// The streaming server's settings. The defaults are the kubelet's.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks one.
    pub addr: SocketAddr,
    /// The URL prefix handed out (`http://host:port`); by default the bound address, which is
    /// only reachable by clients if that is not a wildcard address.
    pub base_url: Option<String>,
    /// How long a client has to open its streams after the upgrade (30 s).
    pub stream_creation_timeout: Duration,
    /// A connection with no traffic for this long is closed (4 h); `None` never.
    pub stream_idle_timeout: Option<Duration>,
    /// How long a token stays usable (1 minute).
    pub token_ttl: Duration,
    /// At most this many tokens outstanding (1000).
    pub max_in_flight: usize,
    /// At most this many sessions (exec, attach, port-forward connections) at once (256): a
    /// request past it gets 429 Too Many Requests and keeps its token, so it can be retried.
    pub max_sessions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            stream_creation_timeout: Duration::from_secs(30),
            stream_idle_timeout: Some(Duration::from_secs(4 * 3600)),
            token_ttl: Duration::from_secs(60),
            max_in_flight: 1000,
            max_sessions: 256,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) runtime: Arc<dyn Runtime>,
    cache: TokenCache,
    base_url: String,
    // std's Mutex: spawning and reaping are synchronous and short.
    tasks: Mutex<JoinSet<()>>,
    sessions: Arc<Semaphore>,
}

impl Inner {
    /// Runs `fut` until it ends or the server shuts down.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(fut);
    }

    /// Runs session `fut`, holding its place among the concurrent sessions until it ends.
    pub(crate) fn spawn_session(
        &self,
        permit: Session,
        fut: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

/// A place among the server's concurrent sessions.
pub(crate) type Session = OwnedSemaphorePermit;

/// The CRI streaming server: hands out one-time URLs for exec, attach and port-forward and
/// serves them over SPDY/3.1 and WebSocket. Dropping it stops the listener and every session.
pub struct Server {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `config.addr` and starts serving with `runtime` behind it.
    pub async fn start<R: Runtime>(config: Config, runtime: R) -> Result<Server, StreamError> {
        Self::start_shared(config, Arc::new(runtime)).await
    }

    /// [`Server::start`] with a runtime the caller keeps a handle to.
    pub async fn start_shared(
        config: Config,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Server, StreamError> {
        let bind_err = |source| StreamError::Bind {
            addr: config.addr,
            source,
        };
        let listener = TcpListener::bind(config.addr).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let base_url = match &config.base_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{addr}"),
        };
        let inner = Arc::new(Inner {
            cache: TokenCache::new(config.token_ttl, config.max_in_flight),
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            config,
            runtime,
            base_url,
            tasks: Mutex::new(JoinSet::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        Ok(Server {
            inner,
            addr,
            accept,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Validates an exec request and returns the URL the client streams it from.
    pub fn get_exec(&self, req: ExecRequest) -> Result<String, StreamError> {
        self.url(Prepared::exec(req)?)
    }

    /// Validates an attach request and returns the URL the client streams it from.
    pub fn get_attach(&self, req: AttachRequest) -> Result<String, StreamError> {
        self.url(Prepared::attach(req)?)
    }

    /// Validates a port-forward request and returns the URL the client streams it from.
    pub fn get_port_forward(&self, req: PortForwardRequest) -> Result<String, StreamError> {
        self.url(Prepared::port_forward(req)?)
    }

    fn url(&self, req: Prepared) -> Result<String, StreamError> {
        let kind = req.kind();
        let token = self.inner.cache.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.inner.base_url))
    }

    /// Stops accepting and ends every session.
    pub fn shutdown(&self) {
        self.accept.abort();
        self.inner.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "stream server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn_inner = inner.clone();
        inner.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let inner = conn_inner.clone();
                async move { Ok::<_, Infallible>(route(inner, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "stream server: connection ended");
            }
        });
    }
}

pub(crate) type Resp = Response<Full<Bytes>>;

/// A plain-text error response, as Go's `http.Error` writes it.
/// The connection a client's upgrade (to `what`) hands over; none if it failed.
pub(crate) async fn upgraded(
    on: hyper::upgrade::OnUpgrade,
    what: &str,
) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match on.await {
        Ok(u) => Some(TokioIo::new(u)),
        Err(e) => {
            tracing::debug!(error = %e, "stream server: {what} upgrade failed");
            None
        }
    }
}

pub(crate) fn error(status: StatusCode, msg: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "404 page not found")
}

fn route(inner: Arc<Inner>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    let Some((kind, token)) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(k, t)| matches!(*k, "exec" | "attach" | "portforward") && !t.contains('/'))
    else {
        return not_found();
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed");
    }
    let kind = kind.to_owned();
    // Refused before the token is used, so the client may try the same URL again.
    let Ok(session) = inner.sessions.clone().try_acquire_owned() else {
        tracing::warn!(
            max = inner.config.max_sessions,
            "stream server: session refused, too many at once"
        );
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many streaming sessions at once (the limit is {}); try again later",
                inner.config.max_sessions
            ),
        );
    };
    let Some(prepared) = inner.cache.consume(token) else {
        return not_found();
    };
    if prepared.kind() != kind {
        return not_found();
    }
    if is_websocket(req.headers()) {
        websocket::upgrade(inner, req, prepared, session)
    } else {
        spdy_upgrade(inner, req, prepared, session)
    }
}

/// The kubelet's test: `Upgrade: websocket` and an `upgrade` token in `Connection`.
fn is_websocket(h: &HeaderMap) -> bool {
    let upgrade = h.get(header::UPGRADE).and_then(|v| v.to_str().ok());
    upgrade.is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"))
        && header_tokens(h, header::CONNECTION.as_str()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated values of every `name` header, trimmed.
pub(crate) fn header_tokens<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn contains_ci(h: &HeaderMap, name: header::HeaderName, needle: &str) -> bool {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains(needle))
}

/// Subprotocol negotiation and the SPDY/3.1 upgrade, with the kubelet's answers: 400 without
/// `X-Stream-Protocol-Version`, 403 (and the accepted versions) when none matches, 400 without
/// the upgrade headers.
fn spdy_upgrade(
    inner: Arc<Inner>,
    mut req: Request<Incoming>,
    prepared: Prepared,
    session: Session,
) -> Resp {
    let server: &[&str] = match prepared {
        Prepared::PortForward(_) => PORT_FORWARD_PROTOCOLS,
        _ => REMOTE_PROTOCOLS,
    };
    let client: Vec<&str> = header_tokens(req.headers(), HEADER_PROTOCOL).collect();
    if client.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        );
    }
    let Some(protocol) = client.iter().copied().find(|c| server.contains(c)) else {
        let msg = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {server:?}"
        );
        let mut r = error(StatusCode::FORBIDDEN, &msg);
        for p in server {
            r.headers_mut()
                .append(HEADER_ACCEPTED, HeaderValue::from_static(p));
        }
        return r;
    };
    let protocol: &'static str = server
        .iter()
        .copied()
        .find(|p| *p == protocol)
        .unwrap_or("");
    if !contains_ci(req.headers(), header::CONNECTION, "upgrade")
        || !contains_ci(req.headers(), header::UPGRADE, "spdy/3.1")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_inner = inner.clone();
    inner.spawn_session(session, async move {
        let Some(io) = upgraded(on_upgrade, "SPDY").await else {
            return;
        };
        match prepared {
            Prepared::PortForward(pf) => {
                spdy_portforward::serve(session_inner, io, pf.pod_sandbox_id).await
            }
            other => remote::serve_spdy(session_inner, io, protocol, other).await,
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(HEADER_PROTOCOL, HeaderValue::from_static(protocol));
    r
}
