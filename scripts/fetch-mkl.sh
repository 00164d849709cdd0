#!/usr/bin/env bash
# Fetches Intel MKL's shared libraries (the `mkl` wheel on PyPI, the same BLAS PyTorch's
# CPU wheels use; Intel Simplified Software License) into a cache, once, and prints the
# path of libmkl_rt for `pixellm --blas` / PIXELLM_BLAS. x86_64 Linux only.
#
#   PIXELLM_BLAS="$(scripts/fetch-mkl.sh)" pixellm bench --shape mid
#
# Only the sequential threading layer and the CPU kernel libraries are kept (520 MB of the
# wheel's 650): pixellm runs MKL on its own thread pool.
set -euo pipefail
version=2026.2.0
cache="${PIXELLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixellm}/mkl-$version"
rt="$cache/libmkl_rt.so.3"
if [ ! -s "$rt" ]; then
  [ "$(uname -sm)" = "Linux x86_64" ] || { echo "error: the mkl wheel is for x86_64 Linux" >&2; exit 1; }
  mkdir -p "$cache"
  python3 -m pip download -q --no-deps -d "$cache" "mkl==$version" >&2
  python3 - "$cache" "$version" <<'PY'
import glob, os, re, sys, zipfile
cache, version = sys.argv[1:]
whl = sorted(glob.glob(f"{cache}/mkl-{version}-*.whl"))[-1]
keep = re.compile(r"libmkl_(rt|core|intel_lp64|sequential|def|mc3|avx2|avx512|avx10|vml_\w+)\.so\.\d+$")
with zipfile.ZipFile(whl) as z:
      for name in sorted(z.namelist(), key=lambda n: n.endswith("libmkl_rt.so.3")):
        base = os.path.basename(name)
        if "/lib/" in name and keep.match(base):
            with z.open(name) as src, open(os.path.join(cache, base + ".part"), "wb") as dst:
                dst.write(src.read())
            os.replace(os.path.join(cache, base + ".part"), os.path.join(cache, base))
os.remove(whl)
PY
  [ -s "$rt" ] || { echo "error: libmkl_rt.so.3 missing from the mkl $version wheel" >&2; exit 1; }
fi
echo "$rt"
