#!/usr/bin/env bash
# `pixellm bench` next to the same stages in PyTorch (scripts/compare-pytorch.py), on the CPU.
#
#   scripts/bench-vs-pytorch.sh [OPTIONS] [SHAPE...]        # shapes: tiny mid 7b 13b (default: tiny mid)
#
# Options (passed to both sides):
#   --prompt-tokens N (300)  --new-tokens N (32)  --targets N (2)  --iters N (3)
#   --rounds N   run both sides N times, alternating which goes first, and report the
#                median of each side's per-round medians and the range of the per-round
#                ratios (default 1; use 2–3 on a shared VM, where the machine's speed
#                drifts by 10–30 % within minutes)
#   --blas LIB   pixellm's CPU matrix products in this CBLAS library (pixellm --blas; e.g.
#                "$(scripts/fetch-mkl.sh)", the MKL that PyTorch's wheel also uses);
#                default: $PIXELLM_BLAS if set, else the built-in kernels
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
# | ratio (pixellm / PyTorch; < 1 means pixellm is faster) | per-round ratio range, and
# decode tokens/s of both.
# Both runs use every core; run it on an otherwise idle machine (the tables warn when the
# PyTorch run saw other processes using the CPU).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${PIXELLM_BIN:-$repo/target/release/pixellm}"
pyenv="${PIXELLM_PYENV:-$(dirname "$repo")/pyenv}"
py="$pyenv/bin/python"

opts=()
rounds=1
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
    --rounds)
      [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || {
        echo "error: --rounds needs a positive integer" >&2
        exit 2
      }
      rounds="$2"
      shift 2
      ;;
    --blas)
      [ $# -ge 2 ] || { echo "error: --blas needs a library" >&2; exit 2; }
      export PIXELLM_BLAS="$2"
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
      sed -n '2,23s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
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
  run_pixellm() { # shape round
    echo "== $1: pixellm (round $2/$rounds) ==" >&2
    "$bin" bench --shape "$1" --backend cpu ${opts[@]+"${opts[@]}"} \
      --json "$out/pixellm-$1-r$2.json" >"$out/pixellm-$1-r$2.txt"
  }
  run_pytorch() { # shape round
    echo "== $1: PyTorch (round $2/$rounds) ==" >&2
    "$py" "$repo/scripts/compare-pytorch.py" --shape "$1" ${opts[@]+"${opts[@]}"} \
      --json "$out/pytorch-$1-r$2.json" >"$out/pytorch-$1-r$2.txt"
  }
  for shape in "${shapes[@]}"; do
    for round in $(seq 1 "$rounds"); do
      # Alternate who goes first, so that a drift of the machine's speed does not
      # always land on the same side.
      if [ $((round % 2)) -eq 1 ]; then
        run_pixellm "$shape" "$round"
        run_pytorch "$shape" "$round"
      else
        run_pytorch "$shape" "$round"
        run_pixellm "$shape" "$round"
      fi
    done
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


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def reports(side, shape):
    """Per-round reports (`SIDE-SHAPE-rN.json`), or the single one of older runs."""
    files = sorted(Path(out).glob(f"{side}-{shape}-r*.json"))
    files = files or [f for f in [Path(out) / f"{side}-{shape}.json"] if f.is_file()]
    return [json.loads(f.read_text()) for f in files]


for shape in shapes:
    ours_all, theirs_all = reports("pixellm", shape), reports("pytorch", shape)
    if not ours_all or not theirs_all or len(ours_all) != len(theirs_all):
        print(f"\n{shape}: missing reports in {out} (pixellm {len(ours_all)}, PyTorch {len(theirs_all)})")
        status = 1
        continue
    ours, theirs = ours_all[0], theirs_all[0]
    rounds = len(ours_all)
    print(
        f"\nshape {shape}: prompt {ours['prompt_tokens']} + 256 image tokens, "
        f"{ours['new_tokens']} new tokens, {ours['targets']} targets, "
        f"{ours['iters']} iterations" + (f" x {rounds} alternating rounds" if rounds > 1 else "")
        + f", {ours.get('dtype', '?')}"
    )
    print(
        f"pixellm: {ours.get('backend', 'cpu')} ({ours.get('device', '?')}) | "
        f"PyTorch {theirs['torch']}, {theirs['threads']} threads, attention "
        f"{theirs.get('attn_implementation', '?')}"
    )
    for key in ("prompt_tokens", "new_tokens", "targets", "iters"):
        if ours.get(key) != theirs.get(key):
            print(f"warning: {key} differs: pixellm {ours.get(key)}, PyTorch {theirs.get(key)}")
    range_head = f" {'round ratios':>14}" if rounds > 1 else ""
    print(f"{'stage':<20} {'pixellm ms':>12} {'PyTorch ms':>12} {'ratio':>8}{range_head}")
    for s in ours["stages"]:
        name = s["name"]
        a_rounds = [next(x["median_ms"] for x in o["stages"] if x["name"] == name) for o in ours_all]
        b_rounds = [
            next((x["median_ms"] for x in t["stages"] if x["name"] == name), None)
            for t in theirs_all
        ]
        a = median(a_rounds)
        if None in b_rounds:
            print(f"{name:<20} {a:>12.2f} {'-':>12} {'-':>8}")
            continue
        b = median(b_rounds)
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        spread = ""
        if rounds > 1:
            ratios = [x / y for x, y in zip(a_rounds, b_rounds) if y > 0]
            spread = f" {min(ratios):>6.2f}–{max(ratios):<7.2f}" if ratios else ""
        print(f"{name:<20} {a:>12.2f} {b:>12.2f} {ratio:>8}{spread}")
    a = median([o["decode_tokens_per_s"] for o in ours_all])
    b = median([t["decode_tokens_per_s"] for t in theirs_all])
    print(
        f"{'decode tokens/s':<20} {a:>12.2f} {b:>12.2f} {a / b if b else 0:>8.2f}"
        "   (here higher is better)"
    )
    for t in theirs_all:
        others = t.get("other_processes_cpu_share")
        if others is not None and others > 0.05:
            print(f"warning: other processes used {others:.0%} of the CPU during a PyTorch run")
sys.exit(status)
PY
