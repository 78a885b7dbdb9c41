//! Every function our ABI header declares is exported by the VDDK 8 build (checked with
//! dlsym and `nm -D --defined-only`); the VDDK 6.5 build lacks exactly the three optional
//! ones. The list comes from parsing `vddk-sys/include/vddk.h`, so it cannot drift.

// These tests dlopen the simulator and call its C ABI, which is unsafe by nature.
#![allow(unsafe_code)]

mod common;

#[cfg(test)]
mod tests {
    use std::process::Command;

    use vadp_tests::{SimVariant, vddk_sim_libdir};

    use super::common::{OPTIONAL, has_symbol, header_functions};

    fn lib_path(variant: SimVariant) -> std::path::PathBuf {
        let name = match variant {
            SimVariant::Vddk8 => "libvixDiskLib.so.8",
            SimVariant::Vddk65 => "libvixDiskLib.so.6",
        };
        vddk_sim_libdir(variant).join("lib64").join(name)
    }

    #[test]
    fn header_lists_the_functions_we_expect() {
        let names = header_functions();
        assert_eq!(names.len(), 28, "{names:?}");
        for f in [
            "VixDiskLib_InitEx",
            "VixDiskLib_WriteMetadata",
            "VixDiskLib_Wait",
        ] {
            assert!(names.iter().any(|n| n == f), "{f} missing from {names:?}");
        }
    }

    #[test]
    fn vddk8_exports_every_header_function() {
        let path = lib_path(SimVariant::Vddk8);
        // SAFETY: loading our own simulator; its initialisers only set up statics.
        let lib = unsafe { libloading::Library::new(&path) }.unwrap();
        let missing: Vec<String> = header_functions()
            .into_iter()
            .filter(|n| !has_symbol(&lib, n))
            .collect();
        assert!(missing.is_empty(), "not exported: {missing:?}");

        let nm = Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&path)
            .output()
            .expect("run nm");
        assert!(nm.status.success());
        let out = String::from_utf8_lossy(&nm.stdout);
        let defined: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        for name in header_functions() {
            assert!(defined.contains(&name.as_str()), "nm does not list {name}");
        }
    }

    #[test]
    fn sonames_match_the_vddk_versions() {
        for (variant, soname) in [
            (SimVariant::Vddk8, "libvixDiskLib.so.8"),
            (SimVariant::Vddk65, "libvixDiskLib.so.6"),
        ] {
            let out = Command::new("readelf")
                .arg("-d")
                .arg(lib_path(variant))
                .output()
                .expect("run readelf");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("[{soname}]")), "{variant:?}: {text}");
        }
    }

    #[test]
    fn vddk65_lacks_exactly_the_optional_functions() {
        // SAFETY: as above.
        let lib = unsafe { libloading::Library::new(lib_path(SimVariant::Vddk65)) }.unwrap();
        for name in header_functions() {
            let expected = !OPTIONAL.contains(&name.as_str());
            assert_eq!(has_symbol(&lib, &name), expected, "{name}");
        }
    }
}
