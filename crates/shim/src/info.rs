//! The `-info` flag (containerd 2.x): read the runtime options on stdin, print a
//! `containerd.types.RuntimeInfo` protobuf — our name and version, the options, and the runtime
//! binary's own `features` JSON.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use berth_api::containerd::types::{RuntimeInfo, RuntimeVersion};
use prost::Message;

use crate::task::runc_options;

/// Type URL containerd uses for the runtime-spec `features` document (JSON).
const FEATURES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

pub(crate) fn run() -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading options from stdin")?;
    let options = if input.is_empty() {
        None
    } else {
        Some(prost_types::Any::decode(input.as_slice()).context("decoding the options Any")?)
    };
    let opts = runc_options(options.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let binary = if opts.binary_name.is_empty() {
        crate::runc::default_binary()
    } else {
        opts.binary_name.clone()
    };
    let out = Command::new(&binary)
        .arg("features")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {binary} features"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{binary} features: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info = RuntimeInfo {
        name: "io.containerd.berth.v2".into(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").into(),
            revision: String::new(),
        }),
        options,
        features: Some(prost_types::Any {
            type_url: FEATURES_TYPE.into(),
            value: out.stdout,
        }),
        annotations: Default::default(),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&info.encode_to_vec())
        .and_then(|()| stdout.flush())
        .context("writing RuntimeInfo")
}
