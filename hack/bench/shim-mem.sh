#!/usr/bin/env bash
# Shim memory: N idle busybox containers (`sleep`) under a private containerd 1.6, first through
# Debian's containerd-shim-runc-v2, then through containerd-shim-berth-v2; prints Rss, Pss and USS
# (Private_Clean + Private_Dirty, from /proc/<pid>/smaps_rollup) per shim, medians, and the ratio.
#
# Usage: hack/bench/shim-mem.sh            (N=20; SHIM=path to containerd-shim-berth-v2)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-20}"
SHIM="${SHIM:-${CARGO_TARGET_DIR:-$ROOT_DIR/target}/debug/containerd-shim-berth-v2}"
[ -x "$SHIM" ] || { echo "no shim at $SHIM (cargo build -p berth-shim, or SHIM=...)" >&2; exit 1; }
mkdir -p "$BENCH_TMP/bin" "$BENCH_TMP/fifo" "$BENCH_TMP/rootfs/bin"
cp "$SHIM" "$BENCH_TMP/bin/containerd-shim-berth-v2"
export PATH="$BENCH_TMP/bin:$PATH"
cp /bin/busybox "$BENCH_TMP/rootfs/bin/busybox"
for a in sh sleep; do ln -s busybox "$BENCH_TMP/rootfs/bin/$a"; done
mkdir -p "$BENCH_TMP/rootfs/proc" "$BENCH_TMP/rootfs/dev" "$BENCH_TMP/rootfs/sys"

start_containerd
CTR=(ctr --address "$CTRD_SOCK" -n shimmem)

shimmem_cleanup() {
  for id in $("${CTR[@]}" task ls -q 2>/dev/null || true); do
    "${CTR[@]}" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $("${CTR[@]}" task ls -q 2>/dev/null || true); do
    "${CTR[@]}" task rm -f "$id" >/dev/null 2>&1 || true
  done
  for id in $("${CTR[@]}" containers ls -q 2>/dev/null || true); do
    "${CTR[@]}" containers rm "$id" >/dev/null 2>&1 || true
  done
  # Shims are not our children: chosen by the socket under BENCH_TMP in their command line.
  python3 "$PROCS" signal KILL --cmdline-has containerd-shim- --cmdline-has "-address $CTRD_SOCK " >/dev/null || true
  bench_cleanup
  # The runtimes remove each container's cgroup, not the namespace's parent directory.
  for d in /sys/fs/cgroup/*/shimmem; do rmdir "$d" 2>/dev/null || true; done
}
trap shimmem_cleanup EXIT

run_many() {
  local runtime="$1" prefix="$2" i
  for i in $(seq 1 "$N"); do
    "${CTR[@]}" run -d --fifo-dir "$BENCH_TMP/fifo" --runtime "$runtime" \
      --rootfs "$BENCH_TMP/rootfs" "$prefix$i" /bin/sleep 1000000 >/dev/null
  done
}

report() {
  local label="$1"; shift
  local pids=("$@")
  printf '%-26s shims=%-3d Rss=%6s kB  Pss=%6s kB  USS=%6s kB (medians)\n' "$label" "${#pids[@]}" \
    "$(median $(smaps_field Rss "${pids[@]}"))" "$(median $(smaps_field Pss "${pids[@]}"))" "$(median $(uss "${pids[@]}"))"
}

run_many io.containerd.runc.v2 runc-
run_many io.containerd.berth.v2 berth-
sleep 3
mapfile -t GO < <(shim_pids containerd-shim-runc-v2 "$CTRD_SOCK")
mapfile -t RS < <(shim_pids containerd-shim-berth-v2 "$CTRD_SOCK")
report containerd-shim-runc-v2 "${GO[@]}"
report containerd-shim-berth-v2 "${RS[@]}"
go_pss=$(median $(smaps_field Pss "${GO[@]}"))
rs_pss=$(median $(smaps_field Pss "${RS[@]}"))
go_uss=$(median $(uss "${GO[@]}"))
rs_uss=$(median $(uss "${RS[@]}"))
awk -v a="$rs_pss" -v b="$go_pss" -v c="$rs_uss" -v d="$go_uss" \
  'BEGIN {printf "berth/runc-v2 ratio: Pss %.3f  USS %.3f\n", a / b, c / d}'
