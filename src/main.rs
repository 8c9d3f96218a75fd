//! `wdml`: one binary, one subcommand per process kind.
//!
//! ```text
//! wdml run [SCENARIO]          the local launcher: a coordinator and N nodes on loopback
//! wdml coordinator --config F  the round coordinator
//! wdml node --id K --model M --coordinator HOST:PORT
//! ```

mod cli;
mod scenario;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cli::main(cli)
}
