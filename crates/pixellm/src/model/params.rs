//! Reads named checkpoint tensors onto a device, checking shapes on the way.
//!
//! Model code asks for `model.layers.3.mlp.up_proj.weight` with the shape it expects; the
//! name sits next to the field it fills (as in candle's `VarBuilder`), so no key-remapping
//! table exists anywhere, and every failure names the tensor, the file and the shape.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use burn::tensor::{DType, Device, Distribution, Tensor};

use super::nn::Matrix;
use crate::error::Result;
use crate::kernels::packed_on;
use crate::kernels::quant::{DeviceQuantMatrix, Quant, QuantMatrix};
use crate::weights::WeightFiles;

/// Creates a float tensor of `shape` from host values on `device`, in `dtype` (defined with
/// the backend router, which uploads host matrices too).
pub use crate::kernels::upload;

/// Counts the checkpoint bytes read so far and reports them, for a progress bar.
pub struct LoadMonitor<'a> {
    done: Cell<u64>,
    total: u64,
    report: RefCell<&'a mut dyn FnMut(u64, u64)>,
    /// Checkpoint keys read so far (to report the ones never used).
    used: RefCell<HashSet<String>>,
}

impl<'a> LoadMonitor<'a> {
    /// `report(done, total)` is called after every tensor.
    pub fn new(total: u64, report: &'a mut dyn FnMut(u64, u64)) -> Self {
        Self {
            done: Cell::new(0),
            total,
            report: RefCell::new(report),
            used: RefCell::new(HashSet::new()),
        }
    }

    /// The tensors of `files` that nothing read, sorted.
    pub fn unused(&self, files: &WeightFiles) -> Vec<String> {
        let used = self.used.borrow();
        files
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect()
    }

    fn add(&self, key: &str, bytes: u64) {
        self.used.borrow_mut().insert(key.to_string());
        let done = (self.done.get() + bytes).min(self.total);
        self.done.set(done);
        (self.report.borrow_mut())(done, self.total);
    }
}

