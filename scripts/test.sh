#!/usr/bin/env bash
# The test command: fail on stale generated stubs, then run the whole suite (the real
# SmolLM2 tests included). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
scripts/gen_proto.sh "$fresh"
if ! diff -r "$fresh" proto/gen >/dev/null; then
    echo "proto/gen is stale: run scripts/gen_proto.sh and commit the result" >&2
    diff -r "$fresh" proto/gen >&2 || true
    exit 1
fi
exec .venv/bin/python -m pytest "$@"
