//! The `kiln` command: host daemon and CLI (see [`kiln::cli`]).

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
