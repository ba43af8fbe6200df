//! AnnData `.h5ad` writer (the anndata >= 0.8 on-disk format: encoding-type/encoding-version attributes,
//! dataframes with `_index` and `column-order`, CSR `X`, `obsm` matrices and a nested `uns`), readable by
//! Python's anndata/scanpy and by our own reader.

use crate::data::{Categorical, Csr};
use crate::error::{Error, Result};
use hdf5_pure::{AttrValue, FileBuilder};
use std::path::Path;

/// A column of obs or var.
#[derive(Debug, Clone)]
pub enum Values {
    Strings(Vec<String>),
    Categorical(Categorical),
    F64(Vec<f64>),
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// Stored as h5py stores numpy's bool (an int8 enum FALSE = 0, TRUE = 1), read by anndata as bool.
    Bool(Vec<bool>),
}

/// An `uns` entry.
#[derive(Debug, Clone)]
pub enum Uns {
    Str(String),
    F64(f64),
    I64(i64),
    Strings(Vec<String>),
    F64s(Vec<f64>),
    Dict(Vec<(String, Uns)>),
}

/// Everything one `.h5ad` holds that we write.
#[derive(Debug, Clone, Default)]
pub struct AnnData {
    /// Optional (cells x genes) matrix; without it `X` is omitted and only shapes come from the names.
    pub x: Option<Csr>,
    pub obs_names: Vec<String>,
    pub obs: Vec<(String, Values)>,
    pub var_names: Vec<String>,
    pub var: Vec<(String, Values)>,
    /// name, number of columns, row-major values (cells x columns).
    pub obsm: Vec<(String, usize, Vec<f32>)>,
    pub uns: Vec<(String, Uns)>,
}

