#!/usr/bin/env bash
# Build govmomi's vcsim (tests/vcsim/main.go) with Debian's Go and govmomi sources, in
# GOPATH mode: no modules, no network. Usage: build.sh <output-binary>
# Needs: apt-get install golang-go golang-github-vmware-govmomi-dev
set -euo pipefail
out="${1:?usage: build.sh <output-binary>}"
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v go >/dev/null; then
  echo "vcsim: 'go' not found; install golang-go and golang-github-vmware-govmomi-dev" >&2
  exit 2
fi
if [ ! -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]; then
  echo "vcsim: govmomi sources not found; install golang-github-vmware-govmomi-dev" >&2
  exit 2
fi
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
cache="$(dirname "$out")/go-build-cache"
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$cache" GOPROXY=off \
  go build -o "$out.tmp" "$here/main.go"
mv "$out.tmp" "$out"
