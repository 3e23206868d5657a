#!/usr/bin/env bash
# Runs the runtime's and the shim's end-to-end tests, and berthd running tasks through both
# shims with ctr and berthctl, inside a cgroup-v2-only guest: Debian's
# kernel booted by virtme-ng (the host's root file system, read-only with writable overlays)
# under qemu with `cgroup_no_v1=all`. One command; prints the guest's boot time and each test
# binary's counts. KVM is used when BERTH_VM_KVM=1 says /dev/kvm works; otherwise qemu's TCG
# emulation (several minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."

# What the guest needs: qemu, a Debian kernel in /boot and virtme-ng (PyPI).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v vng >/dev/null || pip install -q virtme-ng
kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)

# The test binaries, built on the host (the guest sees this tree read-only).
cargo build -q --workspace --bins
bins=()
for t in "berth-runtime runtime_e2e" "berth-shim shim_e2e" "berth-e2e e2e"; do
  set -- $t
  bins+=("$(cargo test -q -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2" | tail -1)")
done

kvm=(--disable-kvm)
[ "${BERTH_VM_KVM:-0}" = 1 ] && kvm=()
log=target/cgroup2-guest.log
script="set -u
echo guest-up \$(cut -d' ' -f1 /proc/uptime)s kernel \$(uname -r)
test -f /sys/fs/cgroup/cgroup.controllers && echo cgroup2: \$(cat /sys/fs/cgroup/cgroup.controllers)
# virtme's /tmp is an overlay, which an overlay's upper directory cannot be on: a tmpfs instead.
mount -t tmpfs -o size=2G tmpfs /tmp
# containerd's Go shim writes exec process files under \$XDG_RUNTIME_DIR, which virtme sets to
# a directory the tests' private /run does not have: /tmp, as on the host.
unset XDG_RUNTIME_DIR
cd $(pwd)/crates/runtime && ${bins[0]} --test-threads=2 2>&1
cd $(pwd)/crates/shim && ${bins[1]} --test-threads=2 2>&1
# berthd with ctr: tasks through Berth's shim and through containerd's Go shim.
cd $(pwd)/tests && ${bins[2]} --test-threads=2 shim_berth::ctr_run_and_task_commands_through_the_berth_shim tasks::ctr_run_and_task_commands_through_the_go_shim tasks::berthctl_run 2>&1"
start=$(date +%s)
timeout 1800 vng --run "$kernel" "${kvm[@]}" --memory 4G --cpus 2 --append "cgroup_no_v1=all" \
  --exec "$script" 2>&1 | tee "$log"
echo "hack/vm/cgroup2.sh: $(grep -c '^test result' "$log") test binaries ran in the guest; \
$(grep -h '^test result' "$log" | tr '\n' ' '); $(( $(date +%s) - start ))s in all (log: $log)"
# Fails unless all three test binaries ran and none failed.
[ "$(grep -c '^test result: ok' "$log")" = 3 ] && ! grep -q '^test result: FAILED' "$log"
