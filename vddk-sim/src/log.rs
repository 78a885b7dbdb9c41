//! Log sinks: the log/warn/panic callbacks given to InitEx, or a stderr logger when a
//! callback is NULL (real VDDK falls back to its own logger too). Callbacks are invoked
//! through the C shim `vddksim_log` (src/log_call.c), which builds the `va_list`.
//!
//! Thread rules: sinks live in a global `RwLock`; any thread (callers, async workers, the
//! background thread) may log. Callers must make their callbacks thread-safe (VDDK.md §8).

use std::ffi::{CString, c_char};
use std::io::Write as _;
use std::sync::RwLock;

use vddk_sys::VixDiskLibGenericLogFunc;

unsafe extern "C" {
    /// `void vddksim_log(VixDiskLibGenericLogFunc *f, const char *fmt, ...)`.
    fn vddksim_log(f: VixDiskLibGenericLogFunc, fmt: *const c_char, ...);
}

/// Severity of a message, mapped to the callback that receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Panic,
    Warning,
    Info,
    Trivia,
}

impl Level {
    /// VDDK's `vixDiskLib.transport.LogLevel` scale: 0 panic … 3 info … 6 trivia.
    fn number(self) -> u32 {
        match self {
            Level::Panic => 0,
            Level::Warning => 2,
            Level::Info => 3,
            Level::Trivia => 6,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sinks {
    log: VixDiskLibGenericLogFunc,
    warn: VixDiskLibGenericLogFunc,
    panic: VixDiskLibGenericLogFunc,
    max_level: u32,
}

static SINKS: RwLock<Sinks> = RwLock::new(Sinks {
    log: None,
    warn: None,
    panic: None,
    max_level: 3,
});

/// Installs the InitEx callbacks (any may be None) and the log level.
pub(crate) fn install(
    log: VixDiskLibGenericLogFunc,
    warn: VixDiskLibGenericLogFunc,
    panic: VixDiskLibGenericLogFunc,
    max_level: u32,
) {
    let mut sinks = SINKS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *sinks = Sinks {
        log,
        warn,
        panic,
        max_level,
    };
}

/// Forgets the callbacks (Exit): the caller may unload the code they point to.
pub(crate) fn uninstall() {
    install(None, None, None, 3);
}

/// Sends `message` to the sink for `level`.
pub(crate) fn emit(level: Level, message: &str) {
    let sinks = *SINKS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if level.number() > sinks.max_level {
        return;
    }
    let sink = match level {
        Level::Panic => sinks.panic,
        Level::Warning => sinks.warn,
        Level::Info | Level::Trivia => sinks.log,
    };
    // VDDK messages end with a newline; callers such as nbdkit strip it.
    let line = format!("vddk-sim: {message}\n");
    match (sink, CString::new(line.replace('\0', "\\0"))) {
        (Some(_), Ok(text)) => {
            // SAFETY: `sink` is a non-NULL function pointer the caller passed to InitEx with
            // the VixDiskLibGenericLogFunc signature; the shim passes it a valid format
            // ("%s", a static NUL-terminated string) and a va_list holding one valid C
            // string (`text`, alive for the whole call).
            unsafe { vddksim_log(sink, c"%s".as_ptr(), text.as_ptr()) };
        }
        _ => {
            let tag = match level {
                Level::Panic => "PANIC",
                Level::Warning => "WARN",
                Level::Info | Level::Trivia => "LOG",
            };
            let _ = write!(std::io::stderr().lock(), "[{tag}] {line}");
        }
    }
}

pub(crate) fn info(message: &str) {
    emit(Level::Info, message);
}

pub(crate) fn warn(message: &str) {
    emit(Level::Warning, message);
}

pub(crate) fn panic(message: &str) {
    emit(Level::Panic, message);
}

pub(crate) fn trivia(message: &str) {
    emit(Level::Trivia, message);
}
