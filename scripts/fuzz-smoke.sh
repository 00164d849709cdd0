#!/usr/bin/env bash
# Short, bounded cargo-fuzz run of every target in fuzz/ (default 30 s each).
#
# Runs only when a nightly toolchain and cargo-fuzz are installed; otherwise prints one line
# and exits 0, so CI never fails for a missing tool. Each run starts from the checked-in
# seeds (fuzz/seeds/<target>, copied to a fresh corpus) with a fixed libFuzzer seed, so a
# run explores the same inputs on every machine (a slower machine stops earlier in the same
# sequence): a failure is a real crash, reproducible with the input libFuzzer saves under
# fuzz/artifacts/<target>/, never noise.
#
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh            # longer runs
#   FUZZ_TARGETS="torch_pickle" scripts/fuzz-smoke.sh  # one target
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-30}"
targets="${FUZZ_TARGETS:-safetensors_header torch_pickle sentencepiece_model image_decode}"

if ! command -v rustup >/dev/null 2>&1 || ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz-smoke: no nightly toolchain (rustup toolchain install nightly --profile minimal); skipped"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: cargo-fuzz is not installed (cargo install cargo-fuzz); skipped"
  exit 0
fi

cd fuzz
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $targets; do
  mkdir -p "$work/$t"
  if [ -d "seeds/$t" ]; then cp seeds/"$t"/* "$work/$t"/; fi
  echo "fuzz-smoke: $t for ${secs}s"
  # -seed: deterministic mutations; -rss_limit_mb / -timeout: an input that needs more than
  # 2 GiB or 10 s is a finding, not a hang of CI.
  cargo +nightly fuzz run "$t" "$work/$t" -- \
    -seed=1 -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