/// Where parameter values come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Opened checkpoint files.
    Files(&'a WeightFiles),
    /// Seeded random values of any requested shape, created on the device: builds a model
    /// at real shapes without a checkpoint (benchmarks). Rank-1 tensors (norm weights,
    /// biases) are ones; matrices are uniform in ±1/√fan_in so activations stay finite.
    Random,
    /// Tensors held in memory (training): the stored tensor itself is handed out, so
    /// gradients reach it.
    Map(&'a TensorMap),
    /// Zeros of whatever shape is asked for, each `(name, shape)` written down: the list of
    /// tensors a configuration needs, in the loader's own words.
    Record(&'a RefCell<Vec<(String, Vec<usize>)>>),
}

/// Named tensors in memory: `name -> (shape, flat values)`.
pub type TensorMap = HashMap<String, (Vec<usize>, Tensor<1>)>;

/// A view of the opened checkpoint files under a key prefix, bound to a device and dtype.
#[derive(Clone)]
pub struct Params<'a> {
    source: Source<'a>,
    device: &'a Device,
    dtype: DType,
    prefix: String,
    monitor: Option<&'a LoadMonitor<'a>>,
    /// How [`Params::matrix`] holds the weights it is asked for.
    quant: Quant,
    /// Bytes of the device tensors and packed matrices handed out, shared by every view
    /// derived from one root.
    bytes: Rc<Cell<u64>>,
}

impl<'a> Params<'a> {
    /// Root view (empty prefix). Float tensors are created in `dtype` on `device`.
    pub fn new(files: &'a WeightFiles, device: &'a Device, dtype: DType) -> Self {
        Self {
            source: Source::Files(files),
            device,
            dtype,
            prefix: String::new(),
            monitor: None,
            quant: Quant::Stored,
            bytes: Rc::default(),
        }
    }

    /// Random parameters of whatever shape the model asks for (see `Source::Random`);
    /// `contains` answers false for `lm_head.weight` only, so tied embeddings stay tied.
    pub fn random(device: &'a Device, dtype: DType) -> Self {
        Self {
            source: Source::Random,
            device,
            dtype,
            prefix: String::new(),
            monitor: None,
            quant: Quant::Stored,
            bytes: Rc::default(),
        }
    }

    /// Tensors from memory (`tensors`), created on `device` in `dtype` when a constant is
    /// built from host values.
    pub fn from_map(tensors: &'a TensorMap, device: &'a Device, dtype: DType) -> Self {
        Self {
            source: Source::Map(tensors),
            device,
            dtype,
            prefix: String::new(),
            monitor: None,
            quant: Quant::Stored,
            bytes: Rc::default(),
        }
    }

    /// Records every `(name, shape)` the model asks for into `names` and hands out zeros.
    pub fn recording(
        names: &'a RefCell<Vec<(String, Vec<usize>)>>,
        device: &'a Device,
        dtype: DType,
    ) -> Self {
        Self {
            source: Source::Record(names),
            device,
            dtype,
            prefix: String::new(),
            monitor: None,
            quant: Quant::Stored,
            bytes: Rc::default(),
        }
    }

    /// Reports every tensor read to `monitor`.
    pub fn with_monitor(self, monitor: &'a LoadMonitor<'a>) -> Self {
        Self {
            monitor: Some(monitor),
            ..self
        }
    }

    /// Holds the matrices [`Params::matrix`] loads as `quant` says (default
    /// [`Quant::Stored`]). Packing happens only where the device multiplies packed
    /// matrices ([`packed_on`]); elsewhere every matrix is dense.
    pub fn with_quant(self, quant: Quant) -> Self {
        Self { quant, ..self }
    }

    /// The quantisation policy of this view.
    pub fn quant(&self) -> Quant {
        self.quant
    }

    /// Bytes of every weight this view and the views derived from it handed out: dense
    /// tensors at their dtype's size, packed matrices at their blocks' size (the model's
    /// weight memory on the device).
    pub fn weight_bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// [`Params::weight_bytes`] of this view and `other` together (once when both come
    /// from one root).
    pub fn weight_bytes_with(&self, other: &Params) -> u64 {
        if Rc::ptr_eq(&self.bytes, &other.bytes) {
            self.weight_bytes()
        } else {
            self.weight_bytes() + other.weight_bytes()
        }
    }

    fn count<const D: usize>(&self, t: &Tensor<D>) {
        let n: usize = t.dims().iter().product();
        self.bytes
            .set(self.bytes.get() + (n * t.dtype().size()) as u64);
    }

    /// Reads the `[rows, cols]` matrix `name`, dense or packed as this view's quantisation
    /// says ([`Quant::target`]): a tensor a GGUF file stores in the target format stays in
    /// its blocks; a float one is quantised at load (rows of a multiple of 32 values only,
    /// others stay dense).
    pub fn matrix(&self, name: &str, shape: [usize; 2]) -> Result<Matrix> {
        let dense = || self.tensor(name, shape).map(Matrix::Dense);
        if !packed_on(self.device) {
            return dense();
        }
        let key = self.key(name);
        let (format, values) = match self.source {
            Source::Files(files) => {
                let stored = files.packed_format(&key);
                match self.quant.target(stored) {
                    None => return dense(),
                    Some(f) if Some(f) == stored => {
                        let m = files.read_packed(&key, shape)?;
                        if let Some(mon) = self.monitor {
                            mon.add(&key, files.stored_bytes(&key));
                        }
                        return Ok(self.packed(m));
                    }
                    Some(f) => (f, None),
                }
            }
            Source::Random => match self.quant.target(None) {
                None => return dense(),
                Some(f) => (f, Some(random_host(&key, &shape))),
            },
            Source::Map(_) | Source::Record(_) => return dense(),
        };
        if !shape[1].is_multiple_of(crate::kernels::quant::BLOCK) {
            return dense();
        }
        let values = match values {
            Some(v) => v,
            None => self.host(name, &shape)?,
        };
        let m = QuantMatrix::quantize(format, shape[0], shape[1], &values).map_err(|msg| {
            crate::Error::Tensor {
                file: "--quant".into(),
                name: key,
                msg,
            }
        })?;
        Ok(self.packed(m))
    }

    /// `m` held where this view's device multiplies packed matrices: on the host for the
    /// CPU kernels, in the device's buffers for the GPU kernels.
    fn packed(&self, m: QuantMatrix) -> Matrix {
        if crate::kernels::host_packed_on(self.device) {
            self.bytes.set(self.bytes.get() + m.bytes().len() as u64);
            return Matrix::Packed(Arc::new(m));
        }
        let m = DeviceQuantMatrix::upload(&m, self.device);
        self.bytes.set(self.bytes.get() + m.bytes());
        Matrix::DevicePacked(Arc::new(m))
    }

    /// A view one level down: `pp("layers").pp(3)` reads `layers.3.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// The full checkpoint key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        self.device
    }

    /// Float dtype of the created tensors.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the checkpoint holds `name` under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        match self.source {
            Source::Files(files) => files.contains(&self.key(name)),
            Source::Map(map) => map.contains_key(&self.key(name)),
            Source::Random | Source::Record(_) => self.key(name) != "lm_head.weight",
        }
    }

    /// Reads `name` as f32 on the host, checking its shape.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = self.key(name);
        let files = match self.source {
            Source::Files(files) => files,
            Source::Random => return Ok(random_host(&key, shape)),
            Source::Record(names) => {
                names.borrow_mut().push((key, shape.to_vec()));
                return Ok(vec![0.0; shape.iter().product()]);
            }
            Source::Map(map) => {
                let t = map_entry(map, &key, shape)?;
                return crate::pipeline::read_f32(t.clone());
            }
        };
        let values = files.read_f32(&key, shape)?;
        if let Some(m) = self.monitor {
            m.add(&key, files.stored_bytes(&key));
        }
        Ok(values)
    }

    /// Reads `name` onto the device, checking its shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        match self.source {
            Source::Map(map) => {
                let t = map_entry(map, &self.key(name), &shape)?
                    .clone()
                    .reshape(shape);
                self.count(&t);
                return Ok(t);
            }
            Source::Record(names) => {
                names.borrow_mut().push((self.key(name), shape.to_vec()));
                return Ok(Tensor::zeros(shape, (self.device, self.dtype)));
            }
            _ => {}
        }
        if let Source::Random = self.source {
            let options = (self.device, self.dtype);
            let t = if D == 1 {
                Tensor::ones(shape, options)
            } else {
                let a = 1.0 / (shape[D - 1] as f64).sqrt();
                Tensor::random(shape, Distribution::Uniform(-a, a), options)
            };
            self.count(&t);
            return Ok(t);
        }
        let values = self.host(name, &shape)?;
        Ok(self.upload(values, shape))
    }

    /// Creates a device tensor (in this view's dtype) from host values.
    pub fn upload<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        let t = upload(values, shape, self.device, self.dtype);
        self.count(&t);
        t
    }
}

/// The flat tensor of `key`, its stored shape checked against `shape`.
fn map_entry<'m>(map: &'m TensorMap, key: &str, shape: &[usize]) -> Result<&'m Tensor<1>> {
    match map.get(key) {
        None => Err(crate::Error::MissingTensor {
            name: key.to_string(),
            searched: "the tensors in memory".into(),
            expected: shape.to_vec(),
        }),
        Some((stored, _)) if stored.as_slice() != shape => Err(crate::Error::Tensor {
            file: "<memory>".into(),
            name: key.to_string(),
            msg: format!("shape {stored:?}, expected {shape:?}"),
        }),
        Some((_, t)) => Ok(t),
    }
}

/// Deterministic uniform(±1/√fan_in) host values for `key` (random mode).
fn random_host(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if shape.len() <= 1 {
        return vec![1.0; n];
    }
    let a = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
    // FNV-1a of the name seeds a xorshift: the same model every run, no RNG dependency.
    let mut state = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}
