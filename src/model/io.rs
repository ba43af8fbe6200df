//! Model files: weights in safetensors (PyTorch names and layouts, f32) plus a JSON config with the
//! dimensions, gene and batch names, homologous genes, training schedule and the format version.
//! Loading refuses a file whose shapes or config do not match, with the reason.

use super::{Model, ModelConfig};
use crate::engine::Backend;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT_VERSION: u32 = 1;

/// Transpose a row-major [r×c] matrix.
pub fn transpose(v: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}

impl<B: Backend> Model<B> {
    /// A parameter's values in PyTorch layout.
    pub fn get_torch(&self, be: &B, idx: usize) -> Vec<f64> {
        let p = &self.params[idx];
        let v = be.download(&p.value);
        if p.transposed { transpose(&v, p.torch_shape[1], p.torch_shape[0]) } else { v }
    }

    /// Set a parameter from values in PyTorch layout (length checked by the caller via `torch_shape`).
    pub fn set_torch(&mut self, be: &B, idx: usize, v: &[f64]) {
        let p = &mut self.params[idx];
        let stored = if p.transposed { transpose(v, p.torch_shape[0], p.torch_shape[1]) } else { v.to_vec() };
        p.value = be.upload(&stored);
    }

    /// A gradient in PyTorch layout.
    pub fn grad_torch(&self, be: &B, idx: usize) -> Vec<f64> {
        let p = &self.params[idx];
        let g = be.download(&self.grads[idx]);
        if p.transposed { transpose(&g, p.torch_shape[1], p.torch_shape[0]) } else { g }
    }
}

/// What is saved beside the weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFile {
    pub format: String,
    pub format_version: u32,
    pub scspecies_version: String,
    pub model: ModelConfig,
    pub genes: Vec<String>,
    pub batches: Vec<String>,
    /// Names of the homologous genes, in the model's homologous order.
    pub homologous_names: Vec<String>,
    /// Labels of the training cells' types (context), if any.
    pub labels: Vec<String>,
    /// Training history and schedule values (free-form JSON).
    pub training: serde_json::Value,
}

/// Write `<stem>.safetensors` and `<stem>.json` atomically.
pub fn save<B: Backend>(model: &Model<B>, be: &B, meta: &ModelFile, stem: &Path) -> Result<()> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let v: Vec<f32> = model.get_torch(be, i).iter().map(|&x| x as f32).collect();
            (p.name.clone(), p.torch_shape.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    // One metadata key: safetensors keeps metadata in a HashMap, and several keys would be written in a
    // different order by each process, so that identical models gave different files.
    let md = std::collections::HashMap::from([("format".to_string(), format!("scspecies/{FORMAT_VERSION}"))]);
    let bytes = safetensors::serialize(views, Some(md)).map_err(|e| Error::Input(format!("cannot serialise weights: {e}")))?;
    let st = stem.with_extension("safetensors");
    crate::out::write_bytes_atomic(&st, &bytes)?;
    crate::out::write_json(&stem.with_extension("json"), meta)
}

/// Read a model saved by [`save`] into a new model on `be`.
pub fn load<B: Backend>(be: &B, stem: &Path) -> Result<(Model<B>, ModelFile)> {
    let jp = stem.with_extension("json");
    let sp = stem.with_extension("safetensors");
    let text = std::fs::read_to_string(&jp).map_err(|e| Error::io(&jp, e))?;
    let meta: ModelFile = serde_json::from_str(&text).map_err(|e| Error::format(&jp, format!("not a scspecies model config: {e}")))?;
    if meta.format != "scspecies" {
        return Err(Error::format(&jp, format!("format is '{}', expected 'scspecies'", meta.format)));
    }
    if meta.format_version != FORMAT_VERSION {
        return Err(Error::format(
            &jp,
            format!("model format version {} is not supported by this build (version {FORMAT_VERSION})", meta.format_version),
        ));
    }
    let c = &meta.model;
    if meta.genes.len() != c.n_genes || meta.batches.len() != c.n_batches {
        return Err(Error::format(
            &jp,
            format!(
                "{} gene and {} batch names for a model of {} genes and {} batches",
                meta.genes.len(),
                meta.batches.len(),
                c.n_genes,
                c.n_batches
            ),
        ));
    }
    c.validate().map_err(|m| Error::format(&jp, format!("model config: {m}")))?;
    let bytes = std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&sp, format!("not a safetensors file: {e}")))?;
    // Four bytes per parameter must be in the weights file: a config cannot make us build a model
    // larger than the file that claims to hold it.
    let file_len = bytes.len() as u64;
    // (Generous: an exact mismatch is reported tensor by tensor below.)
    if c.n_params().saturating_mul(4) > file_len.saturating_mul(2).saturating_add(1 << 20) {
        return Err(Error::format(
            &sp,
            format!("{} bytes cannot hold the {} parameters the config in {} describes", file_len, c.n_params(), jp.display()),
        ));
    }
    // Initial values are overwritten below; any seed will do.
    let mut rng = <rand::rngs::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut model = Model::new(be, c.clone(), &mut rng);
    for i in 0..model.params.len() {
        let name = model.params[i].name.clone();
        let t =
            st.tensor(&name).map_err(|_| Error::format(&sp, format!("tensor '{name}' is missing (the file does not match its config)")))?;
        if t.shape() != model.params[i].torch_shape.as_slice() {
            return Err(Error::format(
                &sp,
                format!("tensor '{name}' has shape {:?}, the config implies {:?}", t.shape(), model.params[i].torch_shape),
            ));
        }
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(Error::format(&sp, format!("tensor '{name}' is {:?}, expected F32", t.dtype())));
        }
        let v: Vec<f64> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::format(&sp, format!("tensor '{name}' holds non-finite values")));
        }
        model.set_torch(be, i, &v);
    }
    if st.len() != model.params.len() {
        return Err(Error::format(&sp, format!("{} tensors, but the config implies {}", st.len(), model.params.len())));
    }
    Ok((model, meta))
}
