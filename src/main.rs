//! `wdml`: one binary, one subcommand per process kind.
//!
//! ```text
//! wdml run [SCENARIO]          the local launcher: a coordinator and N nodes on loopback
//! wdml coordinator --config F  the round coordinator
//! wdml node --id K --model M --coordinator HOST:PORT
//! ```

mod cli;

pub(crate) use wdml::scenario;

use clap::Parser;

/// Candle allocates a fresh buffer for every tensor op; glibc's allocator returns
/// the large ones to the OS (mmap/munmap) each time. mimalloc keeps them: see the
/// README's performance notes for the measured difference.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // Before any socket or file: every listener's caps are sized from the result.
    wdml_transport::raise_open_files();
    cli::main(cli)
}
