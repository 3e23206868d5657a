#!/usr/bin/env bash
# Runs critest (cri-tools' CRI conformance suite) against a private runtime, as root:
#
#   hack/cri/critest.sh containerd [critest flags...]   # Debian's containerd 1.6: the anchor
#   hack/cri/critest.sh berth      [critest flags...]   # target/debug/berthd (or $BERTHD)
#
# e.g. hack/cri/critest.sh berth --ginkgo.focus='PodSandbox' --ginkgo.skip='Benchmark'
#
# It starts Debian's docker-registry on a free 127.0.0.1 port, builds and pushes local
# stand-ins of every test image under their original names (hack/cri/images.py) with
# hosts.toml mirrors for registry.k8s.io, gcr.io, k8s.gcr.io and docker.io, writes a CNI
# bridge network (bridge critest0, 10.99.47.0/24, plus portmap), starts the runtime with
# private root/state/socket inside a private mount namespace (a temp dir bound over /run),
# and runs critest in that same namespace (the mount propagation specs need it there).
# Prints `critest: N passed, M failed, K skipped` and the failing specs.
#
# Exit status: 0 when every failure is a known one (hack/cri/known-failures.txt: specs that
# fail for every runtime here); 1 otherwise; with CRI_STRICT=1, critest's own status.
#
# Everything it did to the host is undone on exit (trap): every process it started runs in
# this run's own cgroup (berth-critest.<random>, made by the run and removed at its end) and is
# stopped through that cgroup and pidfds (hack/lib/procs.py), never by a PID, name or namespace
# number read earlier, which the kernel may have handed to somebody else meanwhile; pods removed, the bridge deleted, the iptables rules/chains CNI added removed,
# net.ipv4.ip_forward restored, SysV shm segments created during the run removed (critest's
# HostIpc specs leave them), /var/lib/cni entries created during the run and new cgroups
# removed, the temp dir unmounted and deleted.
#
# Environment:
#   CRITEST, CRICTL      the binaries (default: on PATH, else /work/scratch/bin/…)
#   BERTHD               berthd binary for `berth` (default: target/debug/berthd)
#   BERTH_EXTRA_CONFIG   a TOML file appended to berthd's generated config
#   CRI_OUT              results dir (default: target/critest-<runtime>): junit.xml,
#                        critest.log, runtime.log, registry.log, summary.txt
#   CRI_IMAGE_CACHE      image layout cache (default: target/cri-images)
#   CRI_VERBOSE=1        show critest's output while it runs (it is always in critest.log)
#   CRI_KEEP_TMP=1       keep the temp dir (configs, runtime state) after the run
#   CRI_STRICT=1         exit with critest's status
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PROCS=$ROOT/hack/lib/procs.py
BRIDGE=critest0
NETNAME=critest
SUBNET=10.99.47.0/24

