//! Retention: which restore points of one VM to keep.
//!
//! Rules (as restic/borg/proxmox, evaluated newest first, per VM):
//! - `keep_last` N: the N newest points;
//! - `keep_daily`/`keep_weekly`/`keep_monthly` N: the newest point of each of the N most recent
//!   days / ISO weeks (Monday start) / calendar months that have points, in the agent's
//!   time zone (the one its schedules run in: on the night a clock changes, two nightly
//!   runs are still two days);
//! - **floor**: a point younger than `min_age_secs` is always kept, and the floor cannot be set
//!   below [`MIN_AGE_FLOOR_SECS`] (3 days, seed 000).
//!
//! Because every restore point is a full image (fixed index), removing any point is safe.
//! Pruning only deletes catalog rows and index files; GC reclaims the chunks.

use jiff::Timestamp;
use jiff::tz::TimeZone;
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

/// The retention buckets, newest point of each kept.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Daily,
    Weekly,
    Monthly,
}

/// The bucket of Unix time `t` in `zone`: its day, ISO week or month.
fn bucket(rule: Rule, t: i64, zone: &TimeZone) -> i64 {
    let date = Timestamp::from_second(t)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(zone.clone())
        .date();
    let (year, month) = (i64::from(date.year()), i64::from(date.month()));
    match rule {
        Rule::Daily => (year * 12 + month) * 31 + i64::from(date.day()),
        Rule::Weekly => {
            let week = date.iso_week_date();
            i64::from(week.year()) * 53 + i64::from(week.week())
        }
        Rule::Monthly => year * 12 + month,
    }
}

/// Decide for the points of one VM. `now` is Unix seconds; days, weeks and months are
/// those of `zone`.
#[must_use]
pub fn select(
    points: &[(RestorePointId, i64)],
    policy: &RetentionPolicy,
    now: i64,
    zone: &TimeZone,
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
    let buckets = [
        ("daily", policy.keep_daily, Rule::Daily),
        ("weekly", policy.keep_weekly, Rule::Weekly),
        ("monthly", policy.keep_monthly, Rule::Monthly),
    ];
    for (name, keep, rule) in buckets {
        let mut last_bucket = None;
        let mut kept = 0;
        for d in &mut decisions {
            if kept >= keep {
                break;
            }
            let b = bucket(rule, d.created_at, zone);
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
        let d = select(&p, &policy(1, 0), now, &TimeZone::UTC);
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
        let d = select(&p, &policy(0, 2), now, &TimeZone::UTC);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
        assert!(d[0].keep && d[0].reasons == vec!["daily"]);
        assert!(!d[1].keep, "older point of the same day goes");
    }

    fn utc(s: &str) -> i64 {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn monthly_and_weekly_buckets() {
        let z = TimeZone::UTC;
        assert_eq!(bucket(Rule::Monthly, 0, &z), 1970 * 12 + 1);
        let (jan, feb) = (utc("2024-01-31T23:59"), utc("2024-02-29T12:00"));
        assert_eq!(
            bucket(Rule::Monthly, feb, &z) - bucket(Rule::Monthly, jan, &z),
            1
        );
        // ISO weeks start on Monday, and 2024-12-30 is in week 1 of 2025.
        let (sun, mon) = (utc("2024-12-29T12:00"), utc("2024-12-30T00:00"));
        assert_ne!(bucket(Rule::Weekly, sun, &z), bucket(Rule::Weekly, mon, &z));
        assert_eq!(
            bucket(Rule::Weekly, mon, &z),
            bucket(Rule::Weekly, utc("2025-01-05T23:59"), &z)
        );
        let now = 1_700_000_000;
        let p = points(&[10, 40, 70, 100], now);
        let pol = RetentionPolicy {
            keep_monthly: 2,
            ..policy(0, 0)
        };
        assert_eq!(
            select(&p, &pol, now, &TimeZone::UTC)
                .iter()
                .filter(|d| d.keep)
                .count(),
            2
        );
    }

    /// Nightly runs at 01:30 in Berlin: the night the clocks go forward, two runs fall on
    /// one UTC day (00:30 and 23:30 UTC on 30 March) but on two local days, and
    /// `keep_daily` keeps both.
    #[test]
    fn days_are_the_agent_zones_days() {
        let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let runs = [
            utc("2025-03-29T00:30"),
            utc("2025-03-30T00:30"),
            utc("2025-03-30T23:30"),
            utc("2025-03-31T23:30"),
        ];
        let p: Vec<(RestorePointId, i64)> = runs
            .iter()
            .map(|&t| (RestorePointId::new_random(), t))
            .collect();
        let now = utc("2025-04-20T00:00");
        let kept = |zone: &TimeZone| {
            select(&p, &policy(0, 4), now, zone)
                .iter()
                .filter(|d| d.keep)
                .count()
        };
        assert_eq!(kept(&berlin), 4);
        assert_eq!(kept(&TimeZone::UTC), 3);
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
