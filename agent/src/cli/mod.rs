//! Command-line interface: one file per subcommand group. `anyhow` is allowed here (and in
//! `main.rs`) only; library errors stay typed.

/// `println!` for command output that ignores a closed stdout (`--json | head -1`): the
/// work is done, or goes on, either way, and the exit status still says how it went.
macro_rules! say {
    () => {
        $crate::cli::emit_line("")
    };
    ($($arg:tt)*) => {
        $crate::cli::emit_line(&format!($($arg)*))
    };
}

pub mod backup;
pub mod demo;
pub mod image;
pub mod lab;
mod progress;
pub mod repo;
pub mod restore;
pub mod serve;
pub mod vddk;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// vadp-agent: VADP backup agent for vSphere.
#[derive(Debug, Parser)]
#[command(name = "vadp-agent", version, about)]
pub struct Cli {
    /// Machine-readable output: JSON logs on stderr, JSON lines (progress, result) on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Logs as JSON lines on stderr (for log collectors); stdout is unchanged.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage a repository (init, info, verify, prune, gc, rebuild-catalog).
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// List restore points.
    List(repo::ListArgs),
    /// Back up a group of VMs at a common point in time (snapshot, CBT, VDDK).
    Backup(backup::BackupArgs),
    /// Show one restore point: type and why, changed bytes, duration, skew, validation.
    Show(backup::ShowArgs),
    /// Restore a VM Service VM into a Supervisor namespace and register it.
    Restore(restore::RestoreArgs),
    /// Undo what an interrupted job left in vSphere (snapshots, PrepareForAccess).
    Reconcile(backup::ReconcileArgs),
    /// Back up and restore raw image files (no vSphere needed).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// The VDDK library: `vddk info`.
    Vddk(vddk::VddkArgs),
    /// Run the main job on the built-in lab and print a summary.
    Demo(demo::DemoArgs),
    /// Run the daemon: the HTTP API, the job queue and the scheduler (agent.toml).
    Serve(serve::ServeArgs),
    /// Scheduling policies: `schedule run-due` (for a systemd timer), `schedule show`.
    #[command(subcommand)]
    Schedule(serve::ScheduleCommand),
    /// The lab (simulated vSphere): `lab serve`.
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

/// Install the tracing subscriber on stderr: JSON with `--json`/`--log-json`; under
/// systemd's journal (`JOURNAL_STREAM` set) plain lines without colours or timestamps
/// (journald adds its own); otherwise human-readable, coloured on a terminal.
pub fn init_tracing(json: bool, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.with_ansi(false).without_time().compact().init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .compact()
            .init();
    }
}

/// Run the parsed command.
///
/// # Errors
/// Any failure, with its chain, for `main` to print.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Repo(cmd) => repo::run(cmd, cli.json),
        Command::List(args) => repo::list(&args, cli.json),
        Command::Backup(args) => backup::backup(&args, cli.json),
        Command::Show(args) => backup::show(&args, cli.json),
        Command::Reconcile(args) => backup::reconcile(&args, cli.json),
        Command::Restore(args) => restore::restore(&args, cli.json),
        Command::Image(cmd) => image::run(cmd, cli.json),
        Command::Vddk(args) => vddk::run(args, cli.json).map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => demo::run(&args, cli.json).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::serve(&args),
        Command::Schedule(cmd) => serve::schedule(&cmd, cli.json),
        Command::Lab(cmd) => lab::run(cmd, cli.json).map(|()| ExitCode::SUCCESS),
    }
}

/// The process exit code for a failed command: specific codes where a subcommand defines
/// them (e.g. 69 for an unusable VDDK library), 77 (`EX_NOPERM`) when vCenter refused the
/// credentials, 78 (`EX_CONFIG`) when its certificate does not verify against the pin or
/// the CA file (but expired or not yet valid, which may be this machine's clock), 1
/// otherwise. The daemon's unit does not restart on 77 or 78: each restart
/// would log in with the same wrong password again, towards SSO's account lockout.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(code) = vddk::exit_code(err) {
        return code;
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<crate::vsphere::VsphereError>() {
            if e.fault_kind() == Some(crate::vsphere::FaultKind::InvalidLogin) {
                return 77;
            }
            // Not a certificate that expired or is not valid yet: that may be this
            // machine's clock, which NTP corrects, and the unit restarts then.
            if e.is_certificate_failure() && !e.is_certificate_time_failure() {
                return 78;
            }
        }
    }
    1
}

/// Set when writing command output failed other than by a reader going away.
static OUTPUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One line of command output on stdout (`say!`, a job's `--json` event stream). A reader
/// that went away (`| head`) must not panic the job half-way, with a snapshot or
/// PrepareForAccess still to undo, as `println!` would: that error is ignored and the job
/// runs to its clean-up. Any other write error (a full disk under `> report.json`) is
/// reported once on stderr and makes the command fail at its end ([`output_failed`]), so
/// that no script trusts a truncated file.
pub(crate) fn emit_line(line: &str) {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
        && !OUTPUT_FAILED.swap(true, Ordering::Relaxed)
    {
        eprintln!("error: writing the output failed: {e}");
    }
}

/// The error a command ended with, as the last line of its `--json` output (besides the
/// text on stderr), so that a machine reading stdout learns why it failed.
pub fn emit_error_json(err: &anyhow::Error, exit_code: u8) {
    emit_line(
        &serde_json::json!({
            "event": "error",
            "error": format!("{err:#}"),
            "exit_code": exit_code,
        })
        .to_string(),
    );
}

/// Whether some command output could not be written (other than to a reader that went
/// away); `main` then exits non-zero even if the command succeeded.
#[must_use]
pub fn output_failed() -> bool {
    OUTPUT_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A catalog time (Unix seconds) for people: RFC 3339 in UTC.
pub(crate) fn utc(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map_or_else(|_| format!("{secs} (Unix time)"), |t| t.to_string())
}

/// Parse a size such as `4M`, `4MiB`, `2G`, `65536`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?} (examples: 4M, 1MiB, 2G, 65536)"))
}

/// Parse a duration such as `3d`, `72h`, `30m`, `60s`, into seconds.
pub(crate) fn parse_duration_secs(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('d') => (&t[..t.len() - 1], 86_400),
        Some('h') => (&t[..t.len() - 1], 3_600),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('s') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid duration {s:?} (examples: 3d, 72h, 90m)"))
}

/// Until SIGINT (Ctrl-C) or SIGTERM (`systemctl stop`, a reboot, a vendor's runner
/// stopping the process): either stops a job the way a cancel does, so its snapshot is
/// removed and its PrepareForAccess ended before the process exits, rather than the
/// default action killing it in the middle.
pub(crate) async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("65536").unwrap(), 65_536);
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration_secs("3d").unwrap(), 259_200);
        assert!(parse_duration_secs("d").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_test();
    }

    impl Cli {
        fn command_for_test() {
            use clap::CommandFactory;
            Self::command().debug_assert();
        }
    }
}