log() { printf 'critest.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

find_tool() { # NAME: $NAME from the environment, on PATH, or in /work/scratch/bin
  local var=${1^^} p
  p=${!var:-}
  if [ -z "$p" ]; then
    p=$(command -v "$1" 2>/dev/null) || p=/work/scratch/bin/$1
  fi
  [ -x "$p" ] || die "$1 not found (set $var)"
  printf '%s\n' "$p"
}

# ----------------------------------------------------------------------------------------------
# The inner part: runs in the private mount namespace (invoked by the outer part below).
# Stage 1, in the new mount namespace: moves itself into this run's cgroups, then enters a new
# cgroup namespace rooted there (stage 2), so the runtime's cgroups (/k8s.io/... and the like)
# are made inside this run's sub-tree and no other user's cgroups are touched.
if [ "${1:-}" = __inner ]; then
  T=$2
  n=$(cat "$T/cgroup-name")
  while read -r m _; do
    echo $$ >"$m/$n/cgroup.procs" || exit 3
  done <"$T/cgroup-mounts"
  shift
  exec unshare --cgroup -- bash "${BASH_SOURCE[0]}" __inner2 "$@"
fi
if [ "${1:-}" = __inner2 ]; then
  T=$2 RUNTIME=$3 OUT=$4
  shift 4
  CRITEST=$(find_tool critest) CRICTL=$(find_tool crictl)
  # -n: no /run/mount/utab on the host's /run.
  mount -n --make-rprivate / || exit 3
  # Each hierarchy mounted again from inside the cgroup namespace: rooted at this run's cgroup.
  while read -r m fstype opts; do
    umount -n -l "$m" && mount -n -t "$fstype" -o "$opts" "$fstype" "$m" || exit 3
  done <"$T/cgroup-mounts"
  # containerd 1.6 writes /run/containerd/{s,fifo,runc} whatever its config says.
  mount -n --bind "$T/run" /run || exit 3
  SOCK=$(cat "$T/sock")
  case $RUNTIME in
    containerd) containerd --config "$T/containerd.toml" >"$T/runtime.log" 2>&1 & ;;
    berth) "$(cat "$T/berthd")" --config "$T/berthd.toml" >"$T/runtime.log" 2>&1 & ;;
  esac
  rpid=$!
  echo "$rpid" >"$T/runtime.pid"
  cri() { timeout 120 "$CRICTL" --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" "$@"; }
  up=
  for _ in $(seq 1 300); do
    kill -0 "$rpid" 2>/dev/null || break
    if [ -S "$SOCK" ] && cri version >/dev/null 2>&1; then up=1; break; fi
    sleep 0.2
  done
  # The runtime is this shell's child: chosen by that and its PID, pinned by a pidfd.
  stop_runtime() { python3 "$PROCS" stop --ppid $$ --pid "$rpid" --grace 15 >/dev/null; }
  if [ -z "$up" ]; then
    log "$RUNTIME did not come up on $SOCK; the end of its log:"
    tail -n 30 "$T/runtime.log" >&2
    stop_runtime
    exit 3
  fi
  cri version 2>/dev/null | sed 's/^/  /' >&2
  log "running critest ($OUT/critest.log)"
  mkdir -p "$T/work"
  # critest is a Go test binary: it writes its temp dirs under TMPDIR and talks HTTP to pods.
  cd "$T/work" || exit 3
  unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
  if [ "${CRI_VERBOSE:-}" = 1 ]; then
    "$CRITEST" -runtime-endpoint "unix://$SOCK" -image-endpoint "unix://$SOCK" \
      --ginkgo.junit-report="$OUT/junit.xml" --ginkgo.no-color "$@" > >(tee "$OUT/critest.log") 2>&1 &
  else
    "$CRITEST" -runtime-endpoint "unix://$SOCK" -image-endpoint "unix://$SOCK" \
      --ginkgo.junit-report="$OUT/junit.xml" --ginkgo.no-color "$@" >"$OUT/critest.log" 2>&1 &
  fi
  cpid=$!
  echo "$cpid" >"$T/critest.pid"
  wait "$cpid"
  rc=$?
  cd / || :
  echo "$rc" >"$T/critest.rc"
  # Pods critest left behind (an interrupted or failed spec), then the runtime.
  cri rmp -af >/dev/null 2>&1
  stop_runtime
  wait "$rpid" 2>/dev/null
  exit "$rc"
fi

# ----------------------------------------------------------------------------------------------
# The outer part: host-side setup, the run, the summary and the clean-up.
RUNTIME=${1:-}
case $RUNTIME in
  containerd | berth) shift ;;
  *) die "usage: $0 containerd|berth [critest flags...]" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root (it runs real containers)"

need=(docker-registry skopeo gcc python3 iptables iproute2 util-linux)
[ "$RUNTIME" = containerd ] && need+=(containerd runc)
need+=(containernetworking-plugins)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install failed"
fi
CRITEST=$(find_tool critest) && CRICTL=$(find_tool crictl) || exit 2
export CRITEST CRICTL
if [ "$RUNTIME" = berth ]; then
  BERTHD=${BERTHD:-$ROOT/target/debug/berthd}
  [ -x "$BERTHD" ] || die "no berthd at $BERTHD (cargo build --bin berthd, or set BERTHD)"
  # The shim (containerd-shim-berth-v2) and berth-runc are found next to berthd, as installed.
  PATH=$(dirname "$BERTHD"):$PATH
  export PATH
fi

OUT=${CRI_OUT:-$ROOT/target/critest-$RUNTIME}
CACHE=${CRI_IMAGE_CACHE:-$ROOT/target/cri-images}
mkdir -p "$OUT" "$CACHE" || exit 2
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/junit.xml" "$OUT/critest.log" "$OUT/summary.txt"
T=$(mktemp -d /tmp/berth-critest.XXXXXX) || exit 2
B=$T/before
mkdir -p "$B" "$T/run" "$T/cni/net.d" "$T/cni/ipam" "$T/registry" "$T/hosts"
START=$(date +%s)
REG_PID= INNER_PID=

