//! The `ratchet` binary: a thin shell over the library.

fn main() -> std::process::ExitCode {
    ratchet::cli::main()
}
