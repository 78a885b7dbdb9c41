//! The engines: backup of a group of VMs (and, later, restore), with the side-effect
//! journal and its reconciler (ARCHITECTURE §3, §7).
//!
//! # Side effects and how each is undone
//!
//! | effect we cause in vSphere | journalled before it happens | undone by the job | undone after a crash |
//! |---|---|---|---|
//! | PrepareForAccess (RelocateVM_Task disabled) | `prepare_access` entry with the identity | EndAccess after the VM's snapshot is gone, on success, error, cancellation and panic | [`reconcile`] calls EndAccess with the journalled identity |
//! | CreateSnapshot_Task | `snapshot` entry with the snapshot name and job id; the moref is added once known | RemoveSnapshot_Task (consolidate) after the point commits or the VM fails | [`reconcile`] removes the journalled moref, or every snapshot whose description carries the job id |
//!
//! A job holds an exclusive `flock` on `locks/job-<id>.lock` in the repository while it
//! runs; the reconciler only touches the entries of jobs whose lock it can take, so it
//! never undoes the side effects of a job that is still running in another process.
//!
//! # Threads
//! The job itself is async (tokio): SOAP calls, task polling, scheduling. Nothing blocking
//! runs on the runtime: catalog calls and VDDK's PrepareForAccess/EndAccess/ConnectEx go
//! through `spawn_blocking`; each disk is read on its own named thread
//! (`backup/<vm>/<disk>`), which hands the VDDK disk to the repository pipeline's
//! `disk-read` thread.

// Errors carry what failed (the VM, disk, call and the vSphere fault), which makes them larger
// than clippy's 128-byte default; they travel on cold paths only.
#![allow(clippy::result_large_err)]

mod backup;
mod journal;
mod limits;
mod reconcile;
pub mod restore;
mod vddk_source;
pub mod vmx;

use std::sync::Arc;

pub use backup::{
    BackupError, BackupEvent, BackupReport, BackupRequest, DiskReport, SNAPSHOT_TAG, Slot,
    SnapshotGate, VmReport, VmRequest, VmSelector, failed_members, run_backup,
};
pub use journal::JobLock;
pub use limits::{Limits, PlaceLimits};
pub use reconcile::{ReconcileReport, reconcile};
pub use vddk_source::VddkSource;

use crate::repo::Repository;
use crate::vddk::{ConnectSpec, Credentials, TransportMode, Vddk};
use crate::vsphere::{SnapshotMoref, SoapClient, VmMoref};

/// Receives the engine's progress events (the CLI draws bars or prints JSON lines; the
/// daemon forwards them as server-sent events). Called from async tasks and disk threads.
pub type Observer = Arc<dyn Fn(&BackupEvent) + Send + Sync>;

/// How VDDK reaches vCenter (`ConnectEx`, PrepareForAccess/EndAccess).
#[derive(Debug, Clone)]
pub struct VddkTarget {
    /// vCenter host name or address.
    pub server: String,
    /// HTTPS port, `None` for 443.
    pub port: Option<u16>,
    /// SHA-1 thumbprint of vCenter's certificate.
    pub thumbprint: Option<String>,
    /// Credentials (a [`crate::vddk::Secret`] inside: never printed).
    pub credentials: Credentials,
    /// Transport modes to try, in order.
    pub transport_modes: Vec<TransportMode>,
    /// When [`Self::thumbprint`] is the certificate the agent's own verification accepted
    /// (a CA file or the system's roots, not a pin): where to read it again before each
    /// job ([`Self::refreshed`]). A renewed certificate still verifies for the agent's
    /// HTTPS clients but no longer matches what VDDK was given.
    pub recheck: Option<(url::Url, crate::vsphere::TlsVerification)>,
}

