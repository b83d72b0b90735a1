use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = gapwatch::cli::Cli::parse();
    gapwatch::cli::main(cli)
}
