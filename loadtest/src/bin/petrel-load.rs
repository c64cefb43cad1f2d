//! `petrel-load`: the `petrel load` subcommands as a standalone binary (same code path).
// No unwrap outside tests: propagate a typed error, or `expect` an invariant checked right there.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use clap::Parser;

#[derive(Parser)]
#[command(name = "petrel-load", about = "Petrel load harness: inject, sink, run")]
struct Cli {
    #[command(subcommand)]
    cmd: petrel_loadtest::LoadCommand,
}

fn main() {
    let cli = Cli::parse();
    let code = match petrel_loadtest::run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petrel-load: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
