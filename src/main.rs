use clap::Parser;

/// glibc's malloc returns every block over its mmap threshold to the kernel on free, so the decoder's
/// per-chunk buffers (cells x genes, ~33 MB each) page-fault afresh on every reuse: 17 % of the
/// alignment's candidate choice. Keep blocks up to 32 MiB (the largest threshold glibc accepts) and
/// freed memory on the heap instead; the peak resident size does not grow, it is reached sooner.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
        mallopt(M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let cli = scspecies::cli::Cli::parse();
    if let Err(e) = scspecies::cli::run(cli) {
        // The message already carries its cause (file, key or value), so print it once.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
