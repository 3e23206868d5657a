//! End-to-end tests of `containerd-shim-berth-v2`, run as root: the shim is started the way
//! containerd starts it (flags, `start`, options on stdin, `TTRPC_ADDRESS` pointing at a fake
//! events endpoint served here), driven over ttrpc, and checked for what it leaves behind.
//! `containerd` then runs containers through it with Debian's `ctr`.

mod containerd;
mod control;
mod harness;
mod lifecycle;
mod oom;
mod protocol;
mod terminal;
