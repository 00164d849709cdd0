#!/usr/bin/env bash
# Runs on the NVIDIA machine from the repository root, with the release binary of
# scripts/build-gpu-bundle.sh (.gpu-bundle/pixellm; the machine has no Rust toolchain and no
# internet) and .gl/ (the Vulkan loader, unpacked when missing, as in scripts/gpu-check.sh):
# `pixellm bench` at the 7B and 13B shapes (random weights) on cuda and vulkan, in bf16
# and f16, then one table of all runs. Budget: under 5 minutes (each run is capped).
#
#   scripts/gpu-bench.sh [--iters N] [--new-tokens N]      # defaults: 2, 32
set -uo pipefail
cd "$(dirname "$0")/.."
B=.gpu-bundle
iters=2
new_tokens=32
while [ $# -gt 0 ]; do
  case "$1" in
    --iters) iters="$2"; shift 2 ;;
    --new-tokens) new_tokens="$2"; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

out="$(mktemp -d)"
for shape in 7b 13b; do
  for be in cuda vulkan; do
    for dt in bf16 f16; do
      # wgpu has no bf16 (WGSL lacks the type): the bench says so and that row is empty.
      echo "== $shape $be $dt"
      timeout 70 $B/pixellm bench --shape "$shape" --backend "$be" --dtype "$dt" \
        --iters "$iters" --new-tokens "$new_tokens" --json "$out/$shape-$be-$dt.json" ||
        echo "   ($shape $be $dt: failed or timed out)"
    done
  done
done

python3 - "$out" <<'PY'
import glob, json, os, sys
rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    try:
        r = json.load(open(f))
    except Exception:
        continue
    st = {s["name"]: s for s in r.get("stages", [])}
    def med(name):
        s = st.get(name)
        return f'{s["median_ms"]:.1f}' if s else "-"
    rows.append([os.path.basename(f)[:-5], med("vision tower"), med("prefill"),
                 f'{r.get("decode_tokens_per_s") or 0:.1f}', med("pixel decoder"), med("end to end"),
                 json.dumps(r.get("device_memory"))[:40]])
head = ["run", "vision ms", "prefill ms", "decode tok/s", "decoder ms", "e2e ms", "device memory"]
w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
for row in [head] + rows:
    print("  ".join(str(x).rjust(n) for x, n in zip(row, w)))
PY
