//! Embeds the CUDA kernel sources in `kernels/*.cu` into the crate, so one binary carries them and
//! compiles them with NVRTC at run time (no nvcc at build time, no CUDA needed to build).

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|s| s.to_str()) == Some("cu") {
                println!("cargo:rerun-if-changed={}", p.display());
                let name = p.file_stem().unwrap().to_string_lossy().to_string();
                entries.push((name, p.display().to_string()));
            }
        }
    }
    entries.sort();
    let mut code = String::from(
        "/// (module name, CUDA C source) of every file in `kernels/`, sorted by name.\npub const KERNEL_SOURCES: &[(&str, &str)] = &[\n",
    );
    // kernels/common.cuh goes in front of every module; #line keeps NVRTC's line numbers the module's own.
    let common = dir.join("common.cuh");
    println!("cargo:rerun-if-changed={}", common.display());
    let common = common.display().to_string();
    for (name, path) in &entries {
        code +=
            &format!("    ({name:?}, concat!(include_str!({common:?}), \"\\n#line 1 \\\"{name}.cu\\\"\\n\", include_str!({path:?}))),\n");
    }
    code += "];\n";
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("kernels.rs");
    std::fs::write(out, code).unwrap();
}