# --- what the host looks like before the run -------------------------------------------------
cat /proc/sys/net/ipv4/ip_forward >"$B/ip_forward"
# SysV shm segments by id; with an argument, only unattached ones of that size (critest's
# HostIpc specs make theirs with `ipcmk -M 1048576`), so that no other user's go.
shm_ids() { ipcs -m 2>/dev/null | awk -v sz="${1:-}" '$1 ~ /^0x/ && (sz == "" || ($5 == sz && $6 == 0)) {print $2}' | sort; }
shm_ids >"$B/shm"
TABLES=(filter nat mangle raw)
for x in iptables ip6tables; do
  for t in "${TABLES[@]}"; do $x-save -t "$t" >"$B/$x.$t" 2>/dev/null || :; done
done
nft_tables() { command -v nft >/dev/null && nft list tables 2>/dev/null | sort; }
nft_tables >"$B/nft-tables"
for d in /var/lib/cni /var/lib/cni/results /var/lib/cni/networks "/var/lib/cni/networks/$NETNAME"; do
  [ -e "$d" ] && echo "$d"
done >"$B/cni-dirs"
ls -1 /var/lib/cni/results 2>/dev/null | sort >"$B/cni-results"
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "bridge $BRIDGE exists (left by an earlier run?): deleting it"
  ip link del "$BRIDGE" || die "cannot delete $BRIDGE"
fi

# This run's cgroup in each hierarchy: every process the run started is in one of them or below
# (the registry, the inner part, the runtime, its shims and containers, critest).
run_roots() {
  local m n
  [ -f "$T/cgroup-mounts" ] || return 0
  n=$(cat "$T/cgroup-name" 2>/dev/null) || return 0
  while read -r m _; do [ -d "$m/$n" ] && echo "--cgroup=$m/$n"; done <"$T/cgroup-mounts"
}
# procs VERB [ARGS...]: hack/lib/procs.py over this run's cgroups.
procs() {
  local v=$1 roots
  shift
  roots=$(run_roots)
  [ -n "$roots" ] || return 1
  # shellcheck disable=SC2086 # one --cgroup=DIR word per hierarchy; DIR has no blanks
  python3 "$PROCS" "$v" "$@" $roots
}
# Starts a command inside this run's cgroups, in the background.
in_run_cgroup() {
  (
    n=$(cat "$T/cgroup-name")
    while read -r m _; do echo "$BASHPID" >"$m/$n/cgroup.procs" || exit 3; done <"$T/cgroup-mounts"
    exec "$@"
  ) &
}
# This run's cgroups, deepest first.
run_cgroups() {
  local m n
  [ -f "$T/cgroup-mounts" ] || return 0
  n=$(cat "$T/cgroup-name" 2>/dev/null) || return 0
  while read -r m _; do
    [ -d "$m/$n" ] && find "$m/$n" -type d
  done <"$T/cgroup-mounts" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}

