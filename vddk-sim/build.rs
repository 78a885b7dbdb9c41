//! Sets the soname VDDK 8 ships under and compiles the C shim that builds a `va_list` for
//! the caller's log callbacks (stable Rust cannot create one).

fn main() {
    // The agent's loader dlopens `libvixDiskLib.so.8`; the soname must match (VDDK.md §1).
    // The VDDK 6.5 emulation ships as `libvixDiskLib.so.6`, as VMware's 6.x does.
    let soname = if std::env::var_os("CARGO_FEATURE_VDDK65").is_some() {
        "libvixDiskLib.so.6"
    } else {
        "libvixDiskLib.so.8"
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    println!("cargo:rerun-if-changed=src/log_call.c");
    println!("cargo:rerun-if-changed=../vddk-sys/include/vddk.h");
    cc::Build::new()
        .file("src/log_call.c")
        .include("../vddk-sys/include")
        .warnings(true)
        .extra_warnings(true)
        .compile("vddksim_log_call");
}
