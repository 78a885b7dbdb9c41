/*
 * Calls a VDDK log callback (VixDiskLibGenericLogFunc: `void f(const char *fmt, va_list)`).
 * Stable Rust cannot build a va_list, so the simulator calls this variadic helper instead,
 * always as vddksim_log(f, "%s", message).
 */
#include <stdarg.h>

#include "vddk.h"

void vddksim_log(VixDiskLibGenericLogFunc *f, const char *fmt, ...) {
  va_list ap;
  if (f == NULL || fmt == NULL) {
    return;
  }
  va_start(ap, fmt);
  f(fmt, ap);
  va_end(ap);
}
