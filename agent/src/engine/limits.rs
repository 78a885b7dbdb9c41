//! Concurrency limits for disk reads: per job, per ESXi host and per datastore. A disk
//! read takes one permit of each, always in that order (job, host, datastore), so two
//! readers never wait on each other in a cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many disks may be read at once.
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

/// The semaphores behind [`Limits`] for one job.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: Limits,
    job: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    datastores: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Permits held while one disk is read.
#[derive(Debug)]
pub(crate) struct Permits {
    _job: OwnedSemaphorePermit,
    _host: Option<OwnedSemaphorePermit>,
    _datastore: Option<OwnedSemaphorePermit>,
}

impl Gate {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            job: Arc::new(Semaphore::new(limits.disks_per_job.max(1))),
            hosts: Mutex::new(HashMap::new()),
            datastores: Mutex::new(HashMap::new()),
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
        let host = Self::permit(&self.hosts, host, self.limits.disks_per_host).await;
        let datastore =
            Self::permit(&self.datastores, datastore, self.limits.disks_per_datastore).await;
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
        let gate = Arc::new(Gate::new(Limits {
            disks_per_job: 8,
            disks_per_host: 8,
            disks_per_datastore: 2,
        }));
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (gate, inside, peak) = (gate.clone(), inside.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let ds = if i % 2 == 0 { "ds1" } else { "ds2" };
                let _p = gate.enter(Some("host-1"), Some(ds)).await;
                if ds == "ds1" {
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if ds == "ds1" {
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
