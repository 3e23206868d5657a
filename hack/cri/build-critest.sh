#!/usr/bin/env bash
# Builds critest and crictl (cri-tools v1.26.1) offline from a local cri-tools git repository,
# with the repository's own vendor/ directory and Debian's Go 1.19; nothing is fetched from the
# network and nothing of cri-tools is kept in this project. Cached: a second call with the same
# tag reuses the binaries.
#
#   hack/cri/build-critest.sh            # prints the directory holding critest and crictl
#
# Environment:
#   CRI_TOOLS_GIT   the cri-tools git repository (default: the workplace's mirror,
#                   /work/.mirror/kubernetes-sigs+cri-tools/repo)
#   CRI_TOOLS_TAG   the tag (default v1.26.1, the newest that builds with Go 1.19)
#   CRI_TOOLS_OUT   build and cache dir (default: target/cri-tools)
#
# Exit status: 0 with the bin dir on stdout; 3 when no cri-tools repository is available
# (callers skip then); 2 on a build failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
GIT=${CRI_TOOLS_GIT:-/work/.mirror/kubernetes-sigs+cri-tools/repo}
TAG=${CRI_TOOLS_TAG:-v1.26.1}
OUT=${CRI_TOOLS_OUT:-$ROOT/target/cri-tools}
BIN=$OUT/bin

log() { printf 'build-critest.sh: %s\n' "$*" >&2; }

if [ -x "$BIN/critest" ] && [ -x "$BIN/crictl" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$TAG" ]; then
  echo "$BIN"
  exit 0
fi
if ! git --git-dir="$GIT" rev-parse --verify -q "refs/tags/$TAG" >/dev/null 2>&1 &&
  ! git -C "$GIT" rev-parse --verify -q "refs/tags/$TAG" >/dev/null 2>&1; then
  log "no cri-tools repository with tag $TAG at $GIT (set CRI_TOOLS_GIT)"
  exit 3
fi
if ! command -v go >/dev/null; then
  log "installing golang-go"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null || {
    log "apt-get install golang-go failed"
    exit 2
  }
fi

SRC=$OUT/src-$TAG
rm -rf "$SRC" "$OUT/stamp"
mkdir -p "$SRC" "$BIN"
log "exporting $TAG from $GIT"
if git --git-dir="$GIT" rev-parse -q --git-dir >/dev/null 2>&1 && [ -d "$GIT/objects" ]; then
  git --git-dir="$GIT" archive "$TAG" | tar -x -C "$SRC"
else
  git -C "$GIT" archive "$TAG" | tar -x -C "$SRC"
fi

export GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0
export GOCACHE=$OUT/gocache GOPATH=$OUT/gopath
ldflags="-X github.com/kubernetes-sigs/cri-tools/pkg/version.Version=${TAG#v}"
log "building crictl"
(cd "$SRC" && go build -trimpath -ldflags "$ldflags" -o "$BIN/crictl" ./cmd/crictl) || exit 2
log "building critest (a few minutes on 2 cores)"
(cd "$SRC" && go test -c -trimpath -ldflags "$ldflags" -o "$BIN/critest" ./cmd/critest) || exit 2
rm -rf "$SRC"
echo "$TAG" >"$OUT/stamp"
echo "$BIN"
