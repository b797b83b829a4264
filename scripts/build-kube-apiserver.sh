#!/usr/bin/env bash
# Build kube-apiserver (and kubectl, when none is on PATH) from the Go module proxy and
# cache them outside the repository.
#
# k8s.io/kubernetes cannot be `go install`ed directly: its go.mod replaces every staging
# module (k8s.io/api, k8s.io/apiserver, ...) with a local path. A scratch module requires
# k8s.io/kubernetes and replaces each staging module with its published v0.Y.Z instead.
# The binaries land in $KUBE_CACHE (default ~/.cache/failover-controller); a second run
# with them present does nothing. The tests find kubectl on PATH, else in the cache.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
CACHE="${KUBE_CACHE:-$HOME/.cache/failover-controller}"
BIN="$CACHE/kube-apiserver-$KUBE_VERSION"

KUBECTL="$CACHE/kubectl-$KUBE_VERSION"
declare -A WANT=()
if [[ -x "$BIN" ]]; then
  echo "kube-apiserver $KUBE_VERSION: cached at $BIN"
else
  WANT[kube-apiserver]="$BIN"
fi
if command -v kubectl >/dev/null; then
  :
elif [[ -x "$KUBECTL" ]]; then
  echo "kubectl $KUBE_VERSION: cached at $KUBECTL"
else
  WANT[kubectl]="$KUBECTL"
fi
((${#WANT[@]})) || exit 0
command -v go >/dev/null || { echo "go (>= 1.26, as k8s.io/kubernetes $KUBE_VERSION requires) is needed to build kube-apiserver: install it from https://go.dev/dl/" >&2; exit 1; }

mkdir -p "$CACHE"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
echo "${!WANT[*]} $KUBE_VERSION: building (staging modules at $STAGING_VERSION; takes minutes once)"
go mod init kubebuild >/dev/null 2>&1
GOMOD="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
# Every `k8s.io/<name> => ./staging/...` replace in upstream's go.mod names a staging module.
mapfile -t STAGING < <(grep -oE 'k8s\.io/[A-Za-z0-9._-]+ => \./staging' "$GOMOD" | awk '{print $1}' | sort -u)
{
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  for mod in "${STAGING[@]}"; do echo "replace $mod => $mod $STAGING_VERSION"; done
} >> go.mod
cat > main.go <<'GO'
package main

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubectl/pkg/cmd"
)

func main() {}
GO
go mod tidy >/dev/null
# stamp the version (as upstream's hack/lib/version.sh does), or /version says v0.0.0-master
MINOR="${KUBE_VERSION#v1.}"; MINOR="${MINOR%%.*}"
VPKG=k8s.io/component-base/version
LDFLAGS="-s -w -X $VPKG.gitVersion=$KUBE_VERSION -X $VPKG.gitMajor=1 -X $VPKG.gitMinor=$MINOR"
LDFLAGS+=" -X $VPKG.gitTreeState=clean"
for cmd in "${!WANT[@]}"; do
  out="${WANT[$cmd]}"
  CGO_ENABLED=0 go build -trimpath -ldflags "$LDFLAGS" -o "$out.tmp" "k8s.io/kubernetes/cmd/$cmd"
  mv "$out.tmp" "$out"
  echo "$cmd $KUBE_VERSION: built $out"
done
