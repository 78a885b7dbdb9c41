//! Scheduling policies (seed 000: a daily backup, a minimum retention of three days, an
//! initial on-demand run; blackout windows such as 01:45–02:30 when no job may start).
//!
//! [`next_run`] is a pure function of the policy, the last run and the clock: the daemon's
//! scheduler and `vadp-agent schedule run-due` both call it, and the tests give it fixed
//! clocks. Times of day are in the machine's local time zone (DST-aware through jiff).

use jiff::civil::Time;
use jiff::{Timestamp, ToSpan as _, Zoned};

/// When a policy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Local time of the daily run.
    pub daily_at: Time,
    /// Windows in which no run starts.
    pub blackout: Vec<Blackout>,
    /// Run as soon as the policy has never run.
    pub initial_run: bool,
}

/// A daily window `start`–`end` (local time; `end` before `start` crosses midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blackout {
    /// First minute inside.
    pub start: Time,
    /// First minute outside again.
    pub end: Time,
}

/// Parses `HH:MM`.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_hhmm(s: &str) -> Result<Time, String> {
    let bad = || format!("{s:?}: expected HH:MM (00:00 to 23:59)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

impl Blackout {
    /// Parses `HH:MM-HH:MM`.
    ///
    /// # Errors
    /// A message saying what is expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected HH:MM-HH:MM, e.g. 01:45-02:30"))?;
        let (start, end) = (parse_hhmm(a)?, parse_hhmm(b)?);
        if start == end {
            return Err(format!("{s:?}: the window is empty"));
        }
        Ok(Self { start, end })
    }

    fn crosses_midnight(&self) -> bool {
        self.end < self.start
    }

    /// If `t` is inside the window, the moment the window ends.
    fn end_after(&self, t: &Zoned) -> Option<Zoned> {
        let time = t.time();
        let inside = if self.crosses_midnight() {
            time >= self.start || time < self.end
        } else {
            time >= self.start && time < self.end
        };
        if !inside {
            return None;
        }
        let mut date = t.date();
        if self.crosses_midnight() && time >= self.start {
            date = date.tomorrow().ok()?;
        }
        // In the hour a fall-back repeats, the end's wall time is there twice: the window
        // ends at the first one after `t`.
        let end = t.time_zone().to_ambiguous_zoned(date.to_datetime(self.end));
        match end.clone().compatible() {
            Ok(e) if e > *t => Some(e),
            _ => end.later().ok().filter(|e| e > t),
        }
    }
}

/// The first moment at or after `from` outside every blackout window.
fn outside_blackouts(s: &Schedule, from: Zoned) -> Zoned {
    let mut t = from;
    // Each step moves to a window's end; overlapping windows chain, bounded by their number.
    for _ in 0..=s.blackout.len() {
        match s.blackout.iter().find_map(|b| b.end_after(&t)) {
            Some(end) => t = end,
            None => break,
        }
    }
    t
}

/// The daily run time on `date`, in `now`'s zone.
fn daily_on(s: &Schedule, date: jiff::civil::Date, zone: &jiff::tz::TimeZone) -> Option<Zoned> {
    date.to_datetime(s.daily_at).to_zoned(zone.clone()).ok()
}

/// When the policy runs next: at `now` when it never ran and `initial_run` is set; else
/// the first daily time after `last_run` (or at/after `now` if it never ran); a daily time
/// missed while the agent was down gives `now` (one catch-up run, never several); a time
/// inside a blackout window moves to the window's end. A `last_run` more than a day in the
/// future (the clock went back) counts as a run at `now`.
#[must_use]
pub fn next_run(s: &Schedule, last_run: Option<Timestamp>, now: &Zoned) -> Zoned {
    let zone = now.time_zone();
    let candidate = match last_run {
        None if s.initial_run => now.clone(),
        None => {
            let today = daily_on(s, now.date(), zone);
            match today {
                Some(t) if t >= *now => t,
                _ => now
                    .date()
                    .tomorrow()
                    .ok()
                    .and_then(|d| daily_on(s, d, zone))
                    .unwrap_or_else(|| now.clone()),
            }
        }
        Some(last) => {
            // A last run more than a day ahead of the clock: the clock was set back (a host
            // time sync gone wrong, then corrected). Waiting for the clock to catch up would
            // stop the policy for as long; counting the run as just made keeps it daily.
            let last = if clock_went_back(last, now) {
                now.timestamp()
            } else {
                last
            };
            let last = last.to_zoned(zone.clone());
            let same_day = daily_on(s, last.date(), zone);
            let next = match same_day {
                Some(t) if t > last => Some(t),
                _ => last
                    .date()
                    .tomorrow()
                    .ok()
                    .and_then(|d| daily_on(s, d, zone)),
            };
            match next {
                Some(t) if t >= *now => t,
                _ => now.clone(),
            }
        }
    };
    outside_blackouts(s, candidate)
}

