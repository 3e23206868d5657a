//! Generated code for everything in the workspace's `proto/`: prost messages, tonic clients and
//! servers for every gRPC service, and ttrpc traits, servers and clients for the services that
//! travel over ttrpc (the shim task API and the events forwarding endpoint).
//!
//! Modules follow the proto packages: `containerd::services::namespaces::v1`, `containerd::task::v2`,
//! `runtime::v1` (CRI), and so on. In `DESIGN.md` terms this is the wire layer every other crate
//! speaks through; it holds no logic.

#![allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    rustdoc::all
)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

/// The compiled `FileDescriptorSet` of every proto, for reflection and for resolving `Any` types.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
