# Sourced by scripts/gpu-check.sh and scripts/gpu-bench.sh on the NVIDIA machine (from the
# repository root): unpacks the binary archives of scripts/build-gpu-bundle.sh that were
# carried, puts the Vulkan loader from .gl/ in place when the machine lacks it, and sets
# the environment.
B=.gpu-bundle
for f in "$B"/*.tar.xz; do
  [ -e "$f" ] && tar xJf "$f" -C "$B"
done
if [ -e "$B/pixellm.xz" ]; then
  xz -dkfT0 "$B/pixellm.xz" && chmod +x "$B/pixellm"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv,noheader || true
