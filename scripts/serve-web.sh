#!/usr/bin/env bash
# Serves web/dist (built by scripts/build-web.sh) on 127.0.0.1 only.
#
#   scripts/serve-web.sh [PORT]     # default 8080; then open http://127.0.0.1:PORT/
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -f "$repo/web/dist/pkg/pixellm_web.js" ] || { echo "error: web/dist is not built; run scripts/build-web.sh" >&2; exit 1; }
exec node "$repo/web/serve.mjs" --dir "$repo/web/dist" --port "${1:-8080}"
