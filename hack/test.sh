#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian bookworm machine (as root), then builds and
# runs the whole suite. This is the README's test command, and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: ctr + containerd-shim-runc-v2 (interop), runc (bundles, interop),
# busybox-static (test root file systems), skopeo + docker-registry (registry fixtures), openssl
# (test CA), python3 (bcrypt via crypt(3), image building), util-linux (unshare, mount, script),
# mount; for critest (hack/cri): golang-go (builds cri-tools from a local repository), gcc and
# libc6-dev (static helpers of the stand-in images), iptables, iproute2 and
# containernetworking-plugins (the CNI bridge). Idempotent: apt-get only runs when one is missing.
packages=(containerd runc busybox-static skopeo docker-registry openssl python3 util-linux mount
  golang-go gcc libc6-dev iptables iproute2 containernetworking-plugins)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "the end-to-end tests run real containers and need root" >&2
  exit 1
fi

# The e2e tests run the built daemon and CLI as processes.
cargo build --workspace --bins
cargo test --workspace
