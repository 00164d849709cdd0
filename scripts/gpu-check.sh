#!/usr/bin/env bash
# Runs on the NVIDIA machine from the repository root, with .gpu-bundle/ and .gl/ built
# by scripts/build-gpu-bundle.sh: the parity suite (f32, 1e-4) and the half-precision suite
# on `cuda` and on `vulkan`, then the CLI on each. The two backends' suites run side by
# side (correctness only, nothing is timed here). On cuda the vision-tower parity test runs
# once more with PIXELLM_ALLOW_TF32=1, for the record only: the error Burn's TF32 products
# would give (crates/pixellm/src/kernels/cuda.rs; the suites map the variable to
# pixellm::kernels::set_allow_tf32). Budget: under 4 minutes (first runs pay kernel JIT).
# Logs go to $LOGS (default /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
# The suites find the kit by walking up from their build path; point them here.
export PIXELLM_KIT="$PWD/$B/kit"
LOGS="${LOGS:-/tmp/gpu-check}"
mkdir -p "$LOGS"
[ -x $B/pixellm ] && $B/pixellm devices

suite() { # backend suite seconds [label [test filter]]
  local log="$LOGS/$2-$1${4:+-$4}.log"
  PIXELLM_TEST_BACKENDS=$1 PIXELLM_REQUIRE_BACKENDS=$1 timeout $3 \
    $B/$2 --test-threads=1 --nocapture ${5:-} >"$log" 2>&1
  echo "== $2 on $1${4:+ ($4)}: exit $?"
  # Every test's verdict, panics, and the measured errors of 1e-4 and above.
  grep -E "^test |test result|panicked|rel. error [0-9.e+-]+$" "$log" |
    grep -vE "rel. error [0-9.]+e-(0[5-9]|[1-9][0-9])$" | head -40
}
status=0
(suite cuda parity 150; suite cuda half 90) >"$LOGS/summary-cuda.txt" 2>&1 &
(suite vulkan parity 150; suite vulkan half 90) >"$LOGS/summary-vulkan.txt" 2>&1 &
wait
cat "$LOGS"/summary-*.txt
grep -q "exit [^0]" "$LOGS"/summary-*.txt && status=1
(export PIXELLM_ALLOW_TF32=1; suite cuda parity 60 tf32 vision_tower_projectors_and_neck)

for be in cuda vulkan; do
  [ -x $B/pixellm ] || break # neither carried nor left by an earlier call
  echo "== CLI on $be"
  out=/tmp/pixellm-gpu-$be
  timeout 60 $B/pixellm segment --backend $be --model $B/kit/checkpoint \
    --image $B/kit/cases/p1_landscape_480x360/image.png \
    --prompt "Can you segment the red square and the blue circle in this image?" \
    --answer "Sure, the red square is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] and the blue circle is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]." \
    --out $out >"$LOGS/cli-$be.log" 2>&1 || { status=1; tail -5 "$LOGS/cli-$be.log"; }
  python3 -c "import json;r=json.load(open('$out/result.json'));print('$be', [(t['area'],t['bbox']) for t in r['targets']], r['timings_ms'])" || status=1
done
exit $status
