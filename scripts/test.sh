#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need,
# then runs format check, lint, type check and every test.
#  - Deno (pinned) and npm dependencies: scripts/deno.sh installs them.
#  - The multi-region testbed tests need wireguard-go, wg and nft (Debian
#    packages); as root they are installed here, otherwise those tests skip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  bash scripts/testbed/install.sh || echo "test: testbed tools could not be installed; the testbed tests will skip" >&2
fi
exec scripts/deno.sh task test "$@"
