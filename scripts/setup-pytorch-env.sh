#!/usr/bin/env bash
# Creates (or checks) the Python environment that scripts/compare-pytorch.py,
# scripts/smollm2-pytorch.py and scripts/bench-vs-pytorch.sh use: CPU PyTorch,
# transformers (+ accelerate, for GGUF loading), gguf, numpy, pillow, safetensors, sentencepiece.
#
#   scripts/setup-pytorch-env.sh            # -> $PIXELLM_PYENV, default: ../pyenv next to the repo
#   PIXELLM_PYENV=/opt/pt scripts/setup-pytorch-env.sh
#
# Idempotent: an environment that already imports the pinned versions is left alone.
# PyTorch comes from the CPU wheel index (download.pytorch.org/whl/cpu) when that host is
# reachable, else from PyPI (the CUDA build, ~5 GB with its nvidia-* wheels; it runs on the
# CPU all the same). Prints the versions at the end and writes them to $env/versions.txt.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env="${PIXELLM_PYENV:-$(dirname "$repo")/pyenv}"
python="${PYTHON:-python3}"

# The versions the numbers in docs/performance.md were measured with.
torch_version="2.15.0"
packages=(
  "transformers==5.24.0"
  "gguf==0.19.0"
  "numpy==2.4.6"
  "pillow==13.0.0"
  "safetensors==0.8.0"
  "sentencepiece==0.2.3"
  "accelerate==1.15.0" # transformers needs it to load GGUF files
)

check() {
  "$env/bin/python" - "$torch_version" "${packages[@]}" <<'PY'
import importlib.metadata as md
import sys

want = {"torch": sys.argv[1]}
want.update(p.split("==") for p in sys.argv[2:])
for name, version in want.items():
    have = md.version(name)
    if have.split("+")[0] != version:
        sys.exit(f"{name} {have} != {version}")
import gguf, numpy, PIL, safetensors, torch, transformers  # noqa: E401,F401
PY
}

if [ -x "$env/bin/python" ] && check 2>/dev/null; then
  echo "Python environment at $env is up to date." >&2
else
  if [ ! -x "$env/bin/python" ]; then
    echo "creating $env…" >&2
    "$python" -m venv "$env"
  fi
  pip=("$env/bin/python" -m pip install --disable-pip-version-check -q)
  have_torch="$("$env/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' \
    2>/dev/null || true)"
  if [ "${have_torch%%+*}" != "$torch_version" ]; then
    if "${pip[@]}" --timeout 20 --retries 0 \
      --index-url https://download.pytorch.org/whl/cpu "torch==$torch_version" 2>/dev/null; then
      echo "installed torch $torch_version (CPU wheel)" >&2
    else
      echo "download.pytorch.org unreachable: installing torch $torch_version from PyPI" >&2
      "${pip[@]}" "torch==$torch_version"
    fi
  fi
  "${pip[@]}" "${packages[@]}"
  check
fi

"$env/bin/python" - "$env/versions.txt" <<'PY'
import importlib.metadata as md
import platform
import sys

names = ["torch", "transformers", "tokenizers", "accelerate", "gguf", "numpy", "pillow",
         "safetensors", "sentencepiece"]
lines = [f"python {platform.python_version()}"] + [f"{n} {md.version(n)}" for n in names]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "python: $env/bin/python" >&2
