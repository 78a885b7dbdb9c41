//! Concurrency limits for disk reads (backups) and writes (restores): per job, per ESXi
//! host and per datastore. A disk read or written takes one permit of each, always in that
//! order (job, host, datastore), so two disks never wait on each other in a cycle. The host
//! and datastore limits protect the production storage, so they hold across jobs: the
//! daemon's jobs share one [`PlaceLimits`]; a job given none has its own.
//!
//! A backup opens a disk's VDDK connection (a vCenter session of its own, logged in with
//! the agent's credentials) only once the disk has its permits, and closes it when the disk
//! is read: a job holds at most `disks_per_job` connections at once, however many VMs it
//! backs up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many disks may be read (or written) at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// In one job (all its VMs together).
    pub disks_per_job: usize,
    /// On one ESXi host.
    pub disks_per_host: usize,
    /// From one datastore.
    pub disks_per_datastore: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            disks_per_job: 4,
            disks_per_host: 4,
            disks_per_datastore: 2,
        }
    }
}

/// The per-host and per-datastore semaphores behind [`Limits`], shared by the jobs that
/// run at once (the daemon's), so that `disks_per_host` and `disks_per_datastore` count
/// every disk the agent reads from a host or datastore, whatever job reads it.
#[derive(Debug)]
pub struct PlaceLimits {
    disks_per_host: usize,
    disks_per_datastore: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    datastores: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl PlaceLimits {
    /// Semaphores of `limits.disks_per_host` and `limits.disks_per_datastore` permits per
    /// host and per datastore, made when first used.
    #[must_use]
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            disks_per_host: limits.disks_per_host,
            disks_per_datastore: limits.disks_per_datastore,
            hosts: Mutex::new(HashMap::new()),
            datastores: Mutex::new(HashMap::new()),
        })
    }
}

/// The semaphores behind [`Limits`] for one job.
#[derive(Debug)]
pub(crate) struct Gate {
    job: Arc<Semaphore>,
    places: Arc<PlaceLimits>,
}

/// Permits held while one disk is read or written.
#[derive(Debug)]
pub(crate) struct Permits {
    _job: OwnedSemaphorePermit,
    _host: Option<OwnedSemaphorePermit>,
    _datastore: Option<OwnedSemaphorePermit>,
}

impl Gate {
    /// The job's own semaphore of `limits.disks_per_job`, and `places` (shared with other
    /// jobs) or, without, the job's own per-host and per-datastore semaphores.
    pub(crate) fn new(limits: Limits, places: Option<Arc<PlaceLimits>>) -> Self {
        Self {
            job: Arc::new(Semaphore::new(limits.disks_per_job.max(1))),
            places: places.unwrap_or_else(|| PlaceLimits::new(limits)),
        }
    }

    /// A permit of the semaphore `key` of `map` (created with `n` permits), or none without a key.
    async fn permit(
        map: &Mutex<HashMap<String, Arc<Semaphore>>>,
        key: Option<&str>,
        n: usize,
    ) -> Option<OwnedSemaphorePermit> {
        let key = key?;
        let semaphore = {
            let mut map = map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(
                map.entry(key.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(n.max(1)))),
            )
        };
        // The semaphores are never closed, so acquire cannot fail.
        Some(
            semaphore
                .acquire_owned()
                .await
                .expect("limit semaphores are never closed"),
        )
    }

    /// Waits for a permit of the job, then of `host`, then of `datastore`.
    pub(crate) async fn enter(&self, host: Option<&str>, datastore: Option<&str>) -> Permits {
        let job = Arc::clone(&self.job)
            .acquire_owned()
            .await
            .expect("limit semaphores are never closed");
        let p = &self.places;
        let host = Self::permit(&p.hosts, host, p.disks_per_host).await;
        let datastore = Self::permit(&p.datastores, datastore, p.disks_per_datastore).await;
        Permits {
            _job: job,
            _host: host,
            _datastore: datastore,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_exceeds_the_datastore_limit() {
        let limits = Limits {
            disks_per_job: 8,
            disks_per_host: 8,
            disks_per_datastore: 2,
        };
        let gate = Arc::new(Gate::new(limits, None));
        assert_eq!(peak_of_ds1(vec![gate; 12]).await, 2);
        // Three jobs sharing their places: the datastore's limit holds across them, while
        // each job's own limit would let 4 of them in at once.
        let places = PlaceLimits::new(limits);
        let gates: Vec<Arc<Gate>> = (0..3)
            .map(|_| Arc::new(Gate::new(limits, Some(Arc::clone(&places)))))
            .collect();
        assert_eq!(
            peak_of_ds1(gates.iter().cycle().take(12).cloned().collect()).await,
            2
        );
        // Without sharing, each job counts only its own reads.
        let apart: Vec<Arc<Gate>> = (0..3).map(|_| Arc::new(Gate::new(limits, None))).collect();
        assert!(peak_of_ds1(apart.iter().cycle().take(12).cloned().collect()).await > 2);
    }

    /// Runs one read through each of `gates` at once, alternately of datastores ds1 and
    /// ds2 (reads 0, 2, … of ds1), and answers the most reads of ds1 at once.
    async fn peak_of_ds1(gates: Vec<Arc<Gate>>) -> usize {
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (i, gate) in gates.into_iter().enumerate() {
            let (inside, peak) = (inside.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let ds = if i % 2 == 0 { "ds1" } else { "ds2" };
                let _p = gate.enter(Some("host-1"), Some(ds)).await;
                if ds == "ds1" {
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if ds == "ds1" {
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        peak.load(Ordering::SeqCst)
    }
}
