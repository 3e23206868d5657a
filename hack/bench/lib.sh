# Shared helpers for the side-by-side benchmarks: start berthd and a private containerd (in its
# own mount namespace, /run replaced by a temp dir, so the host's /run/containerd is never
# touched), time commands, print medians and ratios. Source it; it sets BENCH_TMP and traps EXIT.

set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_TMP="$(mktemp -d /tmp/berth-bench.XXXXXX)"
BENCH_PIDS=()

bench_cleanup() {
  for pid in "${BENCH_PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${BENCH_PIDS[@]:-}"; do
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
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

# start_berthd: release build, temp root; sets BERTH_SOCK.
start_berthd() {
  (cd "$ROOT_DIR" && cargo build --release -q --bin berthd --bin berthctl)
  BERTH_SOCK="$BENCH_TMP/berthd.sock"
  "$ROOT_DIR/target/release/berthd" --root "$BENCH_TMP/berth-root" --state "$BENCH_TMP/berth-state" \
    --address "$BERTH_SOCK" --log-level warn 2>"$BENCH_TMP/berthd.log" &
  BENCH_PIDS+=("$!")
  wait_sock "$BERTH_SOCK"
}

# start_containerd: Debian's containerd with its own root/state/sockets; sets CTRD_SOCK.
start_containerd() {
  CTRD_SOCK="$BENCH_TMP/containerd.sock"
  mkdir -p "$BENCH_TMP/run"
  cat >"$BENCH_TMP/containerd.toml" <<TOML
version = 2
root = "$BENCH_TMP/containerd-root"
state = "$BENCH_TMP/containerd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
TOML
  unshare --mount --propagation private sh -c \
    "mount --bind '$BENCH_TMP/run' /run && exec containerd --config '$BENCH_TMP/containerd.toml'" \
    2>"$BENCH_TMP/containerd.log" &
  BENCH_PIDS+=("$!")
  wait_sock "$CTRD_SOCK"
}

# now_ns: monotonic-ish nanoseconds.
now_ns() { date +%s%N; }

# median of the arguments (numbers).
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
