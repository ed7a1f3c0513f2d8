#!/usr/bin/env bash
# Regenerate the Python stubs of proto/tandem/v1/*.proto into proto/gen (committed).
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default proto/gen; CI writes elsewhere and diffs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/proto/gen}
python=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out"
cd "$root/proto"
"$python" -m grpc_tools.protoc -I . \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    tandem/v1/*.proto
# Generated modules import each other as `tandem.v1.*`; mark the package folder.
touch "$out/tandem/v1/__init__.py"
