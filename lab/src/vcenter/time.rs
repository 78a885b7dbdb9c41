//! `xsd:dateTime` text without a date library (UTC, civil-from-days).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as `2026-01-02T03:04:05.678Z`.
pub(crate) fn now_xsd() -> String {
    now_xsd_offset(0)
}

/// Now plus `offset_secs` as `2026-01-02T03:04:05.678Z`.
pub(crate) fn now_xsd_offset(offset_secs: i64) -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = u64::try_from(i64::try_from(d.as_secs()).unwrap_or(0) + offset_secs).unwrap_or(0);
    let mut s = xsd_from_unix(secs);
    s.insert_str(s.len() - 1, &format!(".{:03}", d.subsec_millis()));
    s
}

/// Now as `2026-01-02T03:04:05Z` (Kubernetes timestamps).
pub(crate) fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    xsd_from_unix(d.as_secs())
}

/// Seconds since the epoch as `2026-01-02T03:04:05Z`.
pub(crate) fn xsd_from_unix(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(xsd_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(xsd_from_unix(1_700_000_000), "2023-11-14T22:13:20Z");
        assert!(now_xsd().ends_with('Z'));
    }
}
