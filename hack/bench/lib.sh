# Shared helpers for the side-by-side benchmarks: start berthd and a private containerd (in its
# own mount namespace, /run replaced by a temp dir, so the host's /run/containerd is never
# touched), time commands, print medians and ratios. Source it; it sets BENCH_TMP and traps EXIT.
# Processes are signalled only through hack/lib/procs.py, chosen as children of this shell (or by
# a path in BENCH_TMP) and pinned by a pidfd: never a bare PID that may have been reused.

set -euo pipefail
# The anchors (Debian packages), installed when one is missing: containerd (with ctr and the Go
# shim), runc, crun.
bench_missing=()
for p in containerd runc crun; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || bench_missing+=("$p")
done
if [ "${#bench_missing[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${bench_missing[@]}" >&2
fi
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_TMP="$(mktemp -d /tmp/berth-bench.XXXXXX)"
BENCH_PIDS=()
PROCS="$ROOT_DIR/hack/lib/procs.py"

# procs VERB [ARGS...]: hack/lib/procs.py (list, signal SIG, stop) over this shell's children.
procs() { python3 "$PROCS" "$@" --ppid "$$"; }

bench_cleanup() {
  local args=() pid
  for pid in "${BENCH_PIDS[@]:-}"; do [ -n "$pid" ] && args+=(--pid "$pid"); done
  if [ "${#args[@]}" -gt 0 ]; then procs stop "${args[@]}" --grace 0.5 >/dev/null || true; fi
  umount "$BENCH_TMP/state" 2>/dev/null || true
  rm -rf "$BENCH_TMP"
}
trap bench_cleanup EXIT

wait_sock() {
  for _ in $(seq 1 200); do
    [ -S "$1" ] && return 0
    sleep 0.05
  done
  echo "socket $1 never appeared" >&2
  return 1
}

# Runtime state (bundles, runtime state, FIFOs) lives under STATE_TMP: a tmpfs, as /run is on a
# real host, when the bench runs in a mount namespace of its own (state_on_tmpfs), else BENCH_TMP.
STATE_TMP="$BENCH_TMP"
state_on_tmpfs() {
  mkdir -p "$BENCH_TMP/state"
  mount -t tmpfs -o size=2g,mode=0755 tmpfs "$BENCH_TMP/state"
  STATE_TMP="$BENCH_TMP/state"
}

# start_berthd [suffix]: release build, temp root; sets BERTH_SOCK and BERTH_PID.
start_berthd() {
  local sfx="${1:-}"
  (cd "$ROOT_DIR" && cargo build --release -q --bin berthd --bin berthctl)
  BERTH_SOCK="$BENCH_TMP/berthd$sfx.sock"
  "$ROOT_DIR/target/release/berthd" --root "$BENCH_TMP/berth-root$sfx" --state "$BENCH_TMP/berth-state$sfx" \
    --address "$BERTH_SOCK" --log-level warn 2>"$BENCH_TMP/berthd$sfx.log" &
  BERTH_PID=$!
  BENCH_PIDS+=("$BERTH_PID")
  wait_sock "$BERTH_SOCK"
}

# stop_pid PID: SIGTERM to this shell's child PID, up to 5 s for it to exit, then SIGKILL.
stop_pid() { procs stop --pid "$1" >/dev/null || true; }

# start_containerd [suffix]: Debian's containerd with its own root/state/sockets; sets CTRD_SOCK
# and CTRD_PID.
start_containerd() {
  local sfx="${1:-}"
  CTRD_SOCK="$BENCH_TMP/containerd$sfx.sock"
  mkdir -p "$BENCH_TMP/run"
  cat >"$BENCH_TMP/containerd$sfx.toml" <<TOML
version = 2
root = "$BENCH_TMP/containerd-root$sfx"
state = "$STATE_TMP/containerd-state$sfx"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
TOML
  unshare --mount --propagation private sh -c \
    "mount --bind '$BENCH_TMP/run' /run && exec containerd --config '$BENCH_TMP/containerd$sfx.toml'" \
    2>"$BENCH_TMP/containerd$sfx.log" &
  CTRD_PID=$!
  BENCH_PIDS+=("$CTRD_PID")
  wait_sock "$CTRD_SOCK"
}

# now_ns: monotonic-ish nanoseconds.
now_ns() { date +%s%N; }

# median of the arguments (numbers).
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# shim_pids NAME SOCK: processes of binary NAME whose `-address` is the daemon socket SOCK.
shim_pids() {
  local name="$1" sock="$2" pid
  for pid in $(pgrep -f "$name" || true); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-address $sock "; then
      echo "$pid"
    fi
  done
}

# smaps_field FIELD PID...: kB values of a /proc/<pid>/smaps_rollup field, one per line.
smaps_field() {
  local f="$1" pid; shift
  for pid in "$@"; do awk -v f="$f:" '$1 == f {print $2}' "/proc/$pid/smaps_rollup"; done
}

# uss PID...: unique set size (Private_Clean + Private_Dirty) in kB, one per line.
uss() {
  local pid
  for pid in "$@"; do
    awk '$1 == "Private_Clean:" || $1 == "Private_Dirty:" {s += $2} END {print s}' "/proc/$pid/smaps_rollup"
  done
}
