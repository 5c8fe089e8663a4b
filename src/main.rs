//! `resnet-edge`: the command line over the library (see `cli.rs` for the commands).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resnet-edge: error: {e}");
            ExitCode::FAILURE
        }
    }
}