cleanup() {
  local rc=$? pids d t i line chain
  trap - EXIT INT TERM HUP
  set +e
  # critest first (it would go on making pods), then the pods through the runtime if it is
  # still up, then every process left in this run's cgroups: the runtime, its shims, containers,
  # the registry.
  if [ -f "$T/critest.pid" ] && procs list --pid "$(cat "$T/critest.pid")" >/dev/null; then
    log "stopping critest"
    procs stop --pid "$(cat "$T/critest.pid")" --grace 10 >/dev/null
  fi
  if [ -f "$T/runtime.pid" ] && procs list --pid "$(cat "$T/runtime.pid")" >/dev/null &&
    [ -S "$(cat "$T/sock")" ]; then
    timeout 60 "$CRICTL" --runtime-endpoint "unix://$(cat "$T/sock")" rmp -af >/dev/null 2>&1
  fi
  pids=$(procs stop --grace 5)
  [ -n "$pids" ] && log "stopped what was left in this run's cgroups: $(echo $pids)"
  [ -n "$INNER_PID" ] && wait "$INNER_PID" 2>/dev/null
  [ -n "$REG_PID" ] && wait "$REG_PID" 2>/dev/null
  for i in 1 2 3 4 5; do
    run_cgroups | while read -r d; do rmdir "$d" 2>/dev/null; done
    [ -z "$(run_cgroups)" ] && break
    sleep 0.3
  done
  [ -n "$(run_cgroups)" ] && log "could not remove cgroups: $(run_cgroups | tr '\n' ' ')"
  # Anything mounted under the temp dir in this namespace (nothing, normally).
  awk -v t="$T" '$5 == t || index($5, t "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r d; do log "unmounting $d"; umount -n -l "$d"; done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  # iptables: the rules CNI added to chains that were there, then the chains it created, then
  # the (empty) nf_tables tables that iptables-nft created for them.
  for x in iptables ip6tables; do
    for t in "${TABLES[@]}"; do
      a=$T/$x-after.$t
      $x-save -t "$t" >"$a" 2>/dev/null || continue
      grep '^:CNI-' "$a" | cut -d' ' -f1 | cut -c2- | sort >"$a.chains"
      grep '^:CNI-' "$B/$x.$t" | cut -d' ' -f1 | cut -c2- | sort >"$a.chains-before"
      comm -13 "$a.chains-before" "$a.chains" >"$a.chains-new"
      grep '^-A ' "$a" | grep -F CNI | grep -vxF -f <(grep '^-A ' "$B/$x.$t") |
        while read -r line; do
          chain=${line#-A }
          chain=${chain%% *}
          grep -qxF "$chain" "$a.chains-new" && continue
          eval "$x -w -t $t -D ${line#-A }" || log "$x: cannot delete: $line"
        done
      while read -r chain; do $x -w -t "$t" -F "$chain"; done <"$a.chains-new"
      while read -r chain; do $x -w -t "$t" -X "$chain" || log "$x: cannot delete chain $chain"; done <"$a.chains-new"
    done
  done
  nft_tables | comm -13 "$B/nft-tables" - | while read -r _ fam name; do
    # only base chains with no rule in them
    if ! nft list table "$fam" "$name" | grep -Eqv '^[[:space:]]*(table .*|chain .*|type .*|\}|)$'; then
      nft delete table "$fam" "$name" || log "nft: cannot delete table $fam $name"
    else
      log "nft table $fam $name was created during the run and is not empty: left alone"
    fi
  done
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$(cat "$B/ip_forward")" ] ||
    echo "$(cat "$B/ip_forward")" >/proc/sys/net/ipv4/ip_forward
  shm_ids 1048576 | comm -13 "$B/shm" - | while read -r i; do ipcrm -m "$i" 2>/dev/null; done
  # /var/lib/cni: libcni's result cache and host-local's store, where the run created them.
  ls -1 /var/lib/cni/results 2>/dev/null | sort | comm -13 "$B/cni-results" - |
    while read -r d; do rm -rf "/var/lib/cni/results/$d"; done
  for d in "/var/lib/cni/networks/$NETNAME" /var/lib/cni/networks /var/lib/cni/results /var/lib/cni; do
    grep -qxF "$d" "$B/cni-dirs" && continue
    if [ "$d" = "/var/lib/cni/networks/$NETNAME" ]; then rm -rf "$d"; else rmdir "$d" 2>/dev/null; fi
  done
  for f in runtime.log registry.log containerd.toml berthd.toml; do
    [ -f "$T/$f" ] && cp "$T/$f" "$OUT/$f"
  done
  if [ "${CRI_KEEP_TMP:-}" = 1 ]; then
    log "kept $T"
  elif awk -v t="$T" 'index($5, t) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
    log "something is still mounted under $T: not deleting it"
  else
    rm -rf --one-file-system "$T"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- this run's cgroups ---------------------------------------------------------------------
# This run's cgroup sub-tree in every hierarchy: every process of the run lives there (so the
# clean-up finds exactly those), and it is the root of the runtime's cgroup namespace (so that
# clean-up touches no other user's cgroups, e.g. /k8s.io/...). Lines: mount point, type, super
# options.
echo "berth-critest.${T##*.}" >"$T/cgroup-name"
awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^cgroup2?$/) print $5, $(i+1), $(i+3); break }}' \
  /proc/self/mountinfo | grep -E '^/sys/fs/cgroup(/| )' >"$T/cgroup-mounts"
[ -s "$T/cgroup-mounts" ] || die "no cgroup hierarchy under /sys/fs/cgroup"
while read -r m _; do
  mkdir "$m/$(cat "$T/cgroup-name")" || die "cannot create a cgroup in $m"
  if [ -f "$m/cpuset.cpus" ]; then
    cat "$m/cpuset.cpus" >"$m/$(cat "$T/cgroup-name")/cpuset.cpus"
    cat "$m/cpuset.mems" >"$m/$(cat "$T/cgroup-name")/cpuset.mems"
  fi
done <"$T/cgroup-mounts"

# --- registry and images ---------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat >"$T/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $T/registry
  delete:
    enabled: true
http:
  addr: $REG
