#!/usr/bin/env bash
# `pixellm bench` next to the same stages in PyTorch (scripts/compare-pytorch.py), on the CPU.
#
#   scripts/bench-vs-pytorch.sh [OPTIONS] [SHAPE...]        # shapes: tiny mid 7b 13b (default: tiny mid)
#
# Options (passed to both sides):
#   --prompt-tokens N (300)  --new-tokens N (32)  --targets N (2)  --iters N (3)
#   --out DIR    keep the JSON reports in DIR (default: a new directory under /tmp)
#   --reuse DIR  run nothing: print the tables of DIR/pixellm-SHAPE.json and
#                DIR/pytorch-SHAPE.json from an earlier run
#
# Environment:
#   PIXELLM_BIN     the pixellm binary (default: target/release/pixellm)
#   PIXELLM_PYENV   the Python environment of scripts/setup-pytorch-env.sh
#                   (default: ../pyenv next to the repository)
#
# Prints the machine, then one table per shape: stage | pixellm median ms | PyTorch median ms
# | ratio (pixellm / PyTorch; < 1 means pixellm is faster), and decode tokens/s of both.
# Both runs use every core; run it on an otherwise idle machine (the tables warn when the
# PyTorch run saw other processes using the CPU).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${PIXELLM_BIN:-$repo/target/release/pixellm}"
pyenv="${PIXELLM_PYENV:-$(dirname "$repo")/pyenv}"
py="$pyenv/bin/python"

opts=()
out=""
reuse=""
shapes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prompt-tokens | --new-tokens | --targets | --iters)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      opts+=("$1" "$2")
      shift 2
      ;;
    --out)
      out="$2"
      shift 2
      ;;
    --reuse)
      reuse="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    tiny | mid | 7b | 13b)
      shapes+=("$1")
      shift
      ;;
    *)
      echo "error: unknown argument '$1' (shapes: tiny mid 7b 13b; --help)" >&2
      exit 2
      ;;
  esac
done
[ ${#shapes[@]} -gt 0 ] || shapes=(tiny mid)

if [ -n "$reuse" ]; then
  out="$reuse"
else
  if [ ! -x "$bin" ]; then
    echo "error: no pixellm binary at $bin" >&2
    echo "build it first:  cargo build --release -p pixellm-cli   (or set PIXELLM_BIN)" >&2
    exit 1
  fi
  if [ ! -x "$py" ]; then
    echo "error: no Python environment at $pyenv" >&2
    echo "create it first:  scripts/setup-pytorch-env.sh   (or set PIXELLM_PYENV)" >&2
    exit 1
  fi
  out="${out:-$(mktemp -d /tmp/pixellm-vs-pytorch.XXXXXX)}"
  mkdir -p "$out"
  for shape in "${shapes[@]}"; do
    echo "== $shape: pixellm ==" >&2
    "$bin" bench --shape "$shape" --backend cpu ${opts[@]+"${opts[@]}"} \
      --json "$out/pixellm-$shape.json" >"$out/pixellm-$shape.txt"
    echo "== $shape: PyTorch ==" >&2
    "$py" "$repo/scripts/compare-pytorch.py" --shape "$shape" ${opts[@]+"${opts[@]}"} \
      --json "$out/pytorch-$shape.json" >"$out/pytorch-$shape.txt"
  done
  echo "reports: $out" >&2
fi

machine_cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)"
machine_ram="$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
table_py="$py"
[ -x "$table_py" ] || table_py=python3
"$table_py" - "$out" "${machine_cpu:-unknown CPU}" "$(nproc)" "${machine_ram:-? GiB}" \
  "${shapes[@]}" <<'PY'
import json
import sys
from pathlib import Path

out, cpu, cores, ram, *shapes = sys.argv[1:]
print(f"machine: {cpu}, {cores} cores, {ram} RAM")
status = 0
for shape in shapes:
    files = [Path(out) / f"{side}-{shape}.json" for side in ("pixellm", "pytorch")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"\n{shape}: missing {', '.join(missing)}")
        status = 1
        continue
    ours, theirs = (json.loads(f.read_text()) for f in files)
    print(
        f"\nshape {shape}: prompt {ours['prompt_tokens']} + 256 image tokens, "
        f"{ours['new_tokens']} new tokens, {ours['targets']} targets, "
        f"{ours['iters']} iterations, {ours.get('dtype', '?')}"
    )
    print(
        f"pixellm: {ours.get('backend', 'cpu')} ({ours.get('device', '?')}) | "
        f"PyTorch {theirs['torch']}, {theirs['threads']} threads, attention "
        f"{theirs.get('attn_implementation', '?')}"
    )
    for key in ("prompt_tokens", "new_tokens", "targets", "iters"):
        if ours.get(key) != theirs.get(key):
            print(f"warning: {key} differs: pixellm {ours.get(key)}, PyTorch {theirs.get(key)}")
    pt = {s["name"]: s for s in theirs["stages"]}
    print(f"{'stage':<20} {'pixellm ms':>12} {'PyTorch ms':>12} {'ratio':>8}")
    for s in ours["stages"]:
        a = s["median_ms"]
        b = pt.get(s["name"], {}).get("median_ms")
        if b is None:
            print(f"{s['name']:<20} {a:>12.2f} {'-':>12} {'-':>8}")
        else:
            ratio = f"{a / b:.2f}" if b > 0 else "-"
            print(f"{s['name']:<20} {a:>12.2f} {b:>12.2f} {ratio:>8}")
    a, b = ours["decode_tokens_per_s"], theirs["decode_tokens_per_s"]
    print(
        f"{'decode tokens/s':<20} {a:>12.2f} {b:>12.2f} {a / b if b else 0:>8.2f}"
        "   (here higher is better)"
    )
    others = theirs.get("other_processes_cpu_share")
    if others is not None and others > 0.05:
        print(f"warning: other processes used {others:.0%} of the CPU during the PyTorch run")
sys.exit(status)
PY