fn enc(ty: &str, ver: &str) -> [(&'static str, AttrValue); 2] {
    [("encoding-type", AttrValue::String(ty.into())), ("encoding-version", AttrValue::String(ver.into()))]
}

type GB = hdf5_pure::GroupBuilder;

fn set_enc(g: &mut GB, ty: &str, ver: &str) {
    for (k, v) in enc(ty, ver) {
        g.set_attr(k, v);
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

fn write_strings(g: &mut GB, name: &str, v: &[String]) {
    let d = g.create_dataset(name);
    d.with_vlen_strings(&strs(v));
    for (k, a) in enc("string-array", "0.2.0") {
        d.set_attr(k, a);
    }
}

fn write_values(g: &mut GB, name: &str, v: &Values) {
    match v {
        Values::Strings(s) => write_strings(g, name, s),
        Values::Categorical(c) => {
            let mut cg = g.create_group(name);
            set_enc(&mut cg, "categorical", "0.2.0");
            cg.set_attr("ordered", AttrValue::U8(0));
            let codes: Vec<i32> = c.codes.iter().map(|x| x.map(|v| v as i32).unwrap_or(-1)).collect();
            cg.create_dataset("codes").with_i32_data(&codes);
            write_strings(&mut cg, "categories", &c.categories);
            g.add_group(cg.finish());
        }
        Values::F64(x) => array(g.create_dataset(name).with_f64_data(x)),
        Values::F32(x) => array(g.create_dataset(name).with_f32_data(x)),
        Values::I64(x) => array(g.create_dataset(name).with_i64_data(x)),
        Values::Bool(x) => {
            let dt = hdf5_pure::EnumTypeBuilder::with_base(hdf5_pure::make_i8_type())
                .value("FALSE", 0)
                .value("TRUE", 1)
                .build()
                .expect("a two-member int8 enum is a valid datatype");
            let v: Vec<u8> = x.iter().map(|&b| b as u8).collect();
            array(g.create_dataset(name).with_enum_u8_data(dt, &v))
        }
    }
}

fn array(d: &mut hdf5_pure::DatasetBuilder) {
    for (k, a) in enc("array", "0.2.0") {
        d.set_attr(k, a);
    }
}

fn dataframe(b: &mut FileBuilder, name: &str, index: &[String], cols: &[(String, Values)]) {
    let mut g = b.create_group(name);
    set_enc(&mut g, "dataframe", "0.2.0");
    g.set_attr("_index", AttrValue::String("_index".into()));
    let order: Vec<String> = cols.iter().map(|c| c.0.clone()).collect();
    g.set_attr("column-order", if order.is_empty() { AttrValue::F64Array(vec![]) } else { AttrValue::StringArray(order) });
    write_strings(&mut g, "_index", index);
    for (k, v) in cols {
        write_values(&mut g, k, v);
    }
    b.add_group(g.finish());
}

fn uns_into(g: &mut GB, name: &str, v: &Uns) {
    match v {
        Uns::Str(s) => {
            let d = g.create_dataset(name);
            d.with_vlen_strings(&[s.as_str()]).with_shape(&[]);
            for (k, a) in enc("string", "0.2.0") {
                d.set_attr(k, a);
            }
        }
        Uns::F64(x) => {
            let d = g.create_dataset(name);
            d.with_f64_data(&[*x]).with_shape(&[]);
            for (k, a) in enc("numeric-scalar", "0.2.0") {
                d.set_attr(k, a);
            }
        }
        Uns::I64(x) => {
            let d = g.create_dataset(name);
            d.with_i64_data(&[*x]).with_shape(&[]);
            for (k, a) in enc("numeric-scalar", "0.2.0") {
                d.set_attr(k, a);
            }
        }
        Uns::Strings(s) => write_strings(g, name, s),
        Uns::F64s(x) => array(g.create_dataset(name).with_f64_data(x)),
        Uns::Dict(items) => {
            let mut sub = g.create_group(name);
            set_enc(&mut sub, "dict", "0.1.0");
            for (k, v) in items {
                uns_into(&mut sub, k, v);
            }
            g.add_group(sub.finish());
        }
    }
}

impl AnnData {
    fn check(&self) -> std::result::Result<(), String> {
        let n = self.obs_names.len();
        let g = self.var_names.len();
        if let Some(x) = &self.x
            && (x.n_rows != n || x.n_cols != g)
        {
            return Err(format!("X is {} x {} but there are {n} obs and {g} var names", x.n_rows, x.n_cols));
        }
        for (k, v) in &self.obs {
            if values_len(v) != n {
                return Err(format!("obs column '{k}' has {} values for {n} cells", values_len(v)));
            }
        }
        for (k, v) in &self.var {
            if values_len(v) != g {
                return Err(format!("var column '{k}' has {} values for {g} genes", values_len(v)));
            }
        }
        for (k, c, v) in &self.obsm {
            if v.len() != n * c {
                return Err(format!("obsm '{k}' has {} values, expected {n} x {c}", v.len()));
            }
        }
        Ok(())
    }

    /// Serialise to bytes.
    pub fn to_bytes(&self) -> std::result::Result<Vec<u8>, String> {
        self.check()?;
        let mut b = FileBuilder::new();
        for (k, v) in enc("anndata", "0.1.0") {
            b.set_attr(k, v);
        }
        if let Some(x) = &self.x {
            let mut g = b.create_group("X");
            set_enc(&mut g, "csr_matrix", "0.1.0");
            g.set_attr("shape", AttrValue::I64Array(vec![x.n_rows as i64, x.n_cols as i64]));
            g.create_dataset("data").with_f32_data(&x.data);
            let idx: Vec<i32> = x.indices.iter().map(|&i| i as i32).collect();
            g.create_dataset("indices").with_i32_data(&idx);
            let ptr: Vec<i64> = x.indptr.iter().map(|&p| p as i64).collect();
            g.create_dataset("indptr").with_i64_data(&ptr);
            b.add_group(g.finish());
        }
        dataframe(&mut b, "obs", &self.obs_names, &self.obs);
        dataframe(&mut b, "var", &self.var_names, &self.var);
        let mut obsm = b.create_group("obsm");
        set_enc(&mut obsm, "dict", "0.1.0");
        for (k, c, v) in &self.obsm {
            let d = obsm.create_dataset(k);
            d.with_f32_data(v).with_shape(&[self.obs_names.len() as u64, *c as u64]);
            array(d);
        }
        b.add_group(obsm.finish());
        for empty in ["varm", "obsp", "varp", "layers"] {
            let mut g = b.create_group(empty);
            set_enc(&mut g, "dict", "0.1.0");
            b.add_group(g.finish());
        }
        let mut uns = b.create_group("uns");
        set_enc(&mut uns, "dict", "0.1.0");
        for (k, v) in &self.uns {
            uns_into(&mut uns, k, v);
        }
        b.add_group(uns.finish());
        b.finish().map_err(|e| e.to_string())
    }

    /// Write atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes().map_err(|m| Error::format(path, format!("cannot build .h5ad: {m}")))?;
        super::write_bytes_atomic(path, &bytes)
    }
}

fn values_len(v: &Values) -> usize {
    match v {
        Values::Strings(s) => s.len(),
        Values::Categorical(c) => c.len(),
        Values::F64(x) => x.len(),
        Values::F32(x) => x.len(),
        Values::I64(x) => x.len(),
        Values::Bool(x) => x.len(),
    }
}
