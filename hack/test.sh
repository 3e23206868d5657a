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
# containernetworking-plugins (the CNI bridge); docker.io (dockerd 20.10 on berthd). Idempotent:
# apt-get only runs when one is missing (and starts no service: there is no systemd here).
packages=(containerd runc busybox-static skopeo docker-registry openssl python3 util-linux mount
  golang-go gcc libc6-dev iptables iproute2 containernetworking-plugins docker.io)
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

# Every gate runs, whatever the one before it did, and the last line says what each gave:
# formatting and lints as reviewers gate them, then every test binary (--no-fail-fast: one
# failing binary does not hide the others). The whole output is also in target/test.log.
set +e
start=$(date +%s)
mkdir -p target
out=target/test.log
: >"$out"
gates=()
failed=0
gate() { # NAME COMMAND...
  local name=$1
  shift
  echo "hack/test.sh: $name: $*" | tee -a "$out"
  if "$@" 2>&1 | tee -a "$out"; then
    gates+=("$name ok")
  else
    gates+=("$name FAILED")
    failed=1
  fi
}
gate fmt cargo fmt --all -- --check
gate clippy cargo clippy --workspace --all-targets -- -D warnings
# The e2e tests run the built daemon and CLI as processes.
gate build cargo build --workspace --bins
tests_from=$(wc -l <"$out")
gate tests cargo test --workspace --no-fail-fast

# Totals over every test binary's "test result:" line; a binary that started and printed none
# (it crashed) is counted apart.
tail -n +"$((tests_from + 1))" "$out" | awk -v secs="$(($(date +%s) - start))" -v gates="$(IFS=,; echo "${gates[*]}")" \
  -v verdict="$([ "$failed" = 0 ] && echo PASS || echo FAIL)" '
  /^     Running / || /^   Doc-tests / { started++ }
  /^test result: / {
    reported++
    for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed/) passed += $i
      if ($(i+1) ~ /^failed/) failed += $i
      if ($(i+1) ~ /^ignored/) ignored += $i
    }
  }
  / \.\.\. FAILED$/ { sub(/^test /, ""); sub(/ \.\.\. FAILED$/, ""); names = names "\n  failed: " $0 }
  END {
    crashed = started - reported
    printf "%s", substr(names, 2) (names != "" ? "\n" : "")
    printf "hack/test.sh: %s: %d passed, %d failed, %d ignored in %d test binaries%s; %s; %dm%02ds\n",
      verdict, passed, failed, ignored, reported, (crashed > 0 ? sprintf(", %d crashed", crashed) : ""),
      gates, secs / 60, secs % 60
  }' | tee -a "$out"

# The cgroup-v2-only guest (hack/vm/cgroup2.sh: the runtime's and the shim's e2e tests, and
# berthd's tasks, in Debian's kernel booted with cgroup_no_v1=all). Under KVM it fits the suite;
# here /dev/kvm hangs Debian's kernel at boot and qemu's TCG emulation takes ~6 minutes, so it
# runs when BERTH_VM_KVM=1 (a usable /dev/kvm) or BERTH_CGROUP2_GUEST=1 (TCG) asks for it.
if [ "${BERTH_VM_KVM:-0}" = 1 ] || [ "${BERTH_CGROUP2_GUEST:-0}" = 1 ]; then
  hack/vm/cgroup2.sh 2>&1 | tee -a "$out"
  [ "${PIPESTATUS[0]}" = 0 ] || failed=1
else
  echo "hack/test.sh: cgroup v2 guest: not run (/dev/kvm is not usable on this machine; \
BERTH_CGROUP2_GUEST=1 runs it under TCG, or run hack/vm/cgroup2.sh)" | tee -a "$out"
fi
exit "$failed"
