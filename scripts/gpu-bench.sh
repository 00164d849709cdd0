#!/usr/bin/env bash
# Runs on the NVIDIA machine from the repository root, with the release binary of
# scripts/build-gpu-bundle.sh (.gpu-bundle/; the machine has no Rust toolchain and no
# internet) and .gl/ (the Vulkan loader, see scripts/gpu-env.sh): `pixellm bench` at the 7B
# and 13B shapes (random weights) on cuda and vulkan, in bf16 and f16, then one table of all
# runs, with PyTorch (the machine's python3, `scripts/compare-pytorch.py --device cuda`) at
# the same shapes in bf16 beside them for the ratio. Budget: under 5 minutes: each run is
# capped (75 s) and no run starts after 220 s.
# JSON per run and logs go to $LOGS (default /tmp/gpu-bench).
#
#   scripts/gpu-bench.sh [--iters N] [--new-tokens N]      # defaults: 2, 32
set -uo pipefail
cd "$(dirname "$0")/.."
iters=2
new_tokens=32
while [ $# -gt 0 ]; do
  case "$1" in
    --iters) iters="$2"; shift 2 ;;
    --new-tokens) new_tokens="$2"; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
. scripts/gpu-env.sh
LOGS="${LOGS:-/tmp/gpu-bench}"
mkdir -p "$LOGS"
start=$SECONDS

# Most wanted first, so that a slow card still yields the CUDA rows. wgpu has no bf16
# (WGSL lacks the type): the bench says so at once and that row stays empty.
# On an H200 (2026-11-27) the runs took 42, 27, 33, 30, 20, 33, ~1, 27, 28 s in this order.
for run in 7b:cuda:bf16 7b:torch:bf16 7b:cuda:f16 13b:cuda:bf16 13b:torch:bf16 7b:vulkan:f16 \
  7b:vulkan:bf16 13b:cuda:f16 13b:vulkan:f16; do
  IFS=: read -r shape be dt <<<"$run"
  if [ $((SECONDS - start)) -gt 220 ]; then
    echo "== $shape $be $dt: skipped (time budget)"
    continue
  fi
  echo "== $shape $be $dt ($((SECONDS - start)) s)"
  if [ "$be" = torch ]; then
    cmd=(python3 scripts/compare-pytorch.py --device cuda)
  else
    cmd=($B/pixellm bench --backend "$be")
  fi
  timeout 75 "${cmd[@]}" --shape "$shape" --dtype "$dt" --iters "$iters" \
    --new-tokens "$new_tokens" --json "$LOGS/$shape-$be-$dt.json" \
    >"$LOGS/$shape-$be-$dt.log" 2>&1 || {
    echo "   failed or timed out:"
    tail -3 "$LOGS/$shape-$be-$dt.log"
  }
done
for f in "$LOGS"/7b-*-bf16.log; do [ -e "$f" ] && { echo "== $f"; tail -16 "$f"; }; done

python3 - "$LOGS" <<'PY'
import glob, json, os, sys
reports = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    try:
        reports[os.path.basename(f)[:-5]] = json.load(open(f))
    except Exception:
        pass
def stage(r, name):
    s = {s["name"]: s for s in r.get("stages", [])}.get(name)
    return s["median_ms"] if s else None
rows = []
for run, r in reports.items():
    shape, be, dt = run.split("-")
    torch_r = reports.get(f"{shape}-torch-{dt}")
    def cell(name):
        v = stage(r, name)
        return f"{v:.1f}" if v is not None else "-"
    ratio = "-"
    if torch_r and be != "torch" and stage(r, "end to end") and stage(torch_r, "end to end"):
        ratio = f'{stage(r, "end to end") / stage(torch_r, "end to end"):.2f}'
    mem = r.get("device_memory") or r.get("peak_device_bytes")
    if isinstance(mem, (int, float)):
        mem = f"peak {mem / 2**30:.1f} GiB"
    rows.append([run, cell("preprocess"), cell("vision tower"), cell("projectors + neck"),
                 cell("prefill"), f'{r.get("decode_tokens_per_s") or 0:.1f}',
                 cell("pixel decoder"), cell("postprocess"), cell("end to end"), ratio,
                 str(mem)[:48]])
head = ["run", "preproc", "vision", "proj+neck", "prefill", "decode tok/s", "decoder",
        "postproc", "e2e ms", "e2e/torch", "device memory"]
w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
for row in [head] + rows:
    print("  ".join(str(x).rjust(n) for x, n in zip(row, w)))
PY
echo "total $((SECONDS - start)) s"
