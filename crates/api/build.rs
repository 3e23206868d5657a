//! Compiles every `.proto` under the workspace's `proto/` with protox (pure Rust, no `protoc`),
//! generating prost messages, tonic clients and servers, and ttrpc service traits, servers and
//! clients (for the services that travel over ttrpc).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Services that also get ttrpc code.
const TTRPC_SERVICES: &[&str] = &[
    "containerd.task.v2.Task",
    "containerd.task.v3.Task",
    "containerd.services.events.ttrpc.v1.Events",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let root = root.canonicalize()?;
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(&files, [&root])?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    let tonic_gen = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .service_generator();
    let mut config = prost_build::Config::new();
    config
        .out_dir(&out)
        .include_file("_includes.rs")
        .enable_type_names()
        .service_generator(Box::new(Both {
            tonic: tonic_gen,
            ttrpc: TtrpcGen,
        }));
    config.compile_fds(fds)?;
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else if p.extension().is_some_and(|e| e == "proto") {
            let rel = p.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

struct Both {
    tonic: Box<dyn prost_build::ServiceGenerator>,
    ttrpc: TtrpcGen,
}

impl prost_build::ServiceGenerator for Both {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let full = format!("{}.{}", service.package, service.proto_name);
        if TTRPC_SERVICES.contains(&full.as_str()) {
            self.ttrpc.generate(&service, buf);
        }
        self.tonic.generate(service, buf);
    }
    fn finalize(&mut self, buf: &mut String) {
        self.tonic.finalize(buf);
    }
    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.tonic.finalize_package(package, buf);
    }
}

struct TtrpcGen;

