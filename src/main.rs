//! `resnet-edge`: the command line over the library (see `cli.rs` for the commands).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Die quietly like other Unix tools when the reader of stdout goes away (`| head`),
    // instead of panicking on the failed write.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resnet-edge: error: {e}");
            ExitCode::FAILURE
        }
    }
}