/// Whether a run recorded at `last` is more than a day ahead of `now`: the clock went back
/// since (see [`next_run`]).
#[must_use]
pub fn clock_went_back(last: Timestamp, now: &Zoned) -> bool {
    last.as_second() > now.timestamp().as_second() + 86_400
}

/// While `now` is inside one of the policy's blackout windows, the moment they end: a run
/// that waited in the queue does not start before it.
#[must_use]
pub fn blocked_until(s: &Schedule, now: &Zoned) -> Option<Zoned> {
    let end = outside_blackouts(s, now.clone());
    (end != *now).then_some(end)
}

/// Whether the policy is due at `now`.
#[must_use]
pub fn is_due(s: &Schedule, last_run: Option<Timestamp>, now: &Zoned) -> bool {
    next_run(s, last_run, now) <= *now
}

/// Seconds until `t` (0 when past), for sleeping.
#[must_use]
pub fn seconds_until(t: &Zoned, now: &Zoned) -> u64 {
    let span = now
        .timestamp()
        .until(t.timestamp())
        .unwrap_or_else(|_| 0.seconds());
    u64::try_from(span.get_seconds()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use jiff::tz::{Offset, TimeZone};

    use super::*;

    fn at(s: &str) -> Zoned {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(TimeZone::UTC)
            .unwrap()
    }

    fn sched(daily: &str, blackout: &[&str], initial: bool) -> Schedule {
        Schedule {
            daily_at: parse_hhmm(daily).unwrap(),
            blackout: blackout
                .iter()
                .map(|b| Blackout::parse(b).unwrap())
                .collect(),
            initial_run: initial,
        }
    }

    #[test]
    fn initial_run_is_now_unless_blacked_out() {
        let s = sched("23:00", &["01:45-02:30"], true);
        let now = at("2025-03-10T10:00");
        assert_eq!(next_run(&s, None, &now), now);
        assert!(is_due(&s, None, &now));
        let now = at("2025-03-10T02:00");
        assert_eq!(next_run(&s, None, &now), at("2025-03-10T02:30"));
        assert!(!is_due(&s, None, &now));
    }

    #[test]
    fn without_initial_run_waits_for_the_daily_time() {
        let s = sched("23:00", &[], false);
        assert_eq!(
            next_run(&s, None, &at("2025-03-10T10:00")),
            at("2025-03-10T23:00")
        );
        assert_eq!(
            next_run(&s, None, &at("2025-03-10T23:30")),
            at("2025-03-11T23:00")
        );
    }

    #[test]
    fn daily_after_the_last_run() {
        let s = sched("23:00", &[], true);
        let last = at("2025-03-10T23:00").timestamp();
        assert_eq!(
            next_run(&s, Some(last), &at("2025-03-11T09:00")),
            at("2025-03-11T23:00")
        );
        assert!(!is_due(&s, Some(last), &at("2025-03-11T22:59")));
        assert!(is_due(&s, Some(last), &at("2025-03-11T23:00")));
        // The initial run happened at 10:00: the next is the same evening.
        let last = at("2025-03-10T10:00").timestamp();
        assert_eq!(
            next_run(&s, Some(last), &at("2025-03-10T10:05")),
            at("2025-03-10T23:00")
        );
    }

    #[test]
    fn a_missed_run_is_caught_up_once() {
        let s = sched("23:00", &[], false);
        let last = at("2025-03-07T23:00").timestamp();
        let now = at("2025-03-10T12:00");
        assert_eq!(next_run(&s, Some(last), &now), now);
        // …and after that catch-up run, the normal time again.
        assert_eq!(
            next_run(&s, Some(now.timestamp()), &at("2025-03-10T12:01")),
            at("2025-03-10T23:00")
        );
    }

    /// A last run recorded a month ahead (the clock was set back after it): the policy
    /// runs at its next daily time, not a month later; a last run less than a day ahead
    /// (a small correction) still counts.
    #[test]
    fn a_clock_set_back_does_not_stop_the_schedule() {
        let s = sched("23:00", &[], false);
        let now = at("2025-03-11T09:00");
        let future = at("2025-04-10T23:00").timestamp();
        assert!(clock_went_back(future, &now));
        assert_eq!(next_run(&s, Some(future), &now), at("2025-03-11T23:00"));
        let slightly = at("2025-03-11T09:30").timestamp();
        assert!(!clock_went_back(slightly, &now));
        assert_eq!(next_run(&s, Some(slightly), &now), at("2025-03-11T23:00"));
    }

    #[test]
    fn a_queued_run_is_blocked_until_the_windows_end() {
        let s = sched("01:00", &["01:45-02:30", "02:30-02:45"], false);
        assert_eq!(blocked_until(&s, &at("2025-03-10T01:44")), None);
        assert_eq!(
            blocked_until(&s, &at("2025-03-10T01:50")),
            Some(at("2025-03-10T02:45"))
        );
        assert_eq!(blocked_until(&s, &at("2025-03-10T02:45")), None);
    }

    #[test]
    fn blackout_moves_the_run_to_its_end() {
        let s = sched("02:00", &["01:45-02:30"], false);
        let last = at("2025-03-10T02:30").timestamp();
        assert_eq!(
            next_run(&s, Some(last), &at("2025-03-10T12:00")),
            at("2025-03-11T02:30")
        );
        // A window across midnight, and a second window chained at its end.
        let s = sched("23:30", &["23:00-00:30", "00:30-01:00"], false);
        assert_eq!(
            next_run(&s, None, &at("2025-03-10T12:00")),
            at("2025-03-11T01:00")
        );
        // Outside the window nothing moves.
        let s = sched("03:00", &["01:45-02:30"], false);
        assert_eq!(
            next_run(&s, None, &at("2025-03-10T00:00")),
            at("2025-03-10T03:00")
        );
    }

    #[test]
    fn local_time_zone_is_respected() {
        let zone = TimeZone::fixed(Offset::constant(2));
        let s = sched("23:00", &[], false);
        let now = at("2025-03-10T12:00").timestamp().to_zoned(zone.clone());
        let next = next_run(&s, None, &now);
        assert_eq!(next.time(), parse_hhmm("23:00").unwrap());
        assert_eq!(next.timestamp(), at("2025-03-10T21:00").timestamp());
        assert_eq!(seconds_until(&next, &now), 9 * 3600);
    }

    /// On the night a fall-back repeats 02:00–03:00, a blackout ending at 02:30 ends at
    /// the 02:30 after now, not at the one an hour before.
    #[test]
    fn a_blackout_in_the_repeated_hour_ends_after_now() {
        let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let s = sched("02:00", &["01:45-02:30"], false);
        // 2025-10-26 00:10 UTC is 02:10 CEST (first pass); 01:10 UTC is 02:10 CET (second).
        for (utc, end_utc) in [
            ("2025-10-26T00:10", "2025-10-26T00:30"),
            ("2025-10-26T01:10", "2025-10-26T01:30"),
        ] {
            let now = at(utc).timestamp().to_zoned(berlin.clone());
            let end = blocked_until(&s, &now).expect("inside the window");
            assert_eq!(end.timestamp(), at(end_utc).timestamp(), "{now}");
        }
        // The daily run of that day, due at the first 02:00, waits for the window's end.
        let last = at("2025-10-25T00:00").timestamp();
        let now = at("2025-10-26T01:10").timestamp().to_zoned(berlin.clone());
        assert!(!is_due(&s, Some(last), &now));
        assert!(next_run(&s, Some(last), &now) > now);
    }

    #[test]
    fn parse_errors() {
        assert!(parse_hhmm("24:00").is_err());
        assert!(parse_hhmm("7").is_err());
        assert!(Blackout::parse("01:45").is_err());
        assert!(Blackout::parse("01:45-01:45").is_err());
    }
}
