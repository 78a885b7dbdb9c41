//! Builds the C shim that formats VDDK's `va_list` log messages (src/vddk/log_shim.c).

fn main() {
    println!("cargo::rerun-if-changed=src/vddk/log_shim.c");
    cc::Build::new()
        .file("src/vddk/log_shim.c")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wformat=2")
        .compile("vadp_vddk_log_shim");
}
