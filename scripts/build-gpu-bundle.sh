#!/usr/bin/env bash
# Builds, on this (GPU-less, Rust-equipped) machine, what scripts/gpu-bench.sh and
# scripts/gpu-check.sh run on the NVIDIA machine (driver + CUDA toolkit, no Rust, no
# internet): the release CLI with the cpu, wgpu and cuda backends, the parity/half test
# binaries, and Debian's Vulkan loader packages (that machine has the NVIDIA ICD but maybe
# no loader). On 2 cores: ~40 min from scratch, ~15 once the cuda dependencies are built.
#
# Output: .gpu-bundle/ (git-ignored) and .gl/. Carry what each call needs (below) and .gl/.
#
# Size: the device tool sends at most 64 MiB (working tree + carried paths). Each binary is
# ~130 MB (cubecl-cuda links LLVM whatever its features), ~24 MB xz-compressed
# (scripts/gpu-env.sh unpacks them there): pixellm.xz (carry it for scripts/gpu-bench.sh)
# and tests.tar.xz (the `parity` and `half` suites in one archive with a large dictionary,
# ~29 MB: carry it with kit/, ~30 MB, for scripts/gpu-check.sh). One call cannot carry all
# three: two calls, the bench first, the check right after on the still-warm machine (its
# CLI step uses the pixellm the first call unpacked there). tests/fixtures/ alone is ~57 MB,
# so before sending, take the fixtures out of the tree (the check reads .gpu-bundle/kit/):
#   git rm -r -q --cached tests/fixtures && echo /tests/fixtures/ >> .git/info/exclude
#   (and undo with: git reset -q tests/fixtures; sed -i '\#/tests/fixtures/#d' .git/info/exclude)
set -euo pipefail
cd "$(dirname "$0")/.."

# tracel-llvm-bundler downloads LLVM from GitHub at build time; pre-seed it offline.
if [ ! -e "${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed" ]; then
  sh scripts/offline-cuda-llvm.sh
fi

cargo build --release -p pixellm-cli --features cuda
tests=$(cargo test --release -p pixellm-tests --features cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]:
        print(m["target"]["name"], m["executable"])')

rm -rf .gpu-bundle && mkdir -p .gpu-bundle/kit/cases
cp target/release/pixellm .gpu-bundle/
echo "$tests" | while read -r name exe; do
  case "$name" in parity | half) cp "$exe" ".gpu-bundle/$name" ;; esac
done
(
  cd .gpu-bundle
  strip pixellm parity half
  # One core each; the 400 MiB dictionary spans a whole binary, so the two suites (which
  # share most bytes) cost little more than one.
  xz -T1 -9 pixellm &
  tar cf - parity half | xz -T1 --lzma2=preset=9,dict=400MiB >tests.tar.xz
  wait
  rm parity half
)
kit=tests/fixtures/conformance
cp -r $kit/checkpoint $kit/clip-vit-tiny-patch14-336 $kit/common_golden.safetensors .gpu-bundle/kit/
cp -r $kit/cases/p1_landscape_480x360 .gpu-bundle/kit/cases/

mkdir -p .gl
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  apt-get $o update -qq
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .gpu-bundle .gl
