#!/usr/bin/env bash
# Installs the Helm CLI that tests/tests/deploy_files.rs runs (`helm lint`, `helm template`)
# and prints its path:   export LAG_HELM="$(bash deploy/helm/install-helm.sh)"
#
# Built with `go install` from the Go module proxy (GitHub release downloads are not
# reachable from our machines), cached in $LAG_TOOLS_DIR (/var/cache/lag-tools), so only the
# first run on a machine pays: about 2-3 minutes on 2 cores (module download included), then
# nothing. Needs Go >= 1.24 on PATH (the machines have it in /usr/local/go/bin).
set -euo pipefail

HELM_VERSION=v3.22.0
DIR="${LAG_TOOLS_DIR:-/var/cache/lag-tools}/helm-$HELM_VERSION"
BIN="$DIR/helm"

# `go install` leaves the version's patch out of `helm version` (no release ldflags).
if [ -x "$BIN" ] && "$BIN" version --short 2>/dev/null | grep -q "^${HELM_VERSION%.*}"; then
  echo "$BIN"
  exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "install-helm: go is not on PATH" >&2; exit 1; }
mkdir -p "$DIR"
start=$SECONDS
echo "[install-helm] go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION into $DIR" >&2
GOBIN="$DIR" nice -n 19 go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
echo "[install-helm] done in $(( SECONDS - start ))s" >&2
echo "$BIN"
