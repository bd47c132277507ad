//! `mawex`: see `mawex --help` and docs/cli.md.

fn main() -> std::process::ExitCode {
    mawex_cli::run().into()
}
