use clap::Parser;

fn main() {
    let cli = scspecies::cli::Cli::parse();
    if let Err(e) = scspecies::cli::run(cli) {
        // The message already carries its cause (file, key or value), so print it once.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
