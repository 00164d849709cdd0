//! Run-time choice of the Burn device and float dtype.
//!
//! The model code never names a backend; this is the one place that maps a user's
//! `--backend` / `--dtype` onto a Burn [`Device`], with errors that list what this build
//! can do instead.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device};

use crate::error::{Error, Result};

/// A compute backend the user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Pure-Rust CPU backend (Burn `flex`).
    Cpu,
    /// wgpu, letting wgpu pick the graphics API (Vulkan, Metal, DX12, WebGPU).
    Wgpu,
    /// wgpu on Vulkan.
    Vulkan,
    /// wgpu on Metal.
    Metal,
    /// CUDA (NVIDIA).
    Cuda,
}

impl Backend {
    /// Every backend name the CLI accepts.
    pub const ALL: [Backend; 5] = [
        Backend::Cpu,
        Backend::Wgpu,
        Backend::Vulkan,
        Backend::Metal,
        Backend::Cuda,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Metal => "metal",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether this build has the backend compiled in.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Cpu => cfg!(feature = "cpu"),
            Backend::Wgpu | Backend::Vulkan => cfg!(feature = "wgpu"),
            Backend::Metal => cfg!(all(feature = "wgpu", target_os = "macos")),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this build.
    pub fn available() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.compiled()).collect()
    }

    /// Creates the device. Fails with the list of compiled backends when this one is
    /// missing, and when no adapter/GPU is found.
    pub fn device(self) -> Result<Device> {
        if !self.compiled() {
            return Err(Error::Backend(format!(
                "`{}` is not compiled into this build; available: {}",
                self.name(),
                list(&Self::available())
            )));
        }
        match self {
            #[cfg(feature = "cpu")]
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu | Backend::Vulkan | Backend::Metal => wgpu_device(self),
            #[cfg(feature = "cuda")]
            Backend::Cuda => {
                let devices = Device::enumerate(burn::tensor::DeviceType::Cuda);
                devices.into_iter().next().ok_or_else(|| {
                    Error::Backend("`cuda` is compiled in but no CUDA device was found (is the NVIDIA driver loaded?)".into())
                })
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("compiled() guards every backend"),
        }
    }
}

/// In a browser the adapter can only be requested asynchronously: the web bindings
/// create the device with `Device::wgpu_options().init_async()`.
#[cfg(all(feature = "wgpu", target_family = "wasm"))]
fn wgpu_device(backend: Backend) -> Result<Device> {
    Err(Error::Backend(format!(
        "`{}` needs an asynchronous device request in the browser",
        backend.name()
    )))
}

#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
fn wgpu_device(backend: Backend) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use burn::tensor::wgpu::WgpuBackend;
    // A wgpu runtime can be initialised once per process; later requests reuse it.
    static DEVICES: OnceLock<Mutex<HashMap<Backend, std::result::Result<Device, String>>>> =
        OnceLock::new();
    let mut devices = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let entry = devices.entry(backend).or_insert_with(|| {
        let api = match backend {
            Backend::Vulkan => WgpuBackend::Vulkan,
            Backend::Metal => WgpuBackend::Metal,
            _ => WgpuBackend::Auto,
        };
        Device::wgpu_options()
            .graphics_api(api)
            .init()
            .map_err(|e| e.to_string())
    });
    entry.clone().map_err(|e| {
        Error::Backend(format!(
            "`{}` is compiled in but no usable GPU adapter was found ({e}); on Linux without a GPU install Mesa's software Vulkan driver (apt-get install mesa-vulkan-drivers); available: {}",
            backend.name(),
            list(&Backend::available())
        ))
    })
}

/// Loads a CBLAS library (Intel MKL's `libmkl_rt`, OpenBLAS, BLIS; a path or a name the
/// dynamic loader finds) for the CPU backend's f32 matrix products in this process, and
/// returns what was loaded. Without one the products use the built-in `gemm` kernels; with
/// MKL the products of the vision tower and prefill ran 20–40 % faster on a 2-core AVX-512
/// Xeon (`docs/performance.md`). Errors name the library and what is wrong with it.
pub fn load_cpu_blas(library: &str) -> Result<String> {
    #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
    return crate::kernels::cpu::blas::load(library);
    #[cfg(not(all(feature = "cpu", not(target_family = "wasm"))))]
    Err(Error::Backend(format!(
        "cannot load {library}: a CPU BLAS needs the native `cpu` backend, which this build lacks"
    )))
}

/// What computes the CPU backend's f32 matrix products: "built-in (gemm crate)" or the
/// library [`load_cpu_blas`] loaded.
pub fn cpu_matmul() -> String {
    #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
    return crate::kernels::cpu::blas::describe();
    #[cfg(not(all(feature = "cpu", not(target_family = "wasm"))))]
    "built-in".to_string()
}

/// Whether `device` is the CPU backend (autodiff or not).
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "cpu")]
    return device.clone().inner() == Device::flex();
    #[cfg(not(feature = "cpu"))]
    {
        let _ = device;
        false
    }
}

/// A human-readable name of the hardware behind `device` ("llvmpipe (LLVM 15.0.6, 256
/// bits)", "NVIDIA H100 PCIe", "CPU").
pub fn describe(device: &Device) -> String {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(identity) = device.identity() {
        return identity.name;
    }
    let _ = device;
    "CPU".to_string()
}

fn list(backends: &[Backend]) -> String {
    if backends.is_empty() {
        return "none".into();
    }
    backends
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                Error::Backend(format!(
                    "unknown backend `{s}`; expected one of cpu, wgpu, vulkan, metal, cuda"
                ))
            })
    }
}

/// Float precision of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit float (the conformance reference).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16 (the released checkpoints' dtype).
    Bf16,
}

impl Precision {
    /// The Burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::Backend(format!(
                "unknown dtype `{s}`; expected f32, f16 or bf16"
            ))),
        }
    }
}
