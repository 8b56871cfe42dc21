//! Compiles kadr's CUDA kernels (`kadr_ops.cu`) to PTX, only with the `cuda` feature.
//!
//! Without the feature this does nothing, so CPU builds (and CI) never need nvcc. With it, nvcc
//! is taken from `$CUDA_ROOT/bin`, `$CUDA_PATH/bin`, `$CUDA_HOME/bin` or `PATH`, and the virtual
//! architecture from `CUDA_COMPUTE_CAP` (digits only, e.g. `90` -> `compute_90`; default 90).
//! The PTX lands in `$OUT_DIR/kadr_ops.ptx`, which `src/cuda.rs` embeds; the driver JITs
//! it for the actual GPU when the module is first loaded.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo::rerun-if-changed=kadr_ops.cu");
    for v in [
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
        "NVCC",
    ] {
        println!("cargo::rerun-if-env-changed={v}");
    }

    let nvcc = env::var_os("NVCC").map(PathBuf::from).unwrap_or_else(|| {
        ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"]
            .iter()
            .filter_map(env::var_os)
            .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("nvcc"))
    });
    let cap: String = env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "90".into())
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let cap = if cap.is_empty() {
        "90".to_string()
    } else {
        cap
    };

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("kadr_ops.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("kadr_ops.cu")
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (feature `cuda` needs nvcc): {e}",
                nvcc.display()
            )
        });
    if !status.success() {
        panic!("{} failed on kadr_ops.cu: {status}", nvcc.display());
    }
}
