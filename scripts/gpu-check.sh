#!/usr/bin/env bash
# Runs on the NVIDIA machine from the repository root, with .gpu-bundle/ and .gl/ built
# by scripts/build-gpu-bundle.sh: the parity suite and the CLI on `cuda` and on `vulkan`.
# Budget: under 4 minutes (first runs pay kernel JIT + autotune).
set -uo pipefail
cd "$(dirname "$0")/.."
B=.gpu-bundle
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
# The parity suite finds the kit by walking up from its build path; point it here.
export PIXELLM_KIT="$PWD/$B/kit"

if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$B/pixellm devices

status=0
for be in cuda vulkan; do
  echo "== parity on $be"
  PIXELLM_TEST_BACKENDS=$be PIXELLM_REQUIRE_BACKENDS=$be timeout 150 $B/parity --test-threads=1 || status=1
done
for be in cuda vulkan; do
  echo "== CLI on $be"
  out=/tmp/pixellm-gpu-$be
  timeout 60 $B/pixellm segment --backend $be --model $B/kit/checkpoint \
    --image $B/kit/cases/p1_landscape_480x360/image.png \
    --prompt "Can you segment the red square and the blue circle in this image?" \
    --answer "Sure, the red square is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] and the blue circle is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]." \
    --out $out || status=1
  python3 -c "import json;r=json.load(open('$out/result.json'));print('$be', [(t['area'],t['bbox']) for t in r['targets']], r['timings_ms'])" || status=1
done
exit $status
