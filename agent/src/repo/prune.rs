//! Retention: which restore points of one VM to keep.
//!
//! Rules (as restic/borg/proxmox, evaluated newest first, per VM):
//! - `keep_last` N: the N newest points;
//! - `keep_daily`/`keep_weekly`/`keep_monthly` N: the newest point of each of the N most recent
//!   UTC days / ISO weeks (Monday start) / calendar months that have points;
//! - **floor**: a point younger than `min_age_secs` is always kept, and the floor cannot be set
//!   below [`MIN_AGE_FLOOR_SECS`] (3 days, seed 000).
//!
//! Because every restore point is a full image (fixed index), removing any point is safe.
//! Pruning only deletes catalog rows and index files; GC reclaims the chunks.

use serde::Serialize;

use crate::ids::RestorePointId;

/// The lowest minimum age allowed: 3 days.
pub const MIN_AGE_FLOOR_SECS: i64 = 3 * 86_400;

/// Errors of retention.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The minimum age is below the floor.
    #[error("minimum age of {0} s is below the 3-day floor ({MIN_AGE_FLOOR_SECS} s)")]
    BelowFloor(i64),
    /// No keep rule: pruning would delete every point older than the floor.
    #[error("no keep rule given (keep-last, keep-daily, keep-weekly or keep-monthly)")]
    NoRule,
}

/// A retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    /// Keep the N newest.
    pub keep_last: u32,
    /// Keep the newest of each of the N most recent days.
    pub keep_daily: u32,
    /// Keep the newest of each of the N most recent ISO weeks.
    pub keep_weekly: u32,
    /// Keep the newest of each of the N most recent months.
    pub keep_monthly: u32,
    /// Never remove a point younger than this.
    pub min_age_secs: i64,
}

impl RetentionPolicy {
    /// Check the policy.
    ///
    /// # Errors
    /// [`PruneError::BelowFloor`] or [`PruneError::NoRule`].
    pub fn validate(&self) -> Result<(), PruneError> {
        if self.min_age_secs < MIN_AGE_FLOOR_SECS {
            return Err(PruneError::BelowFloor(self.min_age_secs));
        }
        let keeps = [
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ];
        if keeps.iter().all(|&n| n == 0) {
            return Err(PruneError::NoRule);
        }
        Ok(())
    }
}

/// The decision for one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneDecision {
    /// The point.
    pub id: RestorePointId,
    /// Unix time it was created.
    pub created_at: i64,
    /// Whether it stays.
    pub keep: bool,
    /// The rules that keep it.
    pub reasons: Vec<&'static str>,
}

/// (year, month) of a Unix day number (Howard Hinnant's civil_from_days).
fn year_month(day: i64) -> (i64, i64) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// A retention bucket: rule name, how many to keep, bucket of a Unix time.
type Bucket = (&'static str, u32, fn(i64) -> i64);

/// Decide for the points of one VM. `now` is Unix seconds.
#[must_use]
pub fn select(
    points: &[(RestorePointId, i64)],
    policy: &RetentionPolicy,
    now: i64,
) -> Vec<PruneDecision> {
    let mut sorted: Vec<(RestorePointId, i64)> = points.to_vec();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.1));
    let mut decisions: Vec<PruneDecision> = sorted
        .iter()
        .map(|&(id, created_at)| PruneDecision {
            id,
            created_at,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    for (i, d) in decisions.iter_mut().enumerate() {
        if u32::try_from(i).is_ok_and(|i| i < policy.keep_last) {
            d.reasons.push("last");
        }
        if now - d.created_at < policy.min_age_secs {
            d.reasons.push("younger than minimum age");
        }
    }
    let buckets: [Bucket; 3] = [
        ("daily", policy.keep_daily, |t| t.div_euclid(86_400)),
        // Day 0 (1970-01-01) was a Thursday: shift by 3 so weeks start on Monday.
        ("weekly", policy.keep_weekly, |t| {
            (t.div_euclid(86_400) + 3).div_euclid(7)
        }),
        ("monthly", policy.keep_monthly, |t| {
            let (y, m) = year_month(t.div_euclid(86_400));
            y * 12 + m
        }),
    ];
    for (name, keep, bucket_of) in buckets {
        let mut last_bucket = None;
        let mut kept = 0;
        for d in &mut decisions {
            if kept >= keep {
                break;
            }
            let b = bucket_of(d.created_at);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                d.reasons.push(name);
                kept += 1;
            }
        }
    }
    for d in &mut decisions {
        d.keep = !d.reasons.is_empty();
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn points(ages_days: &[i64], now: i64) -> Vec<(RestorePointId, i64)> {
        ages_days
            .iter()
            .map(|a| (RestorePointId::new_random(), now - a * DAY))
            .collect()
    }

    fn policy(keep_last: u32, keep_daily: u32) -> RetentionPolicy {
        RetentionPolicy {
            keep_last,
            keep_daily,
            keep_weekly: 0,
            keep_monthly: 0,
            min_age_secs: 3 * DAY,
        }
    }

    #[test]
    fn floor_protects_young_points() {
        let now = 1_700_000_000;
        let p = points(&[0, 1, 2, 4, 5, 6], now);
        let d = select(&p, &policy(1, 0), now);
        let kept: Vec<i64> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| (now - d.created_at) / DAY)
            .collect();
        assert_eq!(kept, vec![0, 1, 2]);
    }

    #[test]
    fn daily_keeps_newest_per_day() {
        let now = 1_700_000_000;
        let mut p = points(&[10, 11, 12, 13], now);
        p.push((RestorePointId::new_random(), now - 10 * DAY - 60)); // same day as age 10, older
        let d = select(&p, &policy(0, 2), now);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
        assert!(d[0].keep && d[0].reasons == vec!["daily"]);
        assert!(!d[1].keep, "older point of the same day goes");
    }

    #[test]
    fn monthly_and_weekly_buckets() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(19_723), (2024, 1)); // 2024-01-01
        assert_eq!(year_month(19_782), (2024, 2)); // 2024-02-29
        let now = 1_700_000_000;
        let p = points(&[10, 40, 70, 100], now);
        let pol = RetentionPolicy {
            keep_monthly: 2,
            ..policy(0, 0)
        };
        assert_eq!(select(&p, &pol, now).iter().filter(|d| d.keep).count(), 2);
    }

    #[test]
    fn validation() {
        assert!(matches!(
            RetentionPolicy {
                min_age_secs: DAY,
                ..policy(1, 0)
            }
            .validate(),
            Err(PruneError::BelowFloor(_))
        ));
        assert!(matches!(policy(0, 0).validate(), Err(PruneError::NoRule)));
        assert!(policy(3, 0).validate().is_ok());
        // Large counts are rules too (no overflow on the way).
        assert!(policy(u32::MAX, 1).validate().is_ok());
    }
}
