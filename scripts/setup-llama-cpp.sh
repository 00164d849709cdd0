#!/usr/bin/env bash
# Builds llama-cpp-python (llama.cpp's Python bindings, from PyPI) into a virtualenv for
# the side-by-side decode comparison (scripts/chat-vs-llama-cpp.py).
#
# GGML_NATIVE=OFF with the instruction sets named: the native build probes AMX on this kind
# of VM and crashes; AVX-512 (+VNNI, BF16) is what the 2-core CI/dev VM has. On another
# machine, adjust the -DGGML_* flags to its CPU. ~15 min on 2 cores.
#
# Usage: scripts/setup-llama-cpp.sh [VENV_DIR]   (default: ~/.cache/pixellm/llama-venv)
set -euo pipefail
venv="${1:-$HOME/.cache/pixellm/llama-venv}"
version="0.3.16"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DLLAMA_CURL=OFF" \
    "$venv/bin/pip" install --no-cache-dir "llama-cpp-python==$version"
echo "llama-cpp-python $version in $venv"
