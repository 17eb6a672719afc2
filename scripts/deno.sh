#!/usr/bin/env bash
# Runs the project's pinned Deno, installing it from npm on first use.
# Deno is installed under .tools/deno (its own package.json), never in the
# project root: Deno reads the root package.json and would try to resolve the
# `deno` package's optional platform builds.
set -euo pipefail
DENO_VERSION=2.9.6
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools/deno"
bin="$tools/node_modules/.bin/deno"
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "^deno $DENO_VERSION "; then
  echo "twinmesh: installing deno $DENO_VERSION from npm into .tools/deno" >&2
  mkdir -p "$tools"
  printf '{"private":true,"dependencies":{"deno":"%s"}}\n' "$DENO_VERSION" >"$tools/package.json"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error >&2)
fi
cd "$root"
exec "$bin" "$@"