impl VddkTarget {
    /// This target with the thumbprint of the certificate vCenter presents now, verified
    /// as at start-up, when it is not pinned. A change is logged; a certificate that
    /// cannot be read leaves the last one (the job then fails on it, saying why).
    pub async fn refreshed(&self) -> Self {
        let mut target = self.clone();
        let Some((url, tls)) = &self.recheck else {
            return target;
        };
        // A short wait: a vCenter that does not answer fails the job soon after anyway.
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            crate::vsphere::verified_server_thumbprint(url, tls),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::vsphere::VsphereError::Config {
                reason: "no answer within 15 s".into(),
            })
        });
        match read {
            Ok(tp) => {
                let now = tp.to_string();
                if target.thumbprint.as_deref() != Some(now.as_str()) {
                    tracing::warn!(
                        server = %self.server,
                        old = target.thumbprint.as_deref().unwrap_or("none"),
                        new = %now,
                        "vCenter presents another certificate (renewed?), verified as before: \
                         VDDK is given its thumbprint from now on"
                    );
                    target.thumbprint = Some(now);
                }
            }
            Err(e) => tracing::warn!(
                server = %self.server,
                error = %error_chain(&e),
                "reading vCenter's certificate again for VDDK; the last thumbprint is kept"
            ),
        }
        target
    }

    /// The connect parameters for `vm`, at `snapshot` when given.
    #[must_use]
    pub fn spec(
        &self,
        vm: &VmMoref,
        snapshot: Option<&SnapshotMoref>,
        read_only: bool,
    ) -> ConnectSpec {
        ConnectSpec {
            server: self.server.clone(),
            port: self.port,
            thumbprint: self.thumbprint.clone(),
            credentials: self.credentials.clone(),
            vm: vm.0.clone(),
            snapshot: snapshot.map(|s| s.0.clone()),
            transport_modes: self.transport_modes.clone(),
            read_only,
        }
    }
}

impl Environment {
    /// This environment for a job that starts now: VDDK's thumbprint as vCenter's
    /// certificate is now ([`VddkTarget::refreshed`]).
    pub async fn for_job(&self) -> Self {
        Self {
            vddk_target: self.vddk_target.refreshed().await,
            ..self.clone()
        }
    }
}

/// Everything a job talks to.
#[derive(Debug, Clone)]
pub struct Environment {
    /// vim25 session (clones share it).
    pub soap: SoapClient,
    /// The loaded VDDK library.
    pub vddk: Vddk,
    /// How VDDK reaches vCenter.
    pub vddk_target: VddkTarget,
    /// The repository.
    pub repo: Arc<Repository>,
    /// Datacenter of the VMs, for datastore HTTP (`None`: the inventory's only one).
    pub datacenter: Option<String>,
}

/// `default`, or the milliseconds the environment variable `var` lists, comma-separated
/// (an empty value: none). The tests shorten the agent's retry pauses this way; a value
/// that is not such a list is warned about and `default` used.
pub(crate) fn pauses_from_env(
    var: &str,
    default: &[std::time::Duration],
) -> Vec<std::time::Duration> {
    let Ok(list) = std::env::var(var) else {
        return default.to_vec();
    };
    let parsed: Result<Vec<std::time::Duration>, _> = list
        .split(',')
        .map(str::trim)
        .filter(|ms| !ms.is_empty())
        .map(|ms| ms.parse().map(std::time::Duration::from_millis))
        .collect();
    parsed.unwrap_or_else(|e| {
        tracing::warn!(var, value = list, error = %e, "not a list of milliseconds; using the default pauses");
        default.to_vec()
    })
}

