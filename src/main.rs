//! The `skor` binary: parses the command line and runs it.

fn main() -> std::process::ExitCode {
    skor::cli::main(std::env::args().collect())
}