EOF
in_run_cgroup docker-registry serve "$T/registry.yml" >"$T/registry.log" 2>&1
REG_PID=$!
python3 - "$REG" <<'EOF' || { tail -n 20 "$T/registry.log" >&2; die "the registry did not come up"; }
import sys, time, urllib.request
for _ in range(150):
    try:
        urllib.request.urlopen("http://%s/v2/" % sys.argv[1], timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
EOF
log "registry on $REG"
python3 "$HERE/images.py" --registry "$REG" --cache "$CACHE" --hosts-dir "$T/hosts" ||
  die "building or pushing the images failed"

# --- CNI network -----------------------------------------------------------------------------
cat >"$T/cni/net.d/10-$NETNAME.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$NETNAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$T/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

# --- the runtime's configuration ---------------------------------------------------------------
case $RUNTIME in
  containerd)
    SOCK=$T/containerd.sock
    cat >"$T/containerd.toml" <<EOF
version = 2
root = "$T/root"
state = "$T/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$T/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$T/cni/net.d"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$T/hosts"
EOF
    ;;
  berth)
    SOCK=$T/berthd.sock
    echo "$BERTHD" >"$T/berthd"
    cat >"$T/berthd.toml" <<EOF
root = "$T/root"
state = "$T/state"

[grpc]
address = "$SOCK"

[registry]
config_path = "$T/hosts"

[cri]
sandbox_image = ""

[cri.cni]
conf_dir = "$T/cni/net.d"
bin_dir = "/usr/lib/cni"
EOF
    if [ -n "${BERTH_EXTRA_CONFIG:-}" ]; then
      cat "$BERTH_EXTRA_CONFIG" >>"$T/berthd.toml" || die "cannot read $BERTH_EXTRA_CONFIG"
    fi
    ;;
esac
echo "$SOCK" >"$T/sock"

# --- the run -----------------------------------------------------------------------------------
log "starting $RUNTIME (private mount namespace, state in $T)"
unshare --mount --propagation private -- bash "$HERE/critest.sh" __inner "$T" "$RUNTIME" "$OUT" "$@" &
INNER_PID=$!
wait "$INNER_PID"
CRITEST_RC=$?
INNER_PID=
if [ ! -f "$OUT/junit.xml" ]; then
  log "critest wrote no report (exit $CRITEST_RC); the end of its log:"
  tail -n 30 "$OUT/critest.log" >&2 2>/dev/null
  exit 2
fi

# --- summary -----------------------------------------------------------------------------------
python3 - "$OUT/junit.xml" "$HERE/known-failures.txt" "$OUT/summary.txt" "$(($(date +%s) - START))" <<'EOF'
import sys, xml.etree.ElementTree as ET
junit, knownf, summary, secs = sys.argv[1:5]
known = set()
try:
    with open(knownf) as f:
        known = {l.strip() for l in f if l.strip() and not l.startswith("#")}
except OSError:
    pass
passed, failed, skipped = 0, [], 0
for tc in ET.parse(junit).getroot().iter("testcase"):
    name = tc.get("name", "")
    if name.startswith("[It] "):
        name = name[5:]
    status = tc.get("status")
    if status is None:
        status = ("failed" if tc.find("failure") is not None or tc.find("error") is not None
                  else "skipped" if tc.find("skipped") is not None else "passed")
    suite_node = name.startswith("[") and name.split("]")[0] in (
        "[BeforeSuite", "[AfterSuite", "[SynchronizedBeforeSuite", "[SynchronizedAfterSuite",
        "[ReportAfterSuite", "[ReportBeforeSuite")
    if status == "passed":
        passed += 0 if suite_node else 1
    elif status in ("skipped", "pending"):
        skipped += 0 if suite_node else 1
    else:
        failed.append(name)
lines = ["critest: %d passed, %d failed, %d skipped" % (passed, len(failed), skipped)]
unknown = [n for n in failed if n not in known]
for n in failed:
    lines.append("  FAIL%s %s" % (" (known)" if n in known else "", n))
lines.append("critest: %s, %s s" % ("no unexpected failures" if not unknown else
                                     "%d unexpected failures" % len(unknown), secs))
text = "\n".join(lines) + "\n"
open(summary, "w").write(text)
sys.stdout.write(text)
sys.exit(1 if unknown else 0)
EOF
SUMMARY_RC=$?
log "results in $OUT"
if [ "${CRI_STRICT:-}" = 1 ]; then exit "$CRITEST_RC"; fi
exit "$SUMMARY_RC"
