//! VDDK's log, warning and panic callbacks, forwarded to `tracing` (target `vddk`).
//!
//! VDDK calls them from any of its threads with a `printf` format and a `va_list`; the C shim
//! `log_shim.c` formats the message and calls [`sink`] with a level. NULL callbacks would
//! select VDDK's built-in logger, which is not thread-safe (VDDK.md §4), so [`callbacks`]
//! always returns ours.

use std::ffi::c_char;
use std::os::raw::c_int;

use vddk_sys::{__va_list_tag, VixDiskLibGenericLogFunc};

/// The VDDK callback a message came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogLevel {
    Log,
    Warn,
    Panic,
}

impl LogLevel {
    fn from_c(level: c_int) -> Self {
        match level {
            1 => Self::Warn,
            2 => Self::Panic,
            _ => Self::Log,
        }
    }
}

/// Messages VDDK 7+ logs on every connection that say nothing about our job (nbdkit demotes
/// the same two).
const NOISY_PREFIXES: [&str; 2] = ["Get CEIP status failed", "VDDK_PhoneHome:"];

/// The `tracing` level for a message and the message without its trailing newlines.
pub(crate) fn classify(level: LogLevel, msg: &str) -> (tracing::Level, &str) {
    let msg = msg.trim_end_matches(['\n', '\r']);
    let tracing_level = match level {
        _ if NOISY_PREFIXES.iter().any(|p| msg.contains(p)) => tracing::Level::DEBUG,
        LogLevel::Log => tracing::Level::DEBUG,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Panic => tracing::Level::ERROR,
    };
    (tracing_level, msg)
}

fn emit(level: LogLevel, msg: &str, truncated: bool) {
    let (tracing_level, msg) = classify(level, msg);
    let suffix = if truncated { " [truncated]" } else { "" };
    // `tracing` wants a constant level per call site.
    match tracing_level {
        tracing::Level::ERROR => tracing::error!(target: "vddk", "{msg}{suffix}"),
        tracing::Level::WARN => tracing::warn!(target: "vddk", "{msg}{suffix}"),
        _ => tracing::debug!(target: "vddk", "{msg}{suffix}"),
    }
}

/// Called by the C shim on whichever thread VDDK logged from.
extern "C" fn sink(level: c_int, msg: *const c_char, len: usize, truncated: c_int) {
    let bytes = if msg.is_null() || len == 0 {
        &[][..]
    } else {
        // SAFETY: the shim passes a buffer it owns for the duration of this call, holding
        // `len` initialised bytes (vsnprintf's output without its NUL).
        unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) }
    };
    let text = String::from_utf8_lossy(bytes);
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(|| emit(LogLevel::from_c(level), &text, truncated != 0));
}

unsafe extern "C" {
    fn vadp_vddk_log_install(sink: extern "C" fn(c_int, *const c_char, usize, c_int));
    fn vadp_vddk_log(fmt: *const c_char, args: *mut __va_list_tag);
    fn vadp_vddk_warn(fmt: *const c_char, args: *mut __va_list_tag);
    fn vadp_vddk_panic(fmt: *const c_char, args: *mut __va_list_tag);
}

/// The three callbacks for `VixDiskLib_InitEx` (log, warn, panic), with the Rust sink
/// installed. Never NULL.
pub(crate) fn callbacks() -> [VixDiskLibGenericLogFunc; 3] {
    // SAFETY: the shim stores the pointer atomically; `sink` is a 'static function.
    unsafe { vadp_vddk_log_install(sink) };
    [
        Some(vadp_vddk_log),
        Some(vadp_vddk_warn),
        Some(vadp_vddk_panic),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    unsafe extern "C" {
        fn vadp_vddk_log_call(level: c_int, fmt: *const c_char, ...);
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with a subscriber that records every event of this thread as text.
    fn capture(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn levels_map_and_newlines_are_stripped() {
        assert_eq!(
            classify(LogLevel::Log, "opened disk\n"),
            (tracing::Level::DEBUG, "opened disk")
        );
        assert_eq!(
            classify(LogLevel::Warn, "slow\r\n\n"),
            (tracing::Level::WARN, "slow")
        );
        assert_eq!(
            classify(LogLevel::Panic, "boom"),
            (tracing::Level::ERROR, "boom")
        );
    }

    #[test]
    fn noisy_messages_are_demoted() {
        let (level, _) = classify(LogLevel::Warn, "VixDiskLib: Get CEIP status failed, code 4");
        assert_eq!(level, tracing::Level::DEBUG);
        let (level, _) = classify(LogLevel::Panic, "VDDK_PhoneHome: no network\n");
        assert_eq!(level, tracing::Level::DEBUG);
    }

    #[test]
    fn shim_formats_va_list_and_forwards_with_level() {
        callbacks();
        let fmt = CString::new("disk %s: %d sectors, %llu bytes\n").unwrap();
        let name = CString::new("[ds1] web-1/disk-0.vmdk").unwrap();
        let text = capture(|| {
            // SAFETY: the format's conversions match the arguments (char*, int, u64).
            unsafe {
                vadp_vddk_log_call(1, fmt.as_ptr(), name.as_ptr(), 128 as c_int, 65536_u64);
            }
        });
        assert!(
            text.contains("WARN vddk: disk [ds1] web-1/disk-0.vmdk: 128 sectors, 65536 bytes"),
            "{text}"
        );
        assert!(
            !text.contains("bytes\n\n"),
            "trailing newline kept: {text:?}"
        );
    }

    #[test]
    fn shim_panic_callback_logs_errors() {
        callbacks();
        let fmt = CString::new("fatal %s").unwrap();
        let arg = CString::new("state").unwrap();
        // SAFETY: one %s, one char* argument.
        let text = capture(|| unsafe { vadp_vddk_log_call(2, fmt.as_ptr(), arg.as_ptr()) });
        assert!(text.contains("ERROR vddk: fatal state"), "{text}");
    }

    #[test]
    fn shim_formats_long_messages_twice_and_truncates_huge_ones() {
        callbacks();
        let fmt = CString::new("%s|end").unwrap();
        // Longer than the shim's stack buffer: formatted a second time from the va_list.
        let long = "x".repeat(5000);
        let arg = CString::new(long.clone()).unwrap();
        // SAFETY: one %s, one char* argument.
        let text = capture(|| unsafe { vadp_vddk_log_call(0, fmt.as_ptr(), arg.as_ptr()) });
        assert!(text.contains(&format!("{long}|end")), "long message lost");
        assert!(!text.contains("[truncated]"));

        // Longer than the shim's limit (64 KiB): cut and flagged.
        let huge = CString::new("y".repeat(70_000)).unwrap();
        // SAFETY: one %s, one char* argument.
        let text = capture(|| unsafe { vadp_vddk_log_call(0, fmt.as_ptr(), huge.as_ptr()) });
        assert!(text.contains("[truncated]"), "truncation not flagged");
        assert!(!text.contains("|end"));
        assert!(text.contains(&"y".repeat(60_000)));
    }
}