/// Fault injection for the crash tests: when the environment variable
/// `VADP_AGENT_CRASH_AT` names `point`, the process kills itself there (SIGKILL, as
/// `kill -9` would),
/// leaving only what is journalled. Points: `after-prepare-access`, `before-snapshot`,
/// `snapshot-task-running`, `snapshot-unrecorded`, `after-snapshot`, `disk-opened`, `mid-disk`,
/// `before-commit`, `after-commit`; in restores `restore-after-register`, `restore-after-prepare-access`,
/// `restore-disk-journalled`, `restore-after-attach` and `restore-after-data`; and in
/// `repo rebuild-catalog`, `rebuild-marked` and `rebuild-renamed`. `panic:<point>` panics
/// there instead (for the tests that a panic undoes what the job did).
pub(crate) fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT
        .get_or_init(|| std::env::var("VADP_AGENT_CRASH_AT").ok())
        .as_deref();
    if at.and_then(|a| a.strip_prefix("panic:")) == Some(point) {
        panic!("VADP_AGENT_CRASH_AT=panic:{point}");
    }
    if at == Some(point) {
        eprintln!("VADP_AGENT_CRASH_AT={point}: killing the process");
        // SIGKILL rather than abort(): no core dump to write, which on a machine that
        // collects them can take seconds the crash tests do not expect.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// Interleaving for the race tests: when `VADP_AGENT_PAUSE_AT` names `point`, the job
/// creates `<VADP_AGENT_PAUSE_DIR>/<point>.reached` there and waits until
/// `<point>.go` appears beside it, so that a test can run another process, or send a
/// signal, in between. Points: `restore-planned`, `restore-after-register`, `reconcile-after-read`,
/// `end-access` (before every EndAccess), and for [`pause_point_blocking`] `restore-mid-disk`, `backup-mid-disk` (disk threads) and
/// `verify-after-list` (a repository verify); `restore-cancel-requested` and
/// `serve-stopping` once a CLI restore or the daemon has seen its signal.
pub(crate) async fn pause_point(point: &str) {
    if let Some((reached, go)) = pause_files(point) {
        let _ = tokio::fs::write(&reached, b"").await;
        while !tokio::fs::try_exists(&go).await.unwrap_or(true) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// [`pause_point`] for threads outside the runtime.
pub(crate) fn pause_point_blocking(point: &str) {
    if let Some((reached, go)) = pause_files(point) {
        let _ = std::fs::write(&reached, b"");
        while !go.try_exists().unwrap_or(true) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The marker files of `point` when the environment pauses there (`VADP_AGENT_PAUSE_AT`
/// may name several points, separated by commas; a point whose `.go` file exists already
/// only marks that it was reached).
fn pause_files(point: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    static AT: std::sync::OnceLock<Option<(Vec<String>, std::path::PathBuf)>> =
        std::sync::OnceLock::new();
    let (at, dir) = AT
        .get_or_init(|| {
            let points = std::env::var("VADP_AGENT_PAUSE_AT").ok()?;
            let dir = std::env::var_os("VADP_AGENT_PAUSE_DIR")?;
            Some((points.split(',').map(str::to_owned).collect(), dir.into()))
        })
        .as_ref()?;
    at.iter().any(|a| a == point).then(|| {
        (
            dir.join(format!("{point}.reached")),
            dir.join(format!("{point}.go")),
        )
    })
}

/// Formats an error with its chain of causes: `outer: inner: innermost`.
#[must_use]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Runs a short blocking call (catalog, VDDK control calls) off the async workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, BackupError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Thread(format!("blocking call failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    type Leaf = (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    );

    /// A CA, and a maker of server certificates for 127.0.0.1 it issues.
    fn ca() -> (String, impl Fn() -> Leaf) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let issuer = rcgen::Issuer::new(params, key);
        let leaf = move || {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            (cert.der().clone(), der)
        };
        (pem, leaf)
    }

    /// Serves HTTPS on 127.0.0.1 with whatever certificate `current` holds at each
    /// connection, answering an empty 200.
    async fn serve(current: Arc<Mutex<Leaf>>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (cert, key) = {
                    let leaf = current.lock().unwrap();
                    (leaf.0.clone(), leaf.1.clone_key())
                };
                let config = rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(vec![cert], key)
                    .unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 4096];
                        let _ = tls.read(&mut buf).await;
                        let _ = tls
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            )
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    /// vCenter's certificate renewed by its CA while the daemon runs: the agent's HTTPS
    /// clients still verify it, and the next job gives VDDK the new thumbprint (VDDK checks
    /// the thumbprint only, so the old one would fail every connection). A pinned
    /// thumbprint is left as it is: a changed certificate then fails, as pinning asks.
    #[tokio::test]
    async fn a_renewed_certificate_is_given_to_vddk_at_the_next_job() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (ca_pem, leaf) = ca();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let current = Arc::new(Mutex::new(leaf()));
        let addr = serve(Arc::clone(&current)).await;
        let url = url::Url::parse(&format!("https://{addr}/sdk")).unwrap();
        let tls = crate::vsphere::TlsVerification::WithCaFile(ca_file);
        let now = || async {
            crate::vsphere::verified_server_thumbprint(&url, &tls)
                .await
                .unwrap()
                .to_string()
        };
        let first = now().await;
        let target = VddkTarget {
            server: "127.0.0.1".into(),
            port: Some(addr.port()),
            thumbprint: Some(first.clone()),
            credentials: Credentials::Password {
                user: "backup".into(),
                password: crate::vddk::Secret::new("secret"),
            },
            transport_modes: vec![TransportMode::NbdSsl],
            recheck: Some((url.clone(), tls.clone())),
        };
        assert_eq!(target.refreshed().await.thumbprint, Some(first.clone()));
        *current.lock().unwrap() = leaf();
        let renewed = now().await;
        assert_ne!(renewed, first);
        assert_eq!(target.refreshed().await.thumbprint, Some(renewed));
        let pinned = VddkTarget {
            recheck: None,
            ..target.clone()
        };
        assert_eq!(pinned.refreshed().await.thumbprint, Some(first));
    }
}
