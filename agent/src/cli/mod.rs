//! The command-line interface: one file per subcommand group. `anyhow` is allowed here and in
//! `main.rs` only.

pub mod vddk;
