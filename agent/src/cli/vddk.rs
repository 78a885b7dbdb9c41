//! `vadp-agent vddk …`: diagnostics of the VDDK library.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::vddk::{self, LoadError, SYMBOLS, Vddk, VddkInitError};

/// `vadp-agent vddk`.
#[derive(Debug, Args)]
pub struct VddkArgs {
    #[command(subcommand)]
    command: VddkCommand,
}

#[derive(Debug, Subcommand)]
enum VddkCommand {
    /// Load and initialise VDDK, then print its path, version, transport modes and which
    /// optional functions it has.
    Info(InfoArgs),
}

#[derive(Debug, Args)]
struct InfoArgs {
    /// The VDDK distribution directory (holding lib64/libvixDiskLib.so.N).
    #[arg(
        long,
        env = "VADP_VDDK_LIBDIR",
        default_value = "/opt/vmware-vix-disklib-distrib"
    )]
    libdir: PathBuf,
    /// VDDK configuration file passed to InitEx.
    #[arg(long, env = "VADP_VDDK_CONFIG")]
    config: Option<PathBuf>,
}

/// Runs `vadp-agent vddk …`. `json` selects JSON output.
///
/// # Errors
/// When the library cannot be loaded or initialised.
pub fn run(args: VddkArgs, json: bool) -> anyhow::Result<()> {
    match args.command {
        VddkCommand::Info(info) => run_info(&info, json),
    }
}

fn run_info(args: &InfoArgs, json: bool) -> anyhow::Result<()> {
    // Before anything loads VDDK or starts a thread (STYLE §5).
    vddk::reexec_with_library_path(&args.libdir)?;
    let vddk = Vddk::load(&args.libdir, args.config.as_deref())?;
    let lib = vddk.library();
    let path = std::fs::canonicalize(lib.path())
        .with_context(|| format!("resolving {}", lib.path().display()))?;
    let modes = vddk.transport_modes();
    let symbols: Vec<(&str, bool, bool)> = SYMBOLS
        .iter()
        .map(|s| (s.name, s.required, lib.has(s.name)))
        .collect();
    let reexec_dir = vddk::prepended_dir();

    if json {
        let optional: serde_json::Map<String, serde_json::Value> = symbols
            .iter()
            .filter(|(_, required, _)| !required)
            .map(|(name, _, has)| ((*name).to_owned(), (*has).into()))
            .collect();
        let out = serde_json::json!({
            "library": path,
            "libdir": args.libdir,
            "version": lib.major(),
            "transport_modes": modes,
            "optional_symbols": optional,
            "ld_library_path_prefix": reexec_dir,
        });
        say!("{}", serde_json::to_string(&out)?);
    } else {
        let text = render_text(&path, lib.major(), &modes, &symbols, reexec_dir.as_deref());
        say!("{}", text.strip_suffix('\n').unwrap_or(&text));
    }
    vddk.shutdown();
    Ok(())
}

/// nbdkit `--dump-plugin` style: `key=value` lines, one per symbol.
fn render_text(
    path: &Path,
    major: u32,
    modes: &[String],
    symbols: &[(&str, bool, bool)],
    reexec_dir: Option<&Path>,
) -> String {
    let mut out = format!(
        "vddk_dll={}\nvddk_library_version={major}\nvddk_transport_modes={}\n",
        path.display(),
        modes.join(":")
    );
    if let Some(dir) = reexec_dir {
        out.push_str(&format!("vddk_ld_library_path_prefix={}\n", dir.display()));
    }
    for (name, required, has) in symbols {
        let state = match (has, required) {
            (true, _) => "1",
            (false, true) => "0 (required)",
            (false, false) => "0 (optional: missing)",
        };
        out.push_str(&format!("{name}={state}\n"));
    }
    out
}

/// The exit code for a VDDK failure at the top level, if `err` is one: 69 (`EX_UNAVAILABLE`)
/// when the library is missing or unusable, 75 (`EX_TEMPFAIL`) when retrying may succeed.
#[must_use]
pub fn exit_code(err: &anyhow::Error) -> Option<u8> {
    for cause in err.chain() {
        if cause.is::<LoadError>() || cause.is::<vddk::ReexecError>() {
            return Some(69);
        }
        if let Some(init) = cause.downcast_ref::<VddkInitError>() {
            return Some(match init {
                VddkInitError::Vix(e) if e.is_retryable() => 75,
                _ => 69,
            });
        }
        if let Some(e) = cause.downcast_ref::<vddk::DiskLibError>() {
            return Some(if e.is_retryable() { 75 } else { 1 });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lists_missing_optional_symbols() {
        let text = render_text(
            Path::new("/opt/vddk/lib64/libvixDiskLib.so.6.5.0"),
            6,
            &["file".into(), "nbd".into()],
            &[
                ("VixDiskLib_Open", true, true),
                ("VixDiskLib_QueryAllocatedBlocks", false, false),
            ],
            None,
        );
        assert_eq!(
            text,
            "vddk_dll=/opt/vddk/lib64/libvixDiskLib.so.6.5.0\nvddk_library_version=6\n\
             vddk_transport_modes=file:nbd\nVixDiskLib_Open=1\n\
             VixDiskLib_QueryAllocatedBlocks=0 (optional: missing)\n"
        );
    }

    #[test]
    fn load_errors_exit_unavailable() {
        let err = anyhow::Error::new(VddkInitError::Load(LoadError::NotFound {
            libdir: "/nope".into(),
            tried: vec![],
        }));
        assert_eq!(exit_code(&err), Some(69));
        assert_eq!(exit_code(&anyhow::anyhow!("other")), None);
    }
}
