//! Command-line interface: one file per subcommand group. `anyhow` is allowed here.