/// Type paths prost gives are relative to the package module; the ttrpc code lives one module
/// deeper.
fn ty(t: &str) -> String {
    if t == "()" || t.starts_with("::") {
        t.to_string()
    } else {
        format!("super::{t}")
    }
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl TtrpcGen {
    fn generate(&mut self, s: &prost_build::Service, buf: &mut String) {
        let full = format!("{}.{}", s.package, s.proto_name);
        let name = &s.name;
        let module = format!("{}_ttrpc", snake(&s.name));
        let t = "::berth_ttrpc";
        let mut trait_body = String::new();
        let mut kinds = String::new();
        let mut dispatch = String::new();
        let mut client = String::new();
        for m in &s.methods {
            let (i, o) = (ty(&m.input_type), ty(&m.output_type));
            let f = &m.name;
            let p = &m.proto_name;
            let unimpl = format!(
                "async {{ Err({t}::Status::unimplemented(\"/{full}/{p} is not implemented\")) }}"
            );
            let kind = match (m.client_streaming, m.server_streaming) {
                (false, false) => "Unary",
                (true, false) => "ClientStreaming",
                (false, true) => "ServerStreaming",
                (true, true) => "Bidi",
            };
            writeln!(
                kinds,
                "            \"{p}\" => Some({t}::MethodKind::{kind}),"
            )
            .unwrap();
            let decode = format!(
                "<{i} as ::prost::Message>::decode(payload).map_err(|e| {t}::Status::invalid_argument(format!(\"decoding {p} request: {{e}}\")))?"
            );
            match kind {
                "Unary" => {
                    writeln!(trait_body, "    /// `{p}`.\n    fn {f}(&self, _ctx: {t}::Context, _req: {i}) -> impl ::core::future::Future<Output = Result<{o}, {t}::Status>> + Send {{ {unimpl} }}").unwrap();
                    writeln!(dispatch, "                \"{p}\" => {{ let req = {decode}; let resp = inner.{f}(ctx, req).await?; Ok(::prost::Message::encode_to_vec(&resp)) }}").unwrap();
                    writeln!(client, "    /// `{p}`.\n    pub async fn {f}(&self, opts: &{t}::CallOptions, req: &{i}) -> Result<{o}, {t}::Status> {{ self.inner.unary(SERVICE_NAME, \"{p}\", req, opts).await }}").unwrap();
                }
                "ServerStreaming" => {
                    writeln!(trait_body, "    /// `{p}` (server streaming): send responses on `_tx`.\n    fn {f}(&self, _ctx: {t}::Context, _req: {i}, _tx: {t}::SendStream) -> impl ::core::future::Future<Output = Result<(), {t}::Status>> + Send {{ {unimpl} }}").unwrap();
                    writeln!(dispatch, "                \"{p}\" => {{ let req = {decode}; let tx = outbound.ok_or_else(|| {t}::Status::internal(\"no stream\"))?; inner.{f}(ctx, req, tx).await?; Ok(Vec::new()) }}").unwrap();
                    writeln!(client, "    /// `{p}` (server streaming): read `{o}` messages from the stream.\n    pub async fn {f}(&self, opts: &{t}::CallOptions, req: &{i}) -> Result<{t}::ClientStream, {t}::Status> {{ self.inner.stream(SERVICE_NAME, \"{p}\", {t}::MethodKind::ServerStreaming, Some(::prost::Message::encode_to_vec(req)), opts).await }}").unwrap();
                }
                "ClientStreaming" => {
                    writeln!(trait_body, "    /// `{p}` (client streaming): read `{i}` messages from `_rx`.\n    fn {f}(&self, _ctx: {t}::Context, _rx: {t}::RecvStream) -> impl ::core::future::Future<Output = Result<{o}, {t}::Status>> + Send {{ {unimpl} }}").unwrap();
                    writeln!(dispatch, "                \"{p}\" => {{ let rx = inbound.ok_or_else(|| {t}::Status::internal(\"no stream\"))?; let resp = inner.{f}(ctx, rx).await?; Ok(::prost::Message::encode_to_vec(&resp)) }}").unwrap();
                    writeln!(client, "    /// `{p}` (client streaming): send `{i}` messages, then `close_and_recv`.\n    pub async fn {f}(&self, opts: &{t}::CallOptions) -> Result<{t}::ClientStream, {t}::Status> {{ self.inner.stream(SERVICE_NAME, \"{p}\", {t}::MethodKind::ClientStreaming, None, opts).await }}").unwrap();
                }
                _ => {
                    writeln!(trait_body, "    /// `{p}` (bidi streaming).\n    fn {f}(&self, _ctx: {t}::Context, _rx: {t}::RecvStream, _tx: {t}::SendStream) -> impl ::core::future::Future<Output = Result<(), {t}::Status>> + Send {{ {unimpl} }}").unwrap();
                    writeln!(dispatch, "                \"{p}\" => {{ let rx = inbound.ok_or_else(|| {t}::Status::internal(\"no stream\"))?; let tx = outbound.ok_or_else(|| {t}::Status::internal(\"no stream\"))?; inner.{f}(ctx, rx, tx).await?; Ok(Vec::new()) }}").unwrap();
                    writeln!(client, "    /// `{p}` (bidi streaming).\n    pub async fn {f}(&self, opts: &{t}::CallOptions) -> Result<{t}::ClientStream, {t}::Status> {{ self.inner.stream(SERVICE_NAME, \"{p}\", {t}::MethodKind::Bidi, None, opts).await }}").unwrap();
                }
            }
        }
        write!(
            buf,
            r#"
/// ttrpc service `{full}`: server trait, dispatcher and client.
pub mod {module} {{
/// Full ttrpc service name.
pub const SERVICE_NAME: &str = "{full}";

/// Implement this to serve `{full}` over ttrpc. Unimplemented methods answer `Unimplemented`.
pub trait {name}: Send + Sync + 'static {{
{trait_body}}}

/// Adapts a [`{name}`] implementation to [`{t}::Service`].
#[derive(Debug)]
pub struct {name}Server<T> {{
    inner: ::std::sync::Arc<T>,
}}

impl<T: {name}> {name}Server<T> {{
    /// Serves `inner`.
    pub fn new(inner: T) -> Self {{
        Self {{ inner: ::std::sync::Arc::new(inner) }}
    }}
    /// Serves a shared implementation.
    pub fn from_arc(inner: ::std::sync::Arc<T>) -> Self {{
        Self {{ inner }}
    }}
}}

impl<T: {name}> {t}::Service for {name}Server<T> {{
    fn name(&self) -> &'static str {{
        SERVICE_NAME
    }}
    fn method_kind(&self, method: &str) -> Option<{t}::MethodKind> {{
        match method {{
{kinds}            _ => None,
        }}
    }}
    #[allow(unused_variables)]
    fn call(&self, call: {t}::ServiceCall) -> {t}::BoxFuture<Result<Vec<u8>, {t}::Status>> {{
        let inner = self.inner.clone();
        Box::pin(async move {{
            let {t}::ServiceCall {{ ctx, method, payload, inbound, outbound }} = call;
            match method.as_str() {{
{dispatch}                other => Err({t}::Status::unimplemented(format!("method {{other}}"))),
            }}
        }})
    }}
}}

/// Typed ttrpc client for `{full}`.
#[derive(Debug, Clone)]
pub struct {name}Client {{
    inner: {t}::Client,
}}

impl {name}Client {{
    /// Wraps a connection.
    pub fn new(inner: {t}::Client) -> Self {{
        Self {{ inner }}
    }}
{client}}}
}}
"#
        )
        .unwrap();
    }
}
