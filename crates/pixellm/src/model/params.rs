//! Reads named checkpoint tensors onto a device, checking shapes on the way.
//!
//! Model code asks for `model.layers.3.mlp.up_proj.weight` with the shape it expects; the
//! name sits next to the field it fills (as in candle's `VarBuilder`), so no key-remapping
//! table exists anywhere, and every failure names the tensor, the file and the shape.

use std::cell::{Cell, RefCell};

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::Result;
use crate::weights::WeightFiles;

/// Counts the checkpoint bytes read so far and reports them, for a progress bar.
pub struct LoadMonitor<'a> {
    done: Cell<u64>,
    total: u64,
    report: RefCell<&'a mut dyn FnMut(u64, u64)>,
}

impl<'a> LoadMonitor<'a> {
    /// `report(done, total)` is called after every tensor.
    pub fn new(total: u64, report: &'a mut dyn FnMut(u64, u64)) -> Self {
        Self {
            done: Cell::new(0),
            total,
            report: RefCell::new(report),
        }
    }

    fn add(&self, bytes: u64) {
        let done = (self.done.get() + bytes).min(self.total);
        self.done.set(done);
        (self.report.borrow_mut())(done, self.total);
    }
}

/// A view of the opened checkpoint files under a key prefix, bound to a device and dtype.
#[derive(Clone)]
pub struct Params<'a> {
    files: &'a WeightFiles,
    device: &'a Device,
    dtype: DType,
    prefix: String,
    monitor: Option<&'a LoadMonitor<'a>>,
}

impl<'a> Params<'a> {
    /// Root view (empty prefix). Float tensors are created in `dtype` on `device`.
    pub fn new(files: &'a WeightFiles, device: &'a Device, dtype: DType) -> Self {
        Self {
            files,
            device,
            dtype,
            prefix: String::new(),
            monitor: None,
        }
    }

    /// Reports every tensor read to `monitor`.
    pub fn with_monitor(self, monitor: &'a LoadMonitor<'a>) -> Self {
        Self {
            monitor: Some(monitor),
            ..self
        }
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
        self.files.contains(&self.key(name))
    }

    /// Reads `name` as f32 on the host, checking its shape.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = self.key(name);
        let values = self.files.read_f32(&key, shape)?;
        if let Some(m) = self.monitor {
            m.add(self.files.stored_bytes(&key));
        }
        Ok(values)
    }

    /// Reads `name` onto the device, checking its shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let values = self.host(name, &shape)?;
        Ok(self.upload(values, shape))
    }

    /// Creates a device tensor (in this view's dtype) from host values.
    pub fn upload<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        upload(values, shape, self.device, self.dtype)
    }
}

/// Creates a float tensor of `shape` from host values on `device`, in `dtype`.
pub fn upload<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    let data = TensorData::new(values, shape);
    let t = Tensor::<D>::from_data(data, (device, DType::F32));
    if dtype == DType::F32 {
        t
    } else {
        t.cast(dtype)
    }
}
