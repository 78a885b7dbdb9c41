//! `vadp-agent lab serve`: runs the lab's simulated vCenter over a lab root (created with
//! the default inventory when missing) and prints how to reach it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

/// `vadp-agent lab …`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Serve the lab's vCenter (SOAP /sdk, /folder, /api, /lab) until interrupted.
    Serve(ServeArgs),
}

/// `vadp-agent lab serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The lab root (created if missing).
    #[arg(long)]
    pub root: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Plain HTTP instead of HTTPS with the lab's self-signed certificate.
    #[arg(long)]
    pub http: bool,
}

/// Runs a `lab` subcommand.
///
/// # Errors
/// The lab root cannot be created or the server cannot start.
pub fn run(cmd: LabCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Serve(args) => serve(&args, json),
    }
}

fn serve(args: &ServeArgs, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("create lab root {}", args.root.display()))?;
    let lab = lab::vcenter::open_or_create(&args.root)
        .with_context(|| format!("open lab at {}", args.root.display()))?;
    let options = lab::vcenter::ServeOptions {
        listen: args.listen,
        plain_http: args.http,
        ..lab::vcenter::ServeOptions::default()
    };
    let running = lab::vcenter::spawn(lab, &options).context("start the lab vCenter")?;
    tracing::info!(url = %running.sdk_url, "lab vCenter listening");
    // The password goes to stdout only, never into the log.
    if json {
        say!(
            "{}",
            serde_json::json!({
                "sdk_url": running.sdk_url,
                "thumbprint": running.thumbprint,
                "user": running.user,
                "password": running.password,
                "root": args.root,
            })
        );
    } else {
        say!("sdk_url: {}", running.sdk_url);
        say!(
            "thumbprint: {}",
            running.thumbprint.as_deref().unwrap_or("(plain http)")
        );
        say!("user: {}", running.user);
        say!("password: {}", running.password);
        say!("root: {}", args.root.display());
    }
    use std::io::Write as _;
    std::io::stdout().flush().context("flush stdout")?;
    loop {
        std::thread::park();
    }
}
