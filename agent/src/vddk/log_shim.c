/*
 * log_shim.c — turns VDDK's log callbacks (`void f(const char *fmt, va_list args)`) into
 * calls of a Rust sink with (level, message, length, truncated).
 *
 * Rust cannot receive a `va_list` on stable (core::ffi::VaList is unstable), so this shim
 * formats it with vsnprintf (STYLE §5). The sink is installed once, before InitEx, with
 * vadp_vddk_log_install; VDDK calls the log functions from any of its threads, and every
 * function here is reentrant (stack buffer, or malloc for long messages).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

/* Levels understood by the Rust sink (agent/src/vddk/log.rs). */
enum { VADP_VDDK_LOG = 0, VADP_VDDK_WARN = 1, VADP_VDDK_PANIC = 2 };

/* Messages longer than this are cut (and flagged as truncated). */
#define VADP_VDDK_LOG_MAX (64 * 1024)

typedef void (*vadp_vddk_log_sink_fn)(int level, const char *msg, size_t len, int truncated);

static vadp_vddk_log_sink_fn vadp_sink;

void vadp_vddk_log_install(vadp_vddk_log_sink_fn sink) {
  __atomic_store_n(&vadp_sink, sink, __ATOMIC_RELEASE);
}

static void vadp_forward(int level, const char *fmt, va_list args) {
  vadp_vddk_log_sink_fn sink = __atomic_load_n(&vadp_sink, __ATOMIC_ACQUIRE);
  char small[1024];
  va_list copy;
  int n;

  if (sink == NULL) {
    return;
  }
  if (fmt == NULL) {
    sink(level, "", 0, 0);
    return;
  }
  /* The first attempt consumes a copy, so args stays usable for a second, larger one. */
  va_copy(copy, args);
  n = vsnprintf(small, sizeof small, fmt, copy);
  va_end(copy);
  if (n < 0) {
    static const char bad[] = "(VDDK log message could not be formatted)";
    sink(level, bad, sizeof bad - 1, 0);
    return;
  }
  if ((size_t)n < sizeof small) {
    sink(level, small, (size_t)n, 0);
    return;
  }

  size_t want = (size_t)n + 1;
  int truncated = 0;
  if (want > VADP_VDDK_LOG_MAX) {
    want = VADP_VDDK_LOG_MAX;
    truncated = 1;
  }
  char *big = malloc(want);
  if (big == NULL) {
    /* Out of memory: deliver the first part we already have. */
    sink(level, small, sizeof small - 1, 1);
    return;
  }
  n = vsnprintf(big, want, fmt, args);
  if (n < 0) {
    sink(level, small, sizeof small - 1, 1);
  } else {
    size_t len = (size_t)n < want ? (size_t)n : want - 1;
    sink(level, big, len, truncated);
  }
  free(big);
}

/* The three VixDiskLibGenericLogFunc callbacks handed to InitEx. */
void vadp_vddk_log(const char *fmt, va_list args) { vadp_forward(VADP_VDDK_LOG, fmt, args); }
void vadp_vddk_warn(const char *fmt, va_list args) { vadp_forward(VADP_VDDK_WARN, fmt, args); }
void vadp_vddk_panic(const char *fmt, va_list args) { vadp_forward(VADP_VDDK_PANIC, fmt, args); }

/*
 * Calls one of the callbacks above the way VDDK does, with a va_list built from `...`.
 * Used by the unit tests of log.rs (Rust cannot build a va_list either).
 */
void vadp_vddk_log_call(int level, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  switch (level) {
  case VADP_VDDK_WARN:
    vadp_vddk_warn(fmt, args);
    break;
  case VADP_VDDK_PANIC:
    vadp_vddk_panic(fmt, args);
    break;
  default:
    vadp_vddk_log(fmt, args);
    break;
  }
  va_end(args);
}
