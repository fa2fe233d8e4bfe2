#!/usr/bin/env bash
# Builds and runs main.go against AMQP_URL with Debian's Go toolchain and amqp091-go
# (GOPATH mode; .ci/run installs golang-go and golang-github-rabbitmq-amqp091-go-dev).
# Last line: "go: N passed, N failed".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/go-interop.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="${GOCACHE:-$HOME/.cache/go-build}"
go build -o "$work/interop" "$here/main.go"
exec "$work/interop"
