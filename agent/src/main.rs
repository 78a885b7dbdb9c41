//! `vadp-agent`: parse the command line, set up logging, run the subcommand and map its
//! error to an exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use vadp_agent::cli;

#[derive(Debug, Parser)]
#[command(name = "vadp-agent", version, about)]
struct Cli {
    /// Print results and logs as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The VDDK library: `vddk info`.
    Vddk(cli::vddk::VddkArgs),
}

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    cli::vddk::exit_code(err).unwrap_or(1)
}

fn main() -> ExitCode {
    let args = Cli::parse();
    init_tracing(args.json);
    let result = match args.command {
        Command::Vddk(vddk) => cli::vddk::run(vddk, args.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}
