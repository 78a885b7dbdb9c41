//! `vadp-agent`: parse the command line, set up logging, run, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;
use vadp_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.json || cli.log_json, cli.verbose);
    let json = cli.json;
    match cli::run(cli) {
        Ok(_) if cli::output_failed() => ExitCode::FAILURE,
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = cli::exit_code(&e);
            if json {
                cli::emit_error_json(&e, code);
            }
            ExitCode::from(code)
        }
    }
}
