//! Checkpoints: one safetensors file per training phase, rewritten atomically at the end of every epoch.
//! It holds every parameter with its Adam moments (in the backend's storage layout, f32 where that is
//! exact, else f64) and, in the file's metadata, the JSON state: epochs done, Adam step, learning rate,
//! history and a fingerprint of the run's settings and data. Resuming from it on the CPU backend gives
//! bit for bit the result of the uninterrupted run, because every random draw comes from a stream keyed
//! by (seed, epoch, step) and nothing else carries over between epochs.

use crate::engine::Backend;
use crate::error::{Error, Result};
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CHECKPOINT_FORMAT: &str = "scspecies-checkpoint";
pub const CHECKPOINT_VERSION: u32 = 1;
const STATE_KEY: &str = "state";

/// What to do when a loss term or a gradient is not finite.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum OnNan {
    /// Stop with a message naming epoch, step, term and the last good checkpoint.
    Stop,
    /// Reload the last checkpoint, multiply the learning rate by `lr_factor` and go on, at most
    /// `max_retries` times per phase.
    Rollback { lr_factor: f64, max_retries: usize },
}

/// Where a training phase writes its checkpoints and from where it may resume.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// Written (atomically) after every `every` epochs, after an epoch that ends `min_seconds` or
    /// more after the last checkpoint, and after the last epoch (when either is set).
    pub path: PathBuf,
    /// Resume from this file when it exists.
    pub resume_from: Option<PathBuf>,
    /// Settings and data of the run; a checkpoint with another fingerprint is refused.
    pub fingerprint: serde_json::Value,
    /// Every this many epochs (0: not by count).
    pub every: usize,
    /// After an epoch ending at least this long after the last checkpoint (0: not by time).
    pub min_seconds: f64,
}

/// The default spacing of checkpoints in time. A checkpoint (the model and Adam's moments, about
/// 200 MB on the bundled pair, synced to disk) took 0.4-1.1 s here: one per epoch was a third of
/// the default run; one per two minutes costs under 1 % and loses at most two minutes to a crash.
pub const AUTO_SECONDS: f64 = 120.0;

impl Checkpointing {
    /// Whether a checkpoint is due after `done` of `epochs` epochs, `since` seconds after the last.
    pub fn due(&self, done: usize, epochs: usize, since: f64) -> bool {
        let by_count = self.every > 0 && done.is_multiple_of(self.every);
        let by_time = self.min_seconds > 0.0 && since >= self.min_seconds;
        let last = (self.every > 0 || self.min_seconds > 0.0) && done == epochs;
        by_count || by_time || last
    }
}

/// Checkpoints and the divergence policy of a training phase.
#[derive(Debug, Clone)]
pub struct Guard {
    pub checkpoint: Option<Checkpointing>,
    pub on_nan: OnNan,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { checkpoint: None, on_nan: OnNan::Stop }
    }
}

/// The JSON part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: String,
    pub version: u32,
    pub phase: String,
    pub fingerprint: serde_json::Value,
    pub epochs_done: usize,
    pub adam_step: u64,
    /// The learning rate in use (lower than the configured one after a rollback).
    pub lr: f64,
    pub rollbacks: usize,
    pub history: serde_json::Value,
}

fn exact_in_f32(v: &[f64]) -> bool {
    v.iter().all(|&x| (x as f32) as f64 == x || x.is_nan())
}

/// One checkpoint tensor, downloaded from the backend only when the safetensors writer asks for its
/// bytes: one tensor on the host at a time, never a second copy of the whole model.
struct Lazy<'a, B: Backend> {
    be: &'a B,
    buf: &'a B::Buf,
    shape: [usize; 1],
    /// Stored as F64 because some value is not exact in f32 (the f64 backend of the gradient checks).
    f64: bool,
}

