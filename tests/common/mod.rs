//! Shared helpers of the integration tests: the conformance kit, goldens, metrics and the
//! backends to run on.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};
use pixellm::backend::Backend;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// The conformance kit copied into the repository.
pub fn kit() -> PathBuf {
    // Test binaries carried to another machine (scripts/gpu-check.sh) get the kit there.
    if let Some(dir) = std::env::var_os("PIXELLM_KIT") {
        return PathBuf::from(dir);
    }
    // Shared by packages at different depths: walk up to the workspace's tests/fixtures.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("tests/fixtures/conformance"))
        .find(|d| d.is_dir())
        .expect("tests/fixtures/conformance above the package")
}

/// The kit's case names.
pub const CASES: [&str; 2] = ["p1_landscape_480x360", "p2_portrait_300x500"];

/// The cases present in [`kit`] (all of [`CASES`] in the repository; a trimmed kit
/// carried elsewhere may hold fewer).
pub fn present_cases() -> Vec<&'static str> {
    let cases: Vec<_> = CASES
        .into_iter()
        .filter(|c| kit().join("cases").join(c).is_dir())
        .collect();
    assert!(
        !cases.is_empty(),
        "no conformance case under {}",
        kit().display()
    );
    cases
}

/// A golden tensor: shape and values as f32 (int64 goldens converted).
#[derive(Debug, Clone)]
pub struct Golden {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Reads every tensor of a golden safetensors file.
pub fn goldens(path: &Path) -> HashMap<String, Golden> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("golden safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                other => panic!("unexpected golden dtype {other:?}"),
            };
            (
                name,
                Golden {
                    shape: view.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

/// One kit case: its goldens, case.json and directory.
pub struct Case {
    pub name: &'static str,
    pub dir: PathBuf,
    pub json: Value,
    pub golden: HashMap<String, Golden>,
}

impl Case {
    pub fn load(name: &'static str) -> Self {
        let dir = kit().join("cases").join(name);
        let json: Value =
            serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
        let golden = goldens(&dir.join("golden.safetensors"));
        Self {
            name,
            dir,
            json,
            golden,
        }
    }

    pub fn g(&self, name: &str) -> &Golden {
        self.golden
            .get(name)
            .unwrap_or_else(|| panic!("{}: no golden `{name}`", self.name))
    }

    pub fn ids(&self, pointer: &str) -> Vec<i64> {
        self.json
            .pointer(pointer)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("case.json has no {pointer}"))
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(ours: &[f32], golden: &[f32]) -> f64 {
    assert_eq!(ours.len(), golden.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in ours.iter().zip(golden) {
        num += ((a - b) as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Asserts shape equality and relative error ≤ `tol`, with a message naming the stage.
pub fn assert_close(what: &str, ours: &[f32], our_shape: &[usize], golden: &Golden, tol: f64) {
    assert_eq!(our_shape, golden.shape.as_slice(), "{what}: shape");
    let err = rel_err(ours, &golden.values);
    // Visible with `cargo test -- --nocapture`: the measured error of every stage.
    eprintln!("{what}: rel. error {err:.2e}");
    assert!(err <= tol, "{what}: relative error {err:.3e} > {tol:.0e}");
    assert!(
        ours.iter().all(|v| v.is_finite()),
        "{what}: non-finite values"
    );
}

/// Reads a tensor back with its shape.
pub fn host<const D: usize>(t: Tensor<D>) -> (Vec<f32>, Vec<usize>) {
    let shape = t.dims().to_vec();
    (pixellm::pipeline::read_f32(t).expect("readback"), shape)
}

/// Compares a tensor with a golden (rel. error ≤ `tol`).
pub fn check<const D: usize>(what: &str, t: Tensor<D>, golden: &Golden, tol: f64) {
    let (v, s) = host(t);
    assert_close(what, &v, &s, golden, tol);
}

/// IoU of the binary masks (logit > 0) of two logit arrays.
pub fn iou(a: &[f32], b: &[f32]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (p, q) = (*x > 0.0, *y > 0.0);
        inter += (p && q) as usize;
        union += (p || q) as usize;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// The backends this test run covers: `cpu` always; `wgpu` when compiled in and an adapter
/// exists. `PIXELLM_REQUIRE_BACKENDS=cpu,wgpu` (set in CI) turns a missing one into a
/// failure instead of a skip.
pub fn backends() -> &'static [(Backend, Device)] {
    static BACKENDS: OnceLock<Vec<(Backend, Device)>> = OnceLock::new();
    BACKENDS.get_or_init(|| {
        // PIXELLM_ALLOW_TF32=1 (scripts/gpu-check.sh, for the record): Burn's TF32 products
        // on CUDA, as in the CLI (the library itself reads no environment variables).
        pixellm::kernels::set_allow_tf32(
            std::env::var("PIXELLM_ALLOW_TF32").is_ok_and(|v| matches!(v.as_str(), "1" | "true")),
        );
        let required: Vec<String> = std::env::var("PIXELLM_REQUIRE_BACKENDS")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let wanted: Vec<String> = match std::env::var("PIXELLM_TEST_BACKENDS") {
            Ok(v) => v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            Err(_) => vec!["cpu".into(), "wgpu".into()],
        };
        let mut out = Vec::new();
        for name in wanted.iter().chain(required.iter()) {
            if out
                .iter()
                .any(|(b, _): &(Backend, Device)| b.name() == name)
            {
                continue;
            }
            let backend: Backend = name.parse().expect("backend name");
            match backend.device() {
                Ok(d) => out.push((backend, d)),
                Err(e) if required.contains(name) => {
                    panic!("required backend {name} unavailable: {e}")
                }
                Err(e) => eprintln!("skipping backend {name}: {e}"),
            }
        }
        out
    })
}

/// Serialises the heavy tests of one binary: backends run their own thread pools / GPU
/// queues, and several tests fighting over two cores are far slower than taking turns.
pub fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}
