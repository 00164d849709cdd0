#!/usr/bin/env bash
# Builds the browser demo into web/dist/: the wasm module (crates/pixellm-web, profile
# `web`), its wasm-bindgen JS glue, the page, and the bundled models: pixellm-shapes (the
# default) and the conformance kit's tiny test model.
#
#   scripts/build-web.sh            # then: scripts/serve-web.sh
#
# Installs wasm-bindgen-cli at exactly the version of the `wasm-bindgen` crate in
# Cargo.lock when it is missing (the two must match), and the wasm32 target when rustup
# has not got it. CARGO_TARGET_DIR is honoured (the browser test builds into target/web
# so that it never waits on the lock of the native test build).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
dist="$repo/web/dist"

version="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')"
[ -n "$version" ] || { echo "error: wasm-bindgen not found in Cargo.lock" >&2; exit 1; }
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$version" ]; then
  echo "installing wasm-bindgen-cli $version (once; a few minutes)" >&2
  cargo install -q wasm-bindgen-cli --version "$version"
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

echo "building crates/pixellm-web for wasm32 (profile web)" >&2
cargo build -q --profile web --target wasm32-unknown-unknown -p pixellm-web
wasm="$target_dir/wasm32-unknown-unknown/web/pixellm_web.wasm"

rm -rf "$dist.tmp"
mkdir -p "$dist.tmp/pkg" "$dist.tmp/models/tiny/model" "$dist.tmp/models/tiny/clip"
wasm-bindgen --target web --no-typescript --out-dir "$dist.tmp/pkg" "$wasm"
cp web/index.html web/app.js web/style.css "$dist.tmp/"

# The bundled model: the conformance kit's tiny random-weight PixelLM and CLIP.
kit="tests/fixtures/conformance"
manifest() { # dir files...
  local dir="$1"; shift
  local list; list="$(printf '"%s",' "$@")"
  printf '{"files": [%s]}\n' "${list%,}" > "$dir/manifest.json"
}
model_files=(config.json tokenizer.model tokenizer.json added_tokens.json model.safetensors)
for f in "${model_files[@]}"; do cp "$kit/checkpoint/$f" "$dist.tmp/models/tiny/model/"; done
manifest "$dist.tmp/models/tiny/model" "${model_files[@]}"
clip_files=(config.json model.safetensors)
for f in "${clip_files[@]}"; do cp "$kit/clip-vit-tiny-patch14-336/$f" "$dist.tmp/models/tiny/clip/"; done
manifest "$dist.tmp/models/tiny/clip" "${clip_files[@]}"
case="$kit/cases/p1_landscape_480x360"
cp "$case/image.png" "$dist.tmp/models/tiny/example.png"
node -e '
const c = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
console.log(JSON.stringify({ question: c.question, answer: c.teacher_forced.answer }));
' "$case/case.json" > "$dist.tmp/models/tiny/example.json"

# The default model: pixellm-shapes (models/pixellm-shapes, trained by this project) and
# its example image.
shapes="models/pixellm-shapes"
mkdir -p "$dist.tmp/models/shapes/model" "$dist.tmp/models/shapes/clip"
shapes_files=(config.json tokenizer.model added_tokens.json tokenizer_config.json special_tokens_map.json model.safetensors)
for f in "${shapes_files[@]}"; do cp "$shapes/$f" "$dist.tmp/models/shapes/model/"; done
manifest "$dist.tmp/models/shapes/model" "${shapes_files[@]}"
for f in "${clip_files[@]}"; do cp "$shapes/vision_tower/$f" "$dist.tmp/models/shapes/clip/"; done
manifest "$dist.tmp/models/shapes/clip" "${clip_files[@]}"
cp examples/shapes.png "$dist.tmp/models/shapes/example.png"
printf '{"question": "Please segment the red circle and the blue star."}\n' > "$dist.tmp/models/shapes/example.json"

rm -rf "$dist"
mv "$dist.tmp" "$dist"
echo "web/dist ready: $(du -h "$dist/pkg/pixellm_web_bg.wasm" | cut -f1) of wasm; serve it with scripts/serve-web.sh" >&2
