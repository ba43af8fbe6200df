//! Every CUDA kernel module compiles with NVRTC and assembles for sm_90 with ptxas, which reports
//! registers and spills per kernel. Needs no GPU: NVRTC and ptxas come from the PyPI wheels
//! `nvidia-cuda-nvrtc` and `nvidia-cuda-nvcc` that `.ci/run` unpacks into `.ci/cuda` (it sets
//! LD_LIBRARY_PATH for libnvrtc and SCSPECIES_PTXAS). Outside CI, a machine without them skips with a
//! message; in CI (`CI` set) they are required.
#![cfg(feature = "cuda")]

use scspecies::kernels::{KERNEL_SOURCES, nvrtc};

fn tools_required() -> bool {
    std::env::var_os("CI").is_some()
}

#[test]
fn every_kernel_compiles_with_nvrtc_and_assembles_for_sm90() {
    assert!(KERNEL_SOURCES.len() >= 6, "kernels/ should hold the backend's modules");
    if !nvrtc::available() {
        assert!(
            !tools_required(),
            "CI: libnvrtc was not found (LD_LIBRARY_PATH={:?}); .ci/run installs it",
            std::env::var("LD_LIBRARY_PATH")
        );
        eprintln!(
            "SKIPPED: libnvrtc is not loadable here, so the CUDA kernels were not compiled (run .ci/run, or put nvidia/cu13/lib of the nvidia-cuda-nvrtc wheel on LD_LIBRARY_PATH)"
        );
        return;
    }
    let ptxas = std::env::var_os("SCSPECIES_PTXAS");
    if ptxas.is_none() {
        assert!(!tools_required(), "CI: SCSPECIES_PTXAS is not set; .ci/run installs ptxas");
        eprintln!("NOTE: SCSPECIES_PTXAS not set: NVRTC compile only, no sm_90 assembly or register report");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for (name, src) in KERNEL_SOURCES {
        let ptx = nvrtc::compile(name, src, "compute_90").unwrap_or_else(|e| panic!("{e}"));
        assert!(ptx.contains(".entry"), "kernels/{name}.cu produced no kernel entry");
        let Some(ptxas) = &ptxas else { continue };
        let path = dir.path().join(format!("{name}.ptx"));
        std::fs::write(&path, &ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.path().join(format!("{name}.cubin")))
            .arg(&path)
            .output()
            .expect("ptxas runs");
        let log = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ptxas rejected kernels/{name}.cu:\n{log}");
        // "Compiling entry function 'x' for 'sm_90'" ... "Used N registers" ... "N bytes spill stores".
        // Other "Function properties" blocks (device functions that were not inlined) are skipped.
        let mut entry: Option<String> = None;
        for line in log.lines() {
            if let Some(i) = line.find("Compiling entry function '") {
                entry = line[i + 26..].split('\'').next().map(|s| s.to_string());
            }
            if line.contains("spill stores")
                && let Some(e) = entry.take()
            {
                report.push(format!("{name}/{e}: {}", line.split("ptxas info    : ").last().unwrap_or(line).trim()));
            }
            if line.contains("Used") && line.contains("registers") {
                let regs = line.split("Used ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("?");
                if let Some(last) = report.last_mut() {
                    last.push_str(&format!(", {regs} registers"));
                }
            }
        }
    }
    for r in &report {
        eprintln!("{r}");
    }
    if ptxas.is_some() {
        let entries: usize = KERNEL_SOURCES.iter().map(|(_, s)| s.matches("__global__").count()).sum();
        assert_eq!(report.len(), entries, "ptxas reported {} of {entries} kernels", report.len());
        // The CUDA backend loads kernels by the names `entry_points` finds: the same set ptxas saw.
        let mut found: Vec<String> = KERNEL_SOURCES
            .iter()
            .flat_map(|(m, s)| scspecies::kernels::entry_points(s).into_iter().map(move |e| format!("{m}/{e}")))
            .collect();
        let mut seen: Vec<String> = report.iter().map(|r| r.split(':').next().unwrap().to_string()).collect();
        found.sort();
        seen.sort();
        assert_eq!(found, seen, "kernel names found in the sources differ from what ptxas compiled");
    }
}

#[test]
fn a_broken_kernel_is_an_error_naming_the_file() {
    if !nvrtc::available() {
        eprintln!("SKIPPED: libnvrtc is not loadable here");
        return;
    }
    let e = nvrtc::compile("broken", "extern \"C\" __global__ void k(float* x) { x[0] = undefined_thing; }", "compute_90").unwrap_err();
    assert!(e.contains("kernels/broken.cu") && e.contains("undefined_thing"), "{e}");
}
