//! End-to-end tests of the runtime binary on busybox bundles (root only). Run them against
//! runc with `BERTH_RUNC_BIN=/usr/sbin/runc` to check the tests themselves.

mod bad_input;
mod exec;
mod hardening;
mod lifecycle;
mod limits;
mod security;
mod spec;
mod util;
