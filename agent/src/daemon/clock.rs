//! Whether this machine's clock can be trusted for decisions that remove or skip things.
//!
//! Retention measures ages, the job history forgets by age, and a schedule that finds its
//! last run recorded in the future counts from now: each trusts the local clock. A proxy
//! VM's clock can be wrong for a while (a host time sync gone wrong, a boot before NTP
//! corrected it), and then retention would delete points younger than its minimum age, the
//! job history would forget jobs and their idempotency keys, and a schedule would run at
//! the wrong hour. So the daemon compares the clock with vCenter's (`CurrentTime`) every
//! ten minutes, and while they differ by more than [`MAX_SKEW_SECS`] those decisions wait.
//! (`vadp-agent schedule run-due` checks once at its start, and every backup job compares
//! too.) Until a first comparison succeeded the clock is not trusted either: a clock a
//! week ahead, on a proxy whose first call to vCenter failed, would otherwise pass.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::vsphere::SoapClient;

/// The largest difference from vCenter's clock that still counts as the same time.
pub const MAX_SKEW_SECS: i64 = 300;

/// How often the daemon compares.
const CHECK_EVERY: Duration = Duration::from_secs(600);

/// Local minus vCenter, in seconds, as last measured (0 until then).
static SKEW_SECS: AtomicI64 = AtomicI64::new(0);

/// Whether a comparison ever succeeded.
static MEASURED: AtomicBool = AtomicBool::new(false);

/// Whether the local clock agrees with vCenter's, as last measured (not before a first
/// measurement).
#[must_use]
pub fn trusted() -> bool {
    untrusted_because().is_none()
}

/// Why the local clock is not trusted, if it is not: said where a decision waits.
#[must_use]
pub fn untrusted_because() -> Option<String> {
    let skew = SKEW_SECS.load(Ordering::Relaxed);
    if !MEASURED.load(Ordering::Relaxed) {
        Some("this machine's clock has not been compared with vCenter's yet (its CurrentTime could not be read)".into())
    } else if skew.abs() > MAX_SKEW_SECS {
        Some(format!(
            "this machine's clock differs from vCenter's by {skew} s"
        ))
    } else {
        None
    }
}

/// The last measured difference, local minus vCenter, in seconds.
#[must_use]
pub fn skew_secs() -> i64 {
    SKEW_SECS.load(Ordering::Relaxed)
}

/// vCenter's time now, in this machine's time zone: the local clock less the last measured
/// skew (the local clock until a first measurement). Schedules and blackout windows are
/// judged by it, so that a proxy whose clock is hours off (a boot before NTP set it) runs
/// a policy at the hour it is due and keeps its snapshots out of a window as vCenter
/// (and the VCF Operations nodes) count them.
#[must_use]
pub fn vcenter_now() -> jiff::Zoned {
    let now = jiff::Zoned::now();
    now.checked_sub(jiff::SignedDuration::from_secs(skew_secs()))
        .unwrap_or(now)
}

/// Records a measured skew (tests, and [`check`]).
pub fn set_skew_secs(skew: i64) {
    let measured = MEASURED.swap(true, Ordering::Relaxed);
    let before = SKEW_SECS.swap(skew, Ordering::Relaxed);
    let (was, is) = (
        !measured || before.abs() <= MAX_SKEW_SECS,
        skew.abs() <= MAX_SKEW_SECS,
    );
    if was && !is {
        tracing::warn!(
            skew_secs = skew,
            "this machine's clock differs from vCenter's: retention, the job history's trimming and schedule corrections wait until they agree"
        );
    } else if !was && is {
        tracing::info!(
            skew_secs = skew,
            "this machine's clock agrees with vCenter's again"
        );
    }
}

/// Why the clock could not be compared.
#[derive(Debug)]
pub enum Measure {
    /// `CurrentTime` failed.
    Call(crate::vsphere::VsphereError),
    /// Its answer does not parse.
    Parse(String),
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Call(e) => write!(f, "{e}"),
            Self::Parse(m) => f.write_str(m),
        }
    }
}

/// This machine's clock minus vCenter's, in seconds (`CurrentTime`, taken as answered
/// half-way through the call).
///
/// # Errors
/// The call's error, or `CurrentTime`'s text when it does not parse.
pub async fn measure_skew(soap: &SoapClient) -> Result<i64, Measure> {
    let asked = jiff::Timestamp::now();
    let text = soap.current_time().await.map_err(Measure::Call)?;
    let theirs = text.parse::<jiff::Timestamp>().map_err(|e| {
        Measure::Parse(format!(
            "vCenter's CurrentTime {text:?} does not parse: {e}"
        ))
    })?;
    let answered = jiff::Timestamp::now();
    let mid = asked.as_millisecond() / 2 + answered.as_millisecond() / 2;
    Ok((mid - theirs.as_millisecond()) / 1000)
}

/// Compares the clock with vCenter's once; a failed call leaves the last measurement. A
/// certificate that no longer verifies (renewed, replaced) is logged as an error at once,
/// before a job meets it: every call fails until the pin or the CA file is updated.
pub async fn check(soap: &SoapClient) {
    match measure_skew(soap).await {
        Ok(skew) => set_skew_secs(skew),
        Err(Measure::Call(e)) if e.is_certificate_failure() => tracing::error!(
            error = %crate::engine::error_chain(&e),
            "vCenter's certificate no longer verifies: every backup and restore will fail \
             until the thumbprint (or CA file) in the configuration is updated"
        ),
        Err(e) => tracing::debug!(error = %e, "comparing the clock with vCenter's"),
    }
}

/// The daemon's loop: [`check`] now and every ten minutes until `stop`.
pub async fn watch(soap: SoapClient, stop: CancellationToken) {
    loop {
        check(&soap).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
