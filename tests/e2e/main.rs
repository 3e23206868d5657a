//! End-to-end tests. They need root, Debian's `containerd` (for `ctr` and
//! `containerd-shim-runc-v2`), `runc` and `busybox-static`, and built workspace binaries
//! (`cargo build --workspace --bins`).

mod berthctl_snapshots;
mod containers;
mod content_suite;
mod crash;
mod cri;
mod daemon;
mod diff;
mod docker;
mod errors;
mod otlp;
mod proxy_snapshotter;
mod pull;
mod pull_hostile;
mod pull_identical;
mod pull_platforms;
mod pull_resume;
mod shim_berth;
mod shim_interop;
mod snapshot_suite;
mod snapshots;
mod storage;
mod storage_bad_input;
mod tasks;
mod unpack;