impl<B: Backend> safetensors::View for Lazy<'_, B> {
    fn dtype(&self) -> safetensors::Dtype {
        if self.f64 { safetensors::Dtype::F64 } else { safetensors::Dtype::F32 }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let bytes: Vec<u8> = match (self.f64, self.be.download_f32(self.buf)) {
            (false, Some(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (false, None) => self.be.download(self.buf).iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
            (true, _) => self.be.download(self.buf).iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        std::borrow::Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape[0] * if self.f64 { 8 } else { 4 }
    }
}

/// Write the model's parameters, Adam moments and `state` to `path` atomically, in the safetensors
/// layout (written by the `safetensors` crate, as the model files), streaming each tensor from the
/// backend.
pub fn save<B: Backend>(be: &B, model: &Model<B>, state: &State, path: &Path) -> Result<()> {
    // A backend that stores f32 says so for any buffer: asked once, on the smallest, instead of copying
    // every tensor an extra time; otherwise (the f64 backend) each tensor is checked.
    let stores_f32 = model.params.iter().min_by_key(|p| be.len(&p.value)).is_some_and(|p| be.download_f32(&p.value).is_some());
    let exact_f32 = |buf: &B::Buf| stores_f32 || exact_in_f32(&be.download(buf));
    let mut tensors: Vec<(String, Lazy<'_, B>)> = Vec::with_capacity(3 * model.params.len());
    for p in &model.params {
        for (kind, buf) in [("value", &p.value), ("adam_m", &p.m), ("adam_v", &p.v)] {
            tensors.push((format!("{kind}.{}", p.name), Lazy { be, buf, shape: [be.len(buf)], f64: !exact_f32(buf) }));
        }
    }
    let json = serde_json::to_string(state).map_err(|e| Error::write(path, std::io::Error::other(e)))?;
    let meta = std::collections::HashMap::from([(STATE_KEY.to_string(), json)]);
    if let Some(dir) = path.parent() {
        crate::out::create_out_dir(dir)?;
    }
    // Atomic: written beside `path` and renamed onto it once complete.
    let tmp = crate::out::temp_path(path);
    let res = safetensors::serialize_to_file(tensors, Some(meta), &tmp)
        .map_err(std::io::Error::other)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::write(path, e));
    }
    Ok(())
}

/// Read only the JSON state of a checkpoint.
pub fn read_state(path: &Path) -> Result<State> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a scspecies checkpoint (safetensors header unreadable: {e})")))?;
    parse_state(path, meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)))
}

fn parse_state(path: &Path, json: Option<&String>) -> Result<State> {
    let json = json.ok_or_else(|| Error::format(path, "not a scspecies checkpoint (no training state in its metadata)"))?;
    let st: State = serde_json::from_str(json).map_err(|e| Error::format(path, format!("checkpoint state unreadable: {e}")))?;
    if st.format != CHECKPOINT_FORMAT || st.version != CHECKPOINT_VERSION {
        return Err(Error::format(
            path,
            format!("checkpoint format '{}' version {} is not '{CHECKPOINT_FORMAT}' version {CHECKPOINT_VERSION}", st.format, st.version),
        ));
    }
    Ok(st)
}

/// Load a checkpoint into `model` (same architecture) and return its state.
pub fn load<B: Backend>(be: &B, model: &mut Model<B>, path: &Path) -> Result<State> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a scspecies checkpoint (safetensors unreadable: {e})")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, e.to_string()))?;
    let state = parse_state(path, meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)))?;
    if st.len() != 3 * model.params.len() {
        return Err(Error::format(path, format!("{} tensors, the model needs {}", st.len(), 3 * model.params.len())));
    }
    for p in model.params.iter_mut() {
        let n = be.len(&p.value);
        for kind in ["value", "adam_m", "adam_v"] {
            let name = format!("{kind}.{}", p.name);
            let t = st.tensor(&name).map_err(|_| Error::format(path, format!("tensor '{name}' is missing")))?;
            if t.shape() != [n] {
                return Err(Error::format(path, format!("tensor '{name}' has shape {:?}, the model needs [{n}]", t.shape())));
            }
            let v: Vec<f64> = match t.dtype() {
                safetensors::Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
                safetensors::Dtype::F64 => t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
                d => return Err(Error::format(path, format!("tensor '{name}' is {d:?}, expected F32 or F64"))),
            };
            let buf = be.upload(&v);
            match kind {
                "value" => p.value = buf,
                "adam_m" => p.m = buf,
                _ => p.v = buf,
            }
        }
    }
    model.step = state.adam_step;
    Ok(state)
}

/// The keys in which two fingerprints differ (for the refusal message).
pub fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let mut keys: Vec<String> = x.keys().chain(y.keys()).filter(|k| x.get(*k) != y.get(*k)).cloned().collect();
            keys.sort();
            keys.dedup();
            keys
        }
        _ => vec!["(all)".into()],
    }
}

/// A 64-bit FNV-1a hash, for fingerprints of data (not for security).
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    pub fn u64s(&mut self, v: impl IntoIterator<Item = u64>) -> &mut Self {
        for x in v {
            self.bytes(&x.to_le_bytes());
        }
        self
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Fingerprint of a count matrix (shape, structure and values).
pub fn hash_counts(c: &crate::data::Csr) -> String {
    let mut h = Fnv::default();
    h.u64s([c.n_rows as u64, c.n_cols as u64]);
    h.u64s(c.indptr.iter().map(|&x| x as u64));
    h.u64s(c.indices.iter().map(|&x| x as u64));
    h.u64s(c.data.iter().map(|&x| x.to_bits() as u64));
    h.hex()
}
