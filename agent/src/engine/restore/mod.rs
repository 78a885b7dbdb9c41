//! Restore of a VM Service VM from a restore point (ARCHITECTURE §4, seed 001 §4, §6–§9,
//! VSPHERE.md §C.6–§C.7).
//!
//! 1. **Pre-flight** ([`predict`]): decode the point's ExtraConfig, read the Supervisor
//!    (does the VirtualMachine exist, its backup-version annotation), the namespace folder
//!    and its VMs (BIOS UUIDs), vCenter's version and instanceUuid; predict the restore type
//!    WCP will choose and every refusal it would make. Nothing has changed yet; a refusal
//!    or `--dry-run` stops here.
//! 2. **The VM**: for a *new* VM, directories of the restore's own are made
//!    (`<vm>-restore-<job>`, one per datastore; `plan::Placement` says why never the
//!    backup's paths), the disks are created in them (CreateVirtualDisk_Task, then
//!    SetVirtualDiskUuid with the backed-up uuid, which VM Operator's pvc-disk-data
//!    names), the backed-up `.vmx` is uploaded **byte for byte** except for the disk file
//!    names (pointed at the new files; the backup captured the `.vmx` while its snapshot
//!    existed, so they named redo logs) and `uuid.action = "keep"` (the BIOS UUID survives
//!    the new directory without a question at power-on), and registered (RegisterVM_Task) in a staging
//!    folder, `vadp-agent-restore`. Why not CreateVM_Task from the captured config: the
//!    `.vmx` *is* the configuration the guide asks vendors to keep intact (§5.2), every key
//!    of it (ExtraConfig, UUIDs, devices we do not model) survives registration, and no
//!    translation to a ConfigSpec can lose one. Why a staging folder: on 8.0U3 WCP
//!    registers any VM that appears in a namespace folder (§4.2); registered there, the VM
//!    only moves into the namespace folder once PrepareForAccess has disabled
//!    RelocateVM_Task, which WCP waits on (§7.3.3). *In place* (restore to existing), the
//!    existing VM's disks are overwritten — except its First Class Disks (PVC volumes),
//!    each swapped for a new disk at the same controller and unit (module `swap`) — and its
//!    `vmservice.*` ExtraConfig set back to the backup's. *Disk-only*, the chosen disks are
//!    restored into new files attached to the existing VM.
//! 3. **Data**: every step that changes vSphere is journalled first; PrepareForAccess;
//!    each disk is written through VDDK (read-write connection) on its own named thread
//!    (`restore/<vm>/<key>`) by the repository's restore pipeline (parallel chunk
//!    prefetch and decompression; zero chunks skipped on new thin disks); EndAccess —
//!    always, on error, cancellation and panic, and after a crash by the reconciler, which
//!    also removes (and reports) a VM shell a crashed restore left. A VM shell of a failed
//!    restore is destroyed *before* EndAccess, so that WCP, which registers a VM in a
//!    namespace folder once its RelocateVM_Task is enabled again, never registers it.
//! 4. **Registration**: `registervm` (with the network override), or, when WCP registers
//!    by itself after EndAccess (§4.2), the agent follows WCP's task; the cis task is
//!    polled through 5/10/20/40/80/100 %. Then the Supervisor is read back with `kube`:
//!    the VirtualMachine exists, PoweredOff, its `restored-*` PVCs are Bound, and the
//!    labels/annotations are as §8 says.

mod disks;
mod group;
mod plan;
pub mod predict;
mod sink;
mod swap;
mod unregistered;
mod verify;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use predict::{Facts, Prediction, Refusal, RestoreType, SupervisorVersion};
pub use sink::VddkSink;
pub use verify::is_restored_claim;

pub use group::{GroupRelated, GroupRestoreReport, run_group_restore};
use plan::Plan;
pub(crate) use swap::{FcdSwap, committing_of, swap_back, swaps_of};
pub(crate) use unregistered::{Unregistered, delete_dirs_named_in, delete_unregistered};

use super::journal::{self, JobLock, VmLock};
use super::{BackupError, Environment, blocking, crash_point, error_chain};
use crate::ids::{DiskKey, JobId, RestorePointId};
use crate::repo::catalog::{DiskRecord, JobEnd, JournalKind, RESTORED_IN_PLACE_PREFIX};
use crate::supervisor::{Created, RenewToken, Supervisor, SupervisorError};
use crate::vsphere::{
    DatastorePath, FolderMoref, MoRef, SubnetMapping, VapiClient, VapiError, VmMoref,
};
use crate::vsphere::{DiskChange, SubnetRef, TlsVerification};
use zeroize::Zeroizing;

/// The folder a new VM is registered into until PrepareForAccess holds it.
pub const STAGING_FOLDER: &str = "vadp-agent-restore";
/// How long the agent waits for WCP's own registration task when auto-registration is on.
pub const AUTO_REGISTRATION_WAIT: Duration = Duration::from_secs(120);
/// The longest wait for WCP's automatic registration a request may ask for: its task
/// starts within moments of EndAccess, and a longer wait only holds the job (and its
/// queue slot) while nothing happens.
pub const AUTO_REGISTRATION_WAIT_MAX: Duration = Duration::from_secs(3600);
/// registervm's documented timeout (§12.2).
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// What makes a restore request contradict itself, whatever the point, as the pre-flight
/// would refuse it later (checked where a request arrives: the CLI, the API's 400): disks
/// named outside a disk-only restore or twice, a disk-only restore without disks, a
/// datastore for a restore that writes into the VM that is there, a wait for WCP's
/// registration beyond [`AUTO_REGISTRATION_WAIT_MAX`].
///
/// # Errors
/// A message naming the field (as the API spells it; the CLI's options say the same).
pub fn check_request(
    mode: RestoreMode,
    disks: &[DiskKey],
    datastore: Option<&str>,
    auto_registration_wait: Duration,
) -> Result<(), String> {
    if let Some((i, k)) = disks
        .iter()
        .enumerate()
        .find(|(i, k)| disks[..*i].contains(k))
        .map(|(i, k)| (i, *k))
    {
        return Err(format!("disks: disk {k} is given twice (entry {})", i + 1));
    }
    match mode {
        RestoreMode::New | RestoreMode::Existing if !disks.is_empty() => {
            return Err(format!(
                "disks: disks are chosen only for a disk-only restore, not with mode {}",
                mode_name(mode)
            ));
        }
        RestoreMode::DiskOnly if disks.is_empty() => {
            return Err("disks: a disk-only restore needs the disks to restore".into());
        }
        _ => {}
    }
    if let Some(ds) = datastore
        && matches!(mode, RestoreMode::Existing | RestoreMode::DiskOnly)
    {
        return Err(format!(
            "datastore: {ds} places a new VM's files; a restore with mode {} writes into \
             the VM that is there",
            mode_name(mode)
        ));
    }
    if auto_registration_wait > AUTO_REGISTRATION_WAIT_MAX {
        return Err(format!(
            "auto_registration_wait_secs: {} s is longer than the {} s WCP's registration \
             could take to start",
            auto_registration_wait.as_secs(),
            AUTO_REGISTRATION_WAIT_MAX.as_secs()
        ));
    }
    Ok(())
}

fn mode_name(mode: RestoreMode) -> &'static str {
    match mode {
        RestoreMode::Auto => "auto",
        RestoreMode::New => "new",
        RestoreMode::Existing => "existing",
        RestoreMode::DiskOnly => "disk-only",
    }
}

/// What the operator asks for: the API's type, shared by the CLI and the daemon.
pub use plugin_api::types::RestoreMode;

/// A restore request.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The restore point.
    pub point: RestorePointId,
    /// Target namespace (default: the backup's).
    pub namespace: Option<String>,
    /// The mode asked for.
    pub mode: RestoreMode,
    /// Disk-only: the disks to restore.
    pub disks: Vec<DiskKey>,
    /// Network override.
    pub subnet_map: Vec<SubnetMapping>,
    /// A new VM's datastore (default: each disk's own, as backed up).
    pub datastore: Option<String>,
    /// Stop after the pre-flight.
    pub dry_run: bool,
    /// Before changing anything, read and check every chunk the disks need (a second read
    /// of the point's data), not only that each file exists.
    pub verify_first: bool,
    /// How long to wait for WCP's automatic registration before calling registervm
    /// ([`AUTO_REGISTRATION_WAIT`] by default; §9.1 step 4 says 1–2 minutes).
    pub auto_registration_wait: Duration,
    /// After registration, create the VirtualMachineGroup and VirtualMachineServices the
    /// point kept where the namespace has none of that name (§10.5 phase 2).
    pub recreate_related: bool,
    /// Disks written at once (per job, per ESXi host, per datastore).
    pub limits: super::Limits,
    /// The per-host and per-datastore semaphores shared with the jobs that run at once
    /// (the daemon's); `None`: the restore counts only its own writes.
    pub places: Option<Arc<super::PlaceLimits>>,
}

/// What a restore talks to besides the backup [`Environment`].
#[derive(Debug, Clone)]
pub struct RestoreEnv {
    /// vSphere, VDDK and the repository.
    pub env: Environment,
    /// vAPI REST (registervm, cis tasks).
    pub vapi: Arc<VapiClient>,
    /// The Supervisor's API.
    pub supervisor: Supervisor,
}

impl RestoreEnv {
    /// For a restore that starts now (see [`Environment::for_job`]).
    pub async fn for_job(&self) -> Self {
        Self {
            env: self.env.for_job().await,
            ..self.clone()
        }
    }
}

/// Where the Supervisor's API is (default: vCenter's address, the lab's layout).
#[derive(Clone, Default)]
pub struct SupervisorTarget {
    /// The API address; `None` for vCenter's own.
    pub url: Option<url::Url>,
    /// How its certificate is verified; `None`: vCenter's rules when the API is on
    /// vCenter's address, the system's roots otherwise.
    pub tls: Option<TlsVerification>,
    /// The bearer token; `None`: the vCenter SSO session's.
    pub token: Option<String>,
    /// The file `token` was read from, read again when the Supervisor refuses the token
    /// (whatever keeps it current, `kubectl vsphere login` run again say, has written a
    /// new one there).
    pub token_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SupervisorTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorTarget")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl SupervisorTarget {
    /// Connects to the Supervisor: vCenter's vAPI session (`vapi`, logged in here when
    /// needed) gives the token when none is set; `base` and `tls` are vCenter's address
    /// and rules. A token the Supervisor refuses is renewed from where it came from: the
    /// vAPI session (logged in again if vCenter ended it) or the token file (read again).
    async fn connect(
        self,
        base: &url::Url,
        tls: &TlsVerification,
        vapi: &Arc<VapiClient>,
    ) -> Result<Supervisor, RestoreError> {
        let supervisor_tls = match (self.tls, &self.url) {
            (Some(t), _) => t,
            (None, None) => tls.clone(),
            (None, Some(_)) => TlsVerification::SystemRoots,
        };
        // vCenter's own session goes to vCenter only: another Supervisor address needs its
        // own token.
        if self.token.is_none()
            && let Some(u) = &self.url
            && (u.host_str(), u.port_or_known_default())
                != (base.host_str(), base.port_or_known_default())
        {
            return Err(RestoreError::Invalid(format!(
                "the Supervisor at {} is not vCenter {}: give its token (--supervisor-token-file) rather than sending it vCenter's session",
                u.host_str().unwrap_or_default(),
                base.host_str().unwrap_or_default()
            )));
        }
        let url = self.url.unwrap_or_else(|| base.clone());
        let (token, renew): (String, Option<RenewToken>) = match self.token {
            Some(t) => (t, self.token_file.map(renew_from_file)),
            None => {
                let token = vapi
                    .bearer_token()
                    .await
                    .map_err(|source| RestoreError::Vapi {
                        what: "logging in to vAPI for the Supervisor token".into(),
                        source,
                    })?;
                (token, Some(renew_from_vapi(Arc::clone(vapi))))
            }
        };
        // Off the runtime: a CA file is read here.
        let url = url.as_str().trim_end_matches('/').to_owned();
        tokio::task::spawn_blocking(move || {
            Supervisor::connect(&url, &supervisor_tls, &token, renew)
        })
        .await
        .map_err(|e| RestoreError::Invalid(format!("connecting to the Supervisor: {e}")))?
        .map_err(RestoreError::from)
    }
}

/// Renews a Supervisor token taken from vCenter's vAPI session (see
/// [`VapiClient::renewed_bearer_token`]).
fn renew_from_vapi(vapi: Arc<VapiClient>) -> RenewToken {
    Arc::new(move |refused: Zeroizing<String>| {
        let vapi = Arc::clone(&vapi);
        Box::pin(async move {
            vapi.renewed_bearer_token(&refused)
                .await
                .map(|t| t.map(Zeroizing::new))
                .map_err(|e| format!("vAPI session: {e}"))
        })
    })
}

/// Renews a Supervisor token by reading its file again: the file's token when it is
/// another one.
fn renew_from_file(file: std::path::PathBuf) -> RenewToken {
    Arc::new(move |refused: Zeroizing<String>| {
        let file = file.clone();
        Box::pin(async move {
            let token = tokio::task::spawn_blocking(move || {
                crate::config::read_secret_file("the Supervisor token file", &file)
                    .map(|t| Zeroizing::new(t.expose().to_owned()))
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("reading the Supervisor token file: {e}"))??;
            Ok((token != refused).then_some(token))
        })
    })
}

/// A backup job's way to the Supervisor, where it reads the VirtualMachineGroup and
/// VirtualMachineServices around its VM Service VMs (seed 001 §10.3–§10.4): connected at
/// first use, so that a job without VM Service VMs never logs in to vAPI; one connection
/// (and at most one vAPI session, ended by [`Self::close`]) per job.
#[derive(Debug)]
pub struct SupervisorLink {
    base: url::Url,
    tls: TlsVerification,
    target: SupervisorTarget,
    vapi: Arc<VapiClient>,
    supervisor: tokio::sync::OnceCell<Result<Supervisor, String>>,
    /// Set at the first failed read: the job stops asking (each call may wait for its
    /// timeout) and says why for each later VM.
    unreadable: std::sync::OnceLock<String>,
}

impl SupervisorLink {
    /// A link to the Supervisor `target` names, through vCenter at `sdk_url` (verified
    /// with `tls`, logged in to with `credentials` if the Supervisor needs vCenter's
    /// session). Nothing is connected yet.
    ///
    /// # Errors
    /// A vAPI client that cannot be built (TLS set-up).
    pub fn new(
        sdk_url: &url::Url,
        tls: &TlsVerification,
        credentials: crate::vsphere::Credentials,
        target: SupervisorTarget,
    ) -> Result<Self, RestoreError> {
        let (base, vapi) = vapi_client(sdk_url, tls, credentials)?;
        Ok(Self {
            base,
            tls: tls.clone(),
            target,
            vapi: Arc::new(vapi),
            supervisor: tokio::sync::OnceCell::new(),
            unreadable: std::sync::OnceLock::new(),
        })
    }

    /// The Supervisor, connected at the first call; the same error at every call when it
    /// could not be.
    ///
    /// # Errors
    /// Why it could not be connected (a message naming what failed).
    pub async fn get(&self) -> Result<&Supervisor, &str> {
        self.supervisor
            .get_or_init(|| async {
                self.target
                    .clone()
                    .connect(&self.base, &self.tls, &self.vapi)
                    .await
                    .map_err(|e| crate::engine::error_chain(&e))
            })
            .await
            .as_ref()
            .map_err(String::as_str)
    }

    /// Why the Supervisor could not be read earlier in the job, if it could not.
    #[must_use]
    pub fn unreadable(&self) -> Option<&str> {
        self.unreadable.get().map(String::as_str)
    }

    /// Records that a read failed: the job asks no more.
    pub fn mark_unreadable(&self, why: &str) {
        let _ = self.unreadable.set(why.to_owned());
    }

    /// Ends the vAPI session a connection opened, if any.
    pub async fn close(&self) {
        if self.vapi.has_session() {
            let _ = self.vapi.logout().await;
        }
    }
}

/// vCenter's address for vAPI (`sdk_url` with the path `/`) and a vAPI client of it
/// (verified with `tls`; not logged in yet).
fn vapi_client(
    sdk_url: &url::Url,
    tls: &TlsVerification,
    credentials: crate::vsphere::Credentials,
) -> Result<(url::Url, VapiClient), RestoreError> {
    let mut base = sdk_url.clone();
    base.set_path("/");
    let vapi = VapiClient::new(base.clone(), tls, false, credentials).map_err(|source| {
        RestoreError::Vapi {
            what: format!("vAPI client for {base}"),
            source,
        }
    })?;
    Ok((base, vapi))
}

impl RestoreEnv {
    /// Connects the vAPI client (vCenter at `sdk_url`, verified with `tls`) and the
    /// Supervisor client.
    ///
    /// # Errors
    /// Bad URLs or TLS set-up, a failed vAPI login when the token comes from it.
    pub async fn connect(
        env: Environment,
        sdk_url: &url::Url,
        tls: &TlsVerification,
        credentials: crate::vsphere::Credentials,
        supervisor: SupervisorTarget,
    ) -> Result<Self, RestoreError> {
        // Off the runtime: a CA file (or the system's roots) is read here.
        let (sdk, tls_for_vapi) = (sdk_url.clone(), tls.clone());
        let (base, vapi) =
            tokio::task::spawn_blocking(move || vapi_client(&sdk, &tls_for_vapi, credentials))
                .await
                .map_err(|e| RestoreError::Invalid(format!("setting up the vAPI client: {e}")))??;
        let vapi = Arc::new(vapi);
        let supervisor = match supervisor.connect(&base, tls, &vapi).await {
            Ok(s) => s,
            Err(e) => {
                // The session logged in for the token is no one's to end after this.
                if vapi.has_session()
                    && let Err(out) = vapi.logout().await
                {
                    tracing::warn!(error = %out, "ending the vAPI session failed");
                }
                return Err(e);
            }
        };
        Ok(Self {
            env,
            vapi,
            supervisor,
        })
    }
}

/// A network override mapping (seed 001 §9.3) from `from` to `to`: subnet names, or
/// `subnetset:NAME` for subnet sets, where an empty `subnetset:` means the namespace's
/// default SubnetSet.
///
/// # Errors
/// A message naming the malformed mapping.
pub fn subnet_mapping(from: &str, to: &str) -> Result<SubnetMapping, String> {
    let side = |v: &str| match v.strip_prefix("subnetset:") {
        Some(name) => SubnetRef {
            kind: "SUBNETSET".into(),
            name: name.into(),
        },
        None => SubnetRef {
            kind: "SUBNET".into(),
            name: v.into(),
        },
    };
    let (current, new) = (side(from), side(to));
    if new.name.is_empty() || (current.name.is_empty() && current.kind == "SUBNET") {
        return Err(format!(
            "subnet mapping {from:?} -> {to:?}: names are required (an empty one only as subnetset:)"
        ));
    }
    Ok(SubnetMapping {
        current_subnet: current,
        new_subnet: new,
    })
}

/// Progress of a restore.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RestoreEvent {
    /// The pre-flight's prediction.
    Predicted {
        /// The prediction.
        prediction: Prediction,
    },
    /// A step of the restore.
    Step {
        /// What is happening.
        message: String,
    },
    /// A disk starts.
    DiskStarted {
        /// The VM written (several, one after the other, in a restore of several points).
        vm: VmMoref,
        /// Device key in the backup.
        disk: DiskKey,
        /// Label.
        label: String,
        /// Bytes to write.
        bytes_total: u64,
    },
    /// Bytes written so far.
    DiskProgress {
        /// The VM written (several, one after the other, in a restore of several points).
        vm: VmMoref,
        /// Device key.
        disk: DiskKey,
        /// Done.
        bytes_done: u64,
        /// Total.
        bytes_total: u64,
    },
    /// A disk is written.
    DiskFinished {
        /// The VM written (several, one after the other, in a restore of several points).
        vm: VmMoref,
        /// Device key.
        disk: DiskKey,
        /// Capacity.
        capacity_bytes: u64,
        /// Seconds.
        seconds: f64,
    },
    /// Registration progress (cis task).
    Registration {
        /// Percent.
        completed: u64,
        /// Of.
        total: u64,
    },
}

/// Receives restore events.
pub type RestoreObserver = Arc<dyn Fn(&RestoreEvent) + Send + Sync>;

/// Errors of a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A failure in the machinery shared with backups (vSphere, VDDK, repository).
    #[error(transparent)]
    Engine(#[from] BackupError),
    /// The pre-flight predicts refusals; nothing was changed.
    #[error("restore refused before any change: {}", describe_refusals(refusals))]
    Refused {
        /// What WCP (or the agent) would refuse.
        refusals: Vec<Refusal>,
    },
    /// The point cannot be restored whole: the pre-flight found an unreadable index or a
    /// missing chunk among the disks to restore; nothing was changed.
    #[error(
        "restore point {point} cannot be restored, nothing was changed: {count}{} problem(s) \
         in the disks to restore, first: {first}; pick another point, or run `vadp-agent repo \
         verify --repair` and back the VM up again to heal it",
        if *more { " or more" } else { "" }
    )]
    Unrestorable {
        /// The point.
        point: RestorePointId,
        /// How many problems were found ...
        count: usize,
        /// ... and whether the check stopped there (there may be more).
        more: bool,
        /// The first, as verify words it (file, digest, disk).
        first: String,
    },
    /// A request that makes no sense for this point.
    #[error("{0}")]
    Invalid(String),
    /// A vAPI call failed.
    #[error("{what}")]
    Vapi {
        /// What the agent was doing.
        what: String,
        /// The error.
        #[source]
        source: VapiError,
    },
    /// The Supervisor's API failed.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// Registration failed after the VM was restored.
    #[error("registration of {vm} failed (task {task}): {error_id}: {message}")]
    Registration {
        /// The VM.
        vm: VmMoref,
        /// The cis task.
        task: String,
        /// WCP's error id.
        error_id: String,
        /// Its message.
        message: String,
    },
}

fn describe_refusals(r: &[Refusal]) -> String {
    r.iter()
        .map(|r| format!("{}: {}", r.id, r.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One restored disk.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredDisk {
    /// Device key in the backup.
    pub key: DiskKey,
    /// Label.
    pub label: String,
    /// The file written.
    pub file: String,
    /// Capacity.
    pub capacity_bytes: u64,
    /// Seconds spent writing.
    pub seconds: f64,
}

/// What the Supervisor shows after registration.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Verification {
    /// `spec.powerState` of the VirtualMachine.
    pub power_state: Option<String>,
    /// Volumes and their claims.
    pub volumes: Vec<(String, String)>,
    /// Labels.
    pub labels: serde_json::Value,
    /// Annotations.
    pub annotations: serde_json::Value,
    /// What is not as seed 001 §8 says.
    pub problems: Vec<String>,
    /// What §10 leaves to the user: the VirtualMachineGroup the VM names
    /// (`spec.groupName`) and the VirtualMachineServices that select its labels, and what
    /// of them is missing (neither is in a VM's backup; recreate them with `kubectl
    /// apply` from your copy).
    pub related: Vec<String>,
}

/// What a restore did with a VM Operator object its point kept (a VirtualMachineGroup or
/// VirtualMachineService, seed 001 §10.3–§10.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelatedOutcome {
    /// Kept with the point, not recreated (not asked for, or a dry run).
    Kept,
    /// Created in the namespace after registration.
    Created,
    /// The namespace has one of that kind and name: left as it is.
    AlreadyThere,
    /// The Supervisor does not serve its kind at its API version.
    NotServed,
    /// Creating it failed (see `error`).
    Failed,
}

/// One kept VM Operator object and what the restore did with it.
#[derive(Debug, Clone, Serialize)]
pub struct RelatedObject {
    /// `VirtualMachineGroup` or `VirtualMachineService`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What was done.
    pub outcome: RelatedOutcome,
    /// Why creating it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the restore left for the user (a group's power state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RelatedObject {
    /// `obj`, kept with a point, before anything is done with it.
    fn kept(obj: &serde_json::Value) -> Self {
        Self {
            kind: crate::vmservice::related::kind_of(obj)
                .unwrap_or_default()
                .to_owned(),
            name: crate::vmservice::related::name_of(obj)
                .unwrap_or_default()
                .to_owned(),
            outcome: RelatedOutcome::Kept,
            error: None,
            note: None,
        }
    }
}

/// The result of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The job.
    pub job: JobId,
    /// The point.
    pub point: RestorePointId,
    /// `namespace/name`.
    pub vm_name: String,
    /// The pre-flight prediction.
    pub prediction: Prediction,
    /// The vSphere VM restored (`None` for a dry run).
    pub vm: Option<VmMoref>,
    /// Disks written.
    pub disks: Vec<RestoredDisk>,
    /// The registration task (`None` for a dry run).
    pub registration_task: Option<String>,
    /// Whether WCP started the registration by itself.
    pub auto_registered: bool,
    /// The Supervisor's view afterwards.
    pub verification: Option<Verification>,
    /// The VirtualMachineGroup and VirtualMachineServices the point kept, and what was
    /// done with each (created only when asked for, after registration).
    pub related: Vec<RelatedObject>,
    /// Seconds spent writing disks (the data path).
    pub data_seconds: f64,
    /// Bytes of disk capacity restored.
    pub bytes_total: u64,
    /// Whole restore.
    pub seconds: f64,
    /// What did not finish after the data was complete (EndAccess called): the wait for
    /// the registration, the registration itself, or the check after it, failed or was
    /// cancelled. The VM stays, with its disks whole; the restore did not succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<Unfinished>,
}

/// A restore whose data is complete and whose access ended, but whose registration (or the
/// check after it) did not finish ([`RestoreReport::unfinished`]).
#[derive(Debug, Clone, Serialize)]
pub struct Unfinished {
    /// Cancelled, rather than failed.
    pub cancelled: bool,
    /// What happened, what stays and what to check.
    pub error: String,
}

impl RestoreReport {
    /// Why the restore did not succeed although it returned a report: what did not
    /// finish after the data was complete.
    #[must_use]
    pub fn unfinished_error(&self) -> Option<&str> {
        self.unfinished.as_ref().map(|u| u.error.as_str())
    }
}

pub(super) fn vsphere(
    what: impl Into<String>,
) -> impl FnOnce(crate::vsphere::VsphereError) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Engine(BackupError::Vsphere { what, source })
}

/// The VM a restore works on, as the clean-up sees it.
#[derive(Debug)]
enum Target {
    /// A VM this restore creates: its files exist from the first disk on, its moref once
    /// registered. Removed on failure.
    Created(Option<VmMoref>),
    /// The user's VM, restored in place or given disks: never removed.
    Users(VmMoref),
}

/// What the job changed, for clean-up: the `vm_shell` and `prepare_access` journal
/// entries with what they stand for.
#[derive(Debug, Default)]
struct Effects {
    target: Option<(i64, Target)>,
    /// The PrepareForAccess entry, the VM and the identity it was called with.
    access: Option<(i64, VmMoref, String)>,
    /// Disk files a disk-only restore created and attached to the user's VM, until their
    /// data is written: a failed restore detaches and deletes them before EndAccess.
    attached: Vec<String>,
    /// First Class Disks a restore in place swapped for new disks, until the restore is
    /// complete: a failed restore swaps them back before EndAccess.
    swapped: Vec<FcdSwap>,
    /// The backup version whose ExtraConfig is being set on the VM once its swapped disks
    /// are written: from then on, a clean-up that finds it on the VM goes forward (the
    /// restore is complete) instead of swapping back.
    committing: Option<u64>,
    /// What a restore to a new VM made before registering it: deleted on failure.
    unregistered: Option<Unregistered>,
    /// The journal detail of a registered new VM (its directories among it, deleted whole
    /// after the VM is destroyed on failure).
    registered: Option<serde_json::Value>,
    /// A new VM's data is all written, its entry marked `complete`: a failed EndAccess
    /// keeps it rather than destroy it.
    complete: bool,
}

/// Runs a restore: pre-flight, VM, data, registration, verification.
///
/// # Errors
/// [`RestoreError::Refused`] before any change; otherwise the failing step. Whatever the
/// job changed is undone before it returns (a new VM shell is destroyed; EndAccess).
pub async fn run_restore(
    renv: &RestoreEnv,
    request: &RestoreRequest,
    observer: RestoreObserver,
    cancel: CancellationToken,
) -> Result<RestoreReport, RestoreError> {
    let renv = &renv.for_job().await;
    restore_planned(renv, request, None, observer, cancel)
        .await
        .map(|(report, _)| report)
}

/// [`run_restore`], answering its plan too (for the checks of a group restore). With
/// `preflight` (the restore type a group's pre-flight predicted, its chunks checked then),
/// a plan that now predicts another type, or a refusal, is refused before any change, and
/// neither the reconcile nor the chunk check is done again.
async fn restore_planned(
    renv: &RestoreEnv,
    request: &RestoreRequest,
    preflight: Option<RestoreType>,
    observer: RestoreObserver,
    cancel: CancellationToken,
) -> Result<(RestoreReport, Plan), RestoreError> {
    let started = Instant::now();
    let env = &renv.env;
    // The point stays until this restore has ended: retention and DELETE leave it alone
    // meanwhile, so the point the pre-flight checks is the one the disks are written from.
    let _lease = {
        let (repo, point) = (Arc::clone(&env.repo), request.point);
        blocking(move || repo.lease_point(point))
            .await?
            .map_err(BackupError::Repo)?
    };
    // What interrupted jobs left (a restore of this VM killed part-way: its access still
    // prepared, a half-created VM) is undone first, as a backup does, so that the plan
    // sees the VM as it is and PrepareForAccess is not refused for an old job's identity.
    // A dry run changes nothing, this included; a VM of a group restore was reconciled
    // for by the group, before its pre-flight.
    if !request.dry_run && preflight.is_none() {
        reconcile_first(env, &observer).await;
    }
    let plan = plan::plan(renv, request).await?;
    observer(&RestoreEvent::Predicted {
        prediction: plan.prediction.clone(),
    });
    let vm_name = format!("{}/{}", plan.namespace, plan.name);
    let mut report = RestoreReport {
        job: JobId::new_random(),
        point: request.point,
        vm_name: vm_name.clone(),
        prediction: plan.prediction.clone(),
        vm: None,
        disks: Vec::new(),
        registration_task: None,
        auto_registered: false,
        verification: None,
        related: plan.related.iter().map(RelatedObject::kept).collect(),
        data_seconds: 0.0,
        bytes_total: 0,
        seconds: 0.0,
        unfinished: None,
    };
    if !plan.prediction.refusals.is_empty() {
        return Err(RestoreError::Refused {
            refusals: plan.prediction.refusals.clone(),
        });
    }
    match preflight {
        None => check_chunks(env, &plan, request, &observer).await?,
        // The namespace changed since the group's pre-flight (a VM of that name came or
        // went while the VMs before it were restored): not what the user was shown.
        Some(was) if was != plan.prediction.restore_type => {
            return Err(RestoreError::Invalid(format!(
                "{vm_name}: the pre-flight predicted a {was}, the namespace now gives a {}; \
                 nothing was changed for this VM",
                plan.prediction.restore_type
            )));
        }
        Some(_) => {}
    }
    if request.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok((report, plan));
    }
    super::pause_point("restore-planned").await;
    let job = report.job;
    let root = env.repo.root().to_path_buf();
    let lock = blocking(move || JobLock::acquire(&root, job))
        .await?
        .map_err(|e| RestoreError::Invalid(format!("job lock: {e}")))?;
    // The VM restored in place, or given disks, is not backed up or restored by another
    // job meanwhile; a new VM's name is not restored to by another job meanwhile. Held
    // until this function returns, after the clean-up.
    // Refused before anything began: no lock file of this job is left behind.
    let _vm_lock = match lock_users_vm(env, &plan, &vm_name, job).await {
        Ok(l) => l,
        Err(e) => {
            drop(lock);
            JobLock::remove_file(env.repo.root(), job);
            return Err(e);
        }
    };
    let catalog = env.repo.catalog().clone();
    let what = format!("restore {vm_name} from {}", request.point);
    blocking(move || catalog.job_start(job, Some(what), crate::repo::now_secs()))
        .await?
        .map_err(BackupError::Catalog)?;
    let effects = Mutex::new(Effects::default());
    let outcome = {
        let fut = restore_steps(
            renv,
            &plan,
            request,
            &observer,
            &cancel,
            &effects,
            &mut report,
        );
        // A panic in a step still gets the clean-up below. A cancel is
        // not raced against the steps: dropping them mid-way would leave a vCenter task
        // (RegisterVM) finishing unrecorded and the disk threads writing while the clean-up
        // ends access and removes the VM. The steps stop at their next check instead, and
        // the disk threads at their next write, all closed before the clean-up starts.
        std::panic::AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(RestoreError::Engine(BackupError::Thread(
                    "the restore panicked".into(),
                )))
            })
    };
    if outcome.is_err() {
        undo(env, &effects, &observer).await;
    }
    let catalog = env.repo.catalog().clone();
    let end = JobEnd {
        succeeded: outcome.is_ok() && report.unfinished.is_none(),
        error: outcome
            .as_ref()
            .err()
            .map(|e| error_chain(e))
            .or_else(|| report.unfinished_error().map(str::to_owned)),
        stats: serde_json::to_value(&report).unwrap_or_default(),
    };
    blocking(move || catalog.job_finish(job, end, crate::repo::now_secs()))
        .await?
        .map_err(BackupError::Catalog)?;
    drop(lock);
    JobLock::remove_file(env.repo.root(), job);
    outcome?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((report, plan))
}

/// A missing chunk found part-way would leave an in-place restore's disks half overwritten
/// (and a new VM half written): the point's chunks are looked at (read and checked with
/// `verify_first`) before anything is touched.
async fn check_chunks(
    env: &Environment,
    plan: &Plan,
    request: &RestoreRequest,
    observer: &RestoreObserver,
) -> Result<(), RestoreError> {
    let (repo, point) = (Arc::clone(&env.repo), request.point);
    let keys: Vec<DiskKey> = plan.disks.iter().map(|d| d.key).collect();
    let read = request.verify_first;
    if read {
        observer(&RestoreEvent::Step {
            message: format!("verifying the chunks of point {point} before changing anything"),
        });
    }
    let check = blocking(move || repo.check_restorable(point, &keys, read))
        .await?
        .map_err(BackupError::Repo)?;
    match check.problems.first() {
        Some(first) => Err(RestoreError::Unrestorable {
            point: request.point,
            count: check.problems.len(),
            more: check.stopped_early,
            first: first.describe(),
        }),
        None => Ok(()),
    }
}

/// Undoes what interrupted jobs left before a restore plans (see [`run_restore`]),
/// saying what it did.
async fn reconcile_first(env: &Environment, observer: &RestoreObserver) {
    match super::reconcile::reconcile_in(env, &[], false).await {
        Ok(r) => {
            let did = r.snapshots_removed.len()
                + r.access_ended.len()
                + r.half_created_vms.len()
                + r.jobs_interrupted.len();
            if did > 0 || !r.errors.is_empty() {
                observer(&RestoreEvent::Step {
                    message: format!(
                        "reconciled interrupted jobs first: {} snapshots removed, access ended on {} VMs, {} unfinished restores cleaned up{}",
                        r.snapshots_removed.len(),
                        r.access_ended.len(),
                        r.half_created_vms.len(),
                        if r.errors.is_empty() {
                            String::new()
                        } else {
                            format!("; not undone: {}", r.errors.join("; "))
                        }
                    ),
                });
            }
        }
        Err(e) => tracing::warn!(error = %error_chain(&e), "reconcile at start failed"),
    }
}

/// The lock of the VM a restore in place, or disk-only, works on: not backed up or
/// restored by another job meanwhile. The plan read the VM before its lock was held, and
/// another job (or a user) may have changed it since: its disks, power state and snapshots
/// are read again under the lock, and a VM that is not what the plan saw is refused before
/// anything changes. For a restore to a new VM, the lock of its name: every restore to a
/// new VM of that name, whatever its namespace, registers the name in the staging folder,
/// where the clean-up of either could take the other's VM for its own.
async fn lock_users_vm(
    env: &Environment,
    plan: &Plan,
    vm_name: &str,
    job: JobId,
) -> Result<Option<VmLock>, RestoreError> {
    let acquire = |vm: VmMoref, name: String, what: &'static str| {
        let (root, vcenter) = (
            env.repo.root().to_path_buf(),
            env.soap.service_content().about.instance_uuid.clone(),
        );
        blocking(move || VmLock::acquire(&root, &vcenter, &vm, &name, job, what))
    };
    let Some(info) = plan
        .existing_vm
        .as_ref()
        .filter(|_| plan.prediction.restore_type != RestoreType::New)
    else {
        let pseudo = VmMoref(format!("new-{}", plan.name));
        let lock = acquire(pseudo, plan.name.clone(), "restore to a new VM").await??;
        return Ok(Some(lock));
    };
    let lock = acquire(info.moref.clone(), vm_name.to_owned(), "restore").await??;
    let seen = |i: &crate::vsphere::VmInfo| {
        let mut disks: Vec<_> = i
            .disks
            .iter()
            .map(|d| {
                (
                    d.key.0,
                    d.file_name.clone(),
                    d.vdisk_id.clone(),
                    d.capacity_bytes,
                )
            })
            .collect();
        disks.sort();
        (disks, i.power_state, i.all_snapshots().len())
    };
    let now = env
        .soap
        .vm_info(&info.moref)
        .await
        .map_err(vsphere(format!(
            "reading {} again under its lock",
            info.moref
        )))?;
    if seen(&now) != seen(info) {
        return Err(RestoreError::Invalid(format!(
            "{} ({vm_name}) changed while this restore was being planned (its disks, power state or snapshots are not what the plan saw: another job, or a user): nothing was changed; run the restore again",
            info.moref
        )));
    }
    Ok(Some(lock))
}

fn lock_effects(e: &Mutex<Effects>) -> std::sync::MutexGuard<'_, Effects> {
    e.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Undoes what a failed restore changed: a VM shell it created is destroyed; EndAccess.
async fn undo(env: &Environment, effects: &Mutex<Effects>, observer: &RestoreObserver) {
    let (access, target, attached, swapped, committing, unregistered, registered, complete) = {
        let mut e = lock_effects(effects);
        (
            e.access.take(),
            e.target.take(),
            std::mem::take(&mut e.attached),
            std::mem::take(&mut e.swapped),
            e.committing.take(),
            e.unregistered.take(),
            e.registered.take(),
            e.complete,
        )
    };
    // Before EndAccess, so WCP never sees half-written disks on the VM. If one stays
    // attached (or a First Class Disk swapped), its entry and EndAccess are left to
    // reconcile, which detaches (and swaps back) first.
    if let Some((_, Target::Users(vm))) = &target {
        let detached = attached.is_empty()
            || detach_unfinished(env, vm, &attached, Some(observer))
                .await
                .1;
        let swapped_back = swapped.is_empty()
            || swap_back(env, vm, &swapped, committing, Some(observer))
                .await
                .1;
        if !detached || !swapped_back {
            tracing::error!(vm = %vm, "restore clean-up: EndAccess waits until the unfinished disks are detached and the First Class Disks swapped back: run `vadp-agent reconcile`");
            return;
        }
    }
    // A VM shell this restore created goes before EndAccess: while RelocateVM_Task is
    // disabled WCP does not register a VM (§7.3.3), so it never takes the half-restored one
    // for a finished restore. If the shell stays, so does the access, for reconcile.
    let shell_stays = match target {
        None => false,
        Some((id, Target::Users(vm))) => {
            tracing::error!(vm = %vm, "restore failed part-way: the VM's disks are partly restored; restore it again");
            let _ = journal::close(env, id).await;
            false
        }
        Some((id, Target::Created(Some(vm)))) if complete => {
            // Every disk written, the VM in its namespace folder: EndAccess (below, and
            // reconcile if it fails again) finishes it, as reconcile would after a crash.
            tracing::warn!(vm = %vm, "the restored VM's data is all written, but the restore failed after it: the VM stays; check that WCP registered it, or register it by hand (§11.1)");
            observer(&RestoreEvent::Step {
                message: format!("keeping {vm}: its data is all written"),
            });
            let _ = journal::close(env, id).await;
            false
        }
        Some((id, Target::Created(Some(vm)))) => {
            observer(&RestoreEvent::Step {
                message: format!("removing the unfinished VM {vm}"),
            });
            match remove_shell(env, &vm).await {
                Ok(()) => {
                    let complete = match &registered {
                        Some(detail) => delete_dirs_named_in(env, detail).await.1,
                        None => true,
                    };
                    if complete {
                        let _ = journal::close(env, id).await;
                    } else {
                        tracing::error!(
                            journal = id,
                            "restore clean-up: the restore's directories stay: run `vadp-agent reconcile`"
                        );
                    }
                    false
                }
                Err(e) => {
                    tracing::error!(vm = %vm, error = %error_chain(&e), "restore clean-up: the unfinished VM stays, its access prepared; reconcile will retry");
                    true
                }
            }
        }
        Some((id, Target::Created(None))) => {
            let complete = match &unregistered {
                Some(u) => delete_unregistered(env, u, Some(observer)).await.1,
                None => true,
            };
            if complete {
                if let Err(e) = journal::close(env, id).await {
                    tracing::error!(journal = id, error = %error_chain(&e), "restore clean-up: the files are deleted but the journal entry stays open; reconcile closes it");
                }
            } else {
                tracing::error!(
                    journal = id,
                    "restore clean-up: files made before the VM was registered stay: run `vadp-agent reconcile`"
                );
            }
            false
        }
    };
    if let Some((id, vm, identity)) = access
        && !shell_stays
        && let Err(e) = journal::end_access(env, &vm, &identity, id, false).await
    {
        tracing::error!(vm = %vm, error = %error_chain(&e), "restore clean-up: EndAccess failed; reconcile will retry");
    }
}

/// Records in the restore's journal entry the disk files a disk-only restore attached and
/// has not finished writing, and the First Class Disks a restore in place swapped and has
/// not finished restoring, for `reconcile` after a crash.
async fn journal_attached(
    env: &Environment,
    effects: &Mutex<Effects>,
    report: &RestoreReport,
    point: RestorePointId,
    vm: &VmMoref,
) -> Result<(), RestoreError> {
    let (id, attached, swapped, committing) = {
        let e = lock_effects(effects);
        let Some((id, _)) = e.target else {
            return Ok(());
        };
        (id, e.attached.clone(), e.swapped.clone(), e.committing)
    };
    let mut detail = users_vm_detail(report.job, point, vm, &attached, &swapped);
    if let Some(v) = committing.filter(|_| !swapped.is_empty()) {
        detail["committing"] = v.into();
    }
    journal::update(env, id, detail).await?;
    Ok(())
}

/// The journal detail of a restore into the user's VM (in place or disk-only), with the
/// disk files a disk-only restore attached and has not finished writing and the First
/// Class Disks a restore in place swapped and has not finished restoring.
fn users_vm_detail(
    job: JobId,
    point: RestorePointId,
    vm: &VmMoref,
    attached: &[String],
    swapped: &[FcdSwap],
) -> serde_json::Value {
    let mut detail = json!({"job": job, "point": point, "vm": vm.as_str(), "in_place": true});
    if !attached.is_empty() {
        detail["attached"] = json!(attached);
    }
    if !swapped.is_empty() {
        detail["swapped"] = json!(swapped);
    }
    detail
}

/// Detaches and deletes the disks of a failed disk-only restore from the user's VM
/// (`observer`: the restore's, or none from `reconcile`): the files detached, and whether
/// none of `files` is attached any more (a file the VM does not have was never created or
/// is gone already). When not, the caller keeps the journal entry, and EndAccess waits:
/// WCP must not see half-written disks on the VM.
pub(crate) async fn detach_unfinished(
    env: &Environment,
    vm: &VmMoref,
    files: &[String],
    observer: Option<&RestoreObserver>,
) -> (Vec<String>, bool) {
    let mut detached = Vec::new();
    // An attach task the restore lost track of may still be running: judged once it ended.
    if let Err(e) = swap::wait_for_reconfigures(env, vm).await
        && !journal::is_gone(&e)
    {
        tracing::error!(vm = %vm, error = %error_chain(&e), files = ?files, "restore clean-up: a reconfiguration of the VM is still running; the unfinished restored disks stay until reconcile detaches them");
        return (detached, false);
    }
    let disks = match env.soap.vm_info(vm).await {
        Ok(info) => info.disks,
        Err(e) => {
            tracing::error!(vm = %vm, error = %error_chain(&e), files = ?files, "restore clean-up: cannot read the VM; the unfinished restored disks stay attached until reconcile detaches them");
            return (detached, false);
        }
    };
    let mut complete = true;
    for d in disks.iter().filter(|d| files.contains(&d.file_name)) {
        if let Some(observer) = observer {
            observer(&RestoreEvent::Step {
                message: format!("detaching and deleting the unfinished {}", d.file_name),
            });
        }
        match env.soap.detach_disk(vm, d.key, true).await {
            Ok(()) => detached.push(d.file_name.clone()),
            Err(e) => {
                complete = false;
                tracing::error!(vm = %vm, file = %d.file_name, error = %error_chain(&e), "restore clean-up: the unfinished restored disk stays attached until reconcile detaches it");
            }
        }
    }
    (detached, complete)
}

/// The directory of `vm`'s `.vmx` (`[ds] dir`), where a restore puts the disks it adds.
fn vm_dir(info: &crate::vsphere::VmInfo, vm: &VmMoref) -> Result<String, RestoreError> {
    info.vmx_path
        .as_deref()
        .and_then(|p| p.rsplit_once('/'))
        .map(|(d, _)| d.to_owned())
        .ok_or_else(|| RestoreError::Invalid(format!("{vm} has no .vmx path")))
}

/// Checks that the disk a swap attached at `file` carries the backed-up backing `uuid`,
/// which the backup's pvc-disk-data names and WCP matches the disk by (the FCD is no
/// longer on the VM, so its file name matches nothing): without it, registration would
/// fail after the data is written.
async fn check_backed_up_uuid(
    env: &Environment,
    vm: &VmMoref,
    file: &str,
    uuid: Option<&str>,
) -> Result<(), RestoreError> {
    let Some(uuid) = uuid else {
        return Ok(());
    };
    let info = env
        .soap
        .vm_info(vm)
        .await
        .map_err(vsphere(format!("reading {vm}")))?;
    let has = info
        .disks
        .iter()
        .find(|d| d.file_name == file)
        .and_then(|d| d.uuid.clone());
    if has
        .as_deref()
        .is_some_and(|h| predict::hex_of(h) == predict::hex_of(uuid))
    {
        return Ok(());
    }
    Err(RestoreError::Invalid(format!(
        "{vm} shows its new disk {file} with uuid {has:?}, not the backed-up {uuid} that \
         was set on it: WCP matches the restored disk by that uuid and would not find it"
    )))
}

/// Destroys a VM shell a restore created (powered off, never registered on the Supervisor).
pub(crate) async fn remove_shell(env: &Environment, vm: &VmMoref) -> Result<(), BackupError> {
    match env.soap.destroy(&vm.moref()).await {
        Ok(()) => Ok(()),
        Err(e) if journal::is_gone(&e) => Ok(()),
        Err(source) => Err(BackupError::Vsphere {
            what: format!("removing the unfinished VM {vm}"),
            source,
        }),
    }
}

/// The PrepareForAccess identity of a restore job: its own, as a backup's, so that ending
/// the access of an interrupted restore (reconcile) never ends that of a live one on the
/// same VM, whose PrepareForAccess vCenter refuses meanwhile instead.
fn access_identity(job: JobId) -> String {
    let id = job.to_string();
    format!("vadp-agent restore {}", &id[..8])
}

async fn restore_steps(
    renv: &RestoreEnv,
    plan: &Plan,
    request: &RestoreRequest,
    observer: &RestoreObserver,
    cancel: &CancellationToken,
    effects: &Mutex<Effects>,
    report: &mut RestoreReport,
) -> Result<(), RestoreError> {
    let env = &renv.env;
    let step = |m: String| observer(&RestoreEvent::Step { message: m });
    // Up to the data: once the disks are written, the few steps left finish the restore
    // rather than undo it.
    let check_cancel = || {
        if cancel.is_cancelled() {
            Err(RestoreError::Engine(BackupError::Cancelled))
        } else {
            Ok(())
        }
    };
    check_cancel()?;
    let dc = &plan.datacenter;
    let restore_type = plan.prediction.restore_type;
    // Targets: (backup disk, file to write, fresh?).
    let mut targets: Vec<(DiskRecord, String, bool)> = Vec::new();
    let vm = match (restore_type, plan.existing_vm.as_ref().map(|i| &i.moref)) {
        (RestoreType::New, _) | (RestoreType::Existing, None) => {
            // Fresh directories of the restore's own: never the backup's paths (see
            // `plan::Placement`).
            let placement = plan::placement(
                &plan.disks,
                &plan.name,
                report.job,
                plan.datastore.as_deref(),
            )?;
            let vmx_path = placement.vmx.clone();
            let path = DatastorePath::parse(&plan.dc_name, &vmx_path).map_err(|source| {
                BackupError::Datastore {
                    what: format!("the .vmx path {vmx_path}"),
                    source,
                }
            })?;
            // Before anything is created: a .vmx that cannot be pointed at the restored
            // disks stops the restore with nothing to undo.
            let bytes = plan::restored_vmx(&plan.vmx, &plan.disks, &placement.disks, &path)?;
            // Another restore of a VM of this name that has not finished (or not been
            // cleaned up) would meet this one in the staging folder, where the clean-up of
            // either could take the other's VM for its own: a running one holds the name's
            // lock (taken with the job's, see `lock_users_vm`), a crashed one has its entry
            // open.
            let catalog = env.repo.catalog().clone();
            let open = blocking(move || catalog.journal_open_entries())
                .await?
                .map_err(BackupError::from)?;
            if let Some(e) = open.iter().find(|e| {
                e.kind == "vm_shell"
                    && e.detail.get("name").and_then(serde_json::Value::as_str)
                        == Some(plan.name.as_str())
            }) {
                return Err(RestoreError::Invalid(format!(
                    "another restore of a VM named {} (job {}, journal entry {}) to a new VM was interrupted and has not been cleaned up (both would register the name in folder {STAGING_FOLDER}): run `vadp-agent reconcile`, fix what it reports, then restore again",
                    plan.name,
                    e.detail
                        .get("job")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("?"),
                    e.id
                )));
            }
            // Each directory and file is journalled before it is made (and the .vmx before
            // its upload): until the VM is registered, only the journal knows to delete
            // them.
            let mut made = Unregistered {
                datacenter: dc.clone(),
                job: Some(report.job),
                name: plan.name.clone(),
                dirs: Vec::new(),
                creating_dir: None,
                created: Vec::new(),
                creating: None,
                vmx: None,
                registering: false,
            };
            let shell_detail = |made: &Unregistered| {
                let mut detail =
                    json!({"job": report.job, "point": request.point, "vmx": vmx_path, "vm": null});
                if let (Some(d), Some(m)) = (detail.as_object_mut(), made.detail().as_object()) {
                    d.extend(m.clone());
                }
                detail
            };
            let shell_id = journal::open(
                env,
                JournalKind::VmShell,
                &VmMoref(format!("pending:{}", plan.name)),
                shell_detail(&made),
            )
            .await?;
            lock_effects(effects).target = Some((shell_id, Target::Created(None)));
            // What `made` says, in the clean-up's view and then in the journal.
            let record = |made: &Unregistered| {
                lock_effects(effects).unregistered = Some(made.clone());
                journal::update(env, shell_id, shell_detail(made))
            };
            for dir in &placement.dirs {
                check_cancel()?;
                made.creating_dir = Some(dir.clone());
                record(&made).await?;
                step(format!("making the directory {dir}"));
                if let Err(e) = env.soap.make_directory(dc, dir).await {
                    // There already: not this restore's, never deleted.
                    if e.fault_kind() == Some(crate::vsphere::FaultKind::FileAlreadyExists) {
                        made.creating_dir = None;
                        record(&made).await?;
                    }
                    return Err(vsphere(format!("making the directory {dir}"))(e));
                }
                crash_point("restore-dir-made");
                made.creating_dir = None;
                made.dirs.push(dir.clone());
                record(&made).await?;
            }
            for (d, file) in plan.disks.iter().zip(&placement.disks) {
                check_cancel()?;
                made.creating = Some(file.clone());
                record(&made).await?;
                crash_point("restore-new-disk-journalled");
                step(format!(
                    "creating {file} for {} ({} bytes)",
                    d.backing_file, d.capacity_bytes
                ));
                env.soap
                    .create_virtual_disk(dc, file, d.capacity_bytes.div_ceil(1024), true)
                    .await
                    .map_err(vsphere(format!("creating {file}")))?;
                made.creating = None;
                made.created.push(file.clone());
                record(&made).await?;
                if let Some(u) = &d.disk_uuid {
                    env.soap
                        .set_virtual_disk_uuid(dc, file, u)
                        .await
                        .map_err(vsphere(format!("setting the uuid of {file}")))?;
                }
                targets.push((d.clone(), file.clone(), true));
            }
            step(format!(
                "uploading the .vmx to {vmx_path} (ExtraConfig intact)"
            ));
            let len = bytes.len() as u64;
            check_cancel()?;
            made.vmx = Some(vmx_path.clone());
            record(&made).await?;
            crash_point("restore-vmx-journalled");
            env.soap
                .upload(&path, std::io::Cursor::new(bytes), len)
                .await
                .map_err(|source| BackupError::Datastore {
                    what: format!("uploading {vmx_path}"),
                    source,
                })?;
            // The NVRAM file where the `.vmx` names it (in the restore's own directory,
            // which the clean-up deletes whole): EFI variables, Secure Boot keys, a vTPM's
            // state, as they were.
            if let Some(nvram) = &plan.nvram
                && let Some(at) = crate::engine::backup::nvram_path(&path, &plan.entries)
            {
                step(format!(
                    "uploading the NVRAM file to [{}] {}",
                    at.datastore, at.path
                ));
                check_cancel()?;
                env.soap
                    .upload(&at, std::io::Cursor::new(nvram.clone()), nvram.len() as u64)
                    .await
                    .map_err(|source| BackupError::Datastore {
                        what: format!("uploading the NVRAM file [{}] {}", at.datastore, at.path),
                        source,
                    })?;
            }
            let staging = staging_folder(env, dc).await?;
            let pool = plan.pool.clone().ok_or_else(|| {
                RestoreError::Invalid(format!(
                    "no resource pool of namespace {} was found for the new VM",
                    plan.namespace
                ))
            })?;
            check_cancel()?;
            made.registering = true;
            record(&made).await?;
            step(format!("registering {vmx_path} in folder {STAGING_FOLDER}"));
            let vm = match env
                .soap
                .register_vm(&staging, &vmx_path, Some(&plan.name), &pool)
                .await
            {
                Ok(vm) => vm,
                Err(e) => {
                    // vCenter's answer was no (the call's own fault, or the task's): there
                    // is no VM of this restore to look for (one of the name in the staging
                    // folder is another's). A fault reading the task's state says nothing
                    // of the registration.
                    if matches!(
                        e,
                        crate::vsphere::VsphereError::Fault {
                            method: "RegisterVM_Task",
                            ..
                        } | crate::vsphere::VsphereError::TaskFailed { .. }
                    ) {
                        made.registering = false;
                        record(&made).await?;
                    }
                    return Err(vsphere(format!("registering {vmx_path}"))(e));
                }
            };
            crash_point("restore-registered");
            let detail = json!({"job": report.job, "point": request.point, "vmx": vmx_path,
                "vm": vm.as_str(), "name": plan.name, "datacenter": dc.value, "dirs": made.dirs});
            {
                // Registered: destroying the VM deletes its files, and the clean-up then
                // its directories.
                let mut e = lock_effects(effects);
                e.target = Some((shell_id, Target::Created(Some(vm.clone()))));
                e.unregistered = None;
                e.registered = Some(detail.clone());
            }
            journal::update(env, shell_id, detail).await?;
            crash_point("restore-after-register");
            super::pause_point("restore-after-register").await;
            vm
        }
        (RestoreType::Existing | RestoreType::DiskOnly, Some(vm)) => {
            // Journalled so that a crash leaves a report: the VM is the user's, partly
            // overwritten (in place) or with disks being added (disk-only).
            let id = journal::open(
                env,
                JournalKind::VmShell,
                vm,
                users_vm_detail(report.job, request.point, vm, &[], &[]),
            )
            .await?;
            lock_effects(effects).target = Some((id, Target::Users(vm.clone())));
            vm.clone()
        }
        (RestoreType::DiskOnly, None) => {
            return Err(RestoreError::Invalid(
                "a disk-only restore needs the VM to attach disks to".into(),
            ));
        }
    };
    report.vm = Some(vm.clone());
    check_cancel()?;
    // PrepareForAccess: WCP and DRS keep away until EndAccess.
    let identity = access_identity(report.job);
    let access = journal::open(
        env,
        JournalKind::PrepareAccess,
        &vm,
        json!({"job": report.job, "identity": identity}),
    )
    .await?;
    lock_effects(effects).access = Some((access, vm.clone(), identity.clone()));
    {
        let vddk = env.vddk.clone();
        let spec = env.vddk_target.spec(&vm, None, false);
        let identity = identity.clone();
        blocking(move || vddk.prepare_for_access(&spec, &identity))
            .await?
            .map_err(|source| BackupError::Vddk {
                what: format!("PrepareForAccess for {vm}"),
                source,
            })?;
    }
    step(format!(
        "PrepareForAccess on {vm}: RelocateVM_Task disabled"
    ));
    crash_point("restore-after-prepare-access");
    // In place, the backup's vmservice.* ExtraConfig goes on only once the disks are
    // written: EndAccess, which the clean-up of a failed restore also calls, tells WCP the
    // restore is complete, and a VM still carrying its own ExtraConfig then is one WCP
    // leaves alone rather than "restores" around half-written disks (§6.2).
    let mut extra_config_after_data = None;
    match restore_type {
        RestoreType::Existing if let Some(info) = &plan.existing_vm => {
            let entries = &plan.entries;
            let mut changes: Vec<crate::vsphere::ExtraConfigChange> = entries
                .iter()
                .filter(|(k, _)| k.starts_with("vmservice."))
                .map(|(k, v)| crate::vsphere::ExtraConfigChange::Set(k.clone(), v.clone()))
                .collect();
            for (k, _) in &info.extra_config {
                if k.starts_with("vmservice.") && !entries.iter().any(|(e, _)| e == k) {
                    changes.push(crate::vsphere::ExtraConfigChange::Remove(k.clone()));
                }
            }
            extra_config_after_data = Some(changes);
            // Before any of its disks is written or swapped: its next backup is full.
            mark_restored_in_place(env, &vm).await?;
            let short = &request.point.to_string()[..8];
            let job = &report.job.to_string()[..8];
            for d in &plan.disks {
                check_cancel()?;
                let current = plan::current_disk(info, d)
                    .ok_or_else(|| RestoreError::Invalid(format!("{vm} has no disk {}", d.key)))?;
                let Some(fcd_id) = &current.vdisk_id else {
                    targets.push((d.clone(), current.file_name.clone(), false));
                    continue;
                };
                // A First Class Disk (a PVC volume) is not written into: it is swapped for a
                // new disk at the same controller and unit (see `swap`), made beside it, on
                // the datastore its claim's storage class chose, which need not be the VM's.
                let file = format!(
                    "{}restored-{short}-{job}-{}.vmdk",
                    swap::folder_of(&current.file_name),
                    d.key
                );
                if info.disks.iter().any(|x| x.file_name == file) {
                    return Err(RestoreError::Invalid(format!(
                        "{vm} already has a disk {file}"
                    )));
                }
                let (Some(controller_key), Some(unit_number)) =
                    (current.controller_key, current.unit_number)
                else {
                    return Err(RestoreError::Invalid(format!(
                        "{vm}: disk {} ({}) has no controller or unit number",
                        d.key, current.file_name
                    )));
                };
                let swap = FcdSwap {
                    fcd_file: current.file_name.clone(),
                    fcd_key: current.key.0,
                    fcd_id: fcd_id.clone(),
                    fcd_capacity_kb: current.capacity_bytes.div_ceil(1024),
                    new_file: file.clone(),
                    controller_key,
                    unit_number,
                    fcd_disk_mode: current
                        .disk_mode
                        .clone()
                        .unwrap_or_else(|| "persistent".into()),
                    datacenter: Some(plan.datacenter.value.clone()),
                };
                let disk_mode = swap.fcd_disk_mode.clone();
                // Journalled before the new disk exists: a crash after it was made leaves a
                // file, or a detached FCD, that only the journal then remembers.
                lock_effects(effects).swapped.push(swap);
                journal_attached(env, effects, report, request.point, &vm).await?;
                crash_point("restore-swap-journalled");
                // Made unattached and given the backed-up uuid before any VM uses it: a VM
                // reads a disk's uuid when the disk is attached, so the uuid set first is
                // the one vCenter and WCP see (a create spec's uuid need not be honoured,
                // and a uuid set on an attached disk may not show until the VM reloads).
                let capacity_kb = d.capacity_bytes.div_ceil(1024);
                step(format!(
                    "creating {file} for disk {} ({}) in place of First Class Disk {} ({fcd_id})",
                    d.key, d.label, current.file_name
                ));
                env.soap
                    .create_virtual_disk(
                        &plan.datacenter,
                        &file,
                        capacity_kb,
                        current.thin_provisioned.unwrap_or(true),
                    )
                    .await
                    .map_err(vsphere(format!("creating {file}")))?;
                if let Some(uuid) = d.disk_uuid.as_deref() {
                    env.soap
                        .set_virtual_disk_uuid(&plan.datacenter, &file, uuid)
                        .await
                        .map_err(vsphere(format!("setting the uuid of {file}")))?;
                }
                crash_point("restore-swap-created");
                step(format!(
                    "swapping First Class Disk {} for {file} at its controller and unit",
                    current.file_name
                ));
                env.soap
                    .reconfigure_disks(
                        &vm,
                        &[
                            DiskChange::Remove {
                                key: current.key,
                                destroy: false,
                            },
                            DiskChange::Attach {
                                path: &file,
                                capacity_kb,
                                controller_key,
                                unit_number,
                                disk_mode: &disk_mode,
                            },
                        ],
                    )
                    .await
                    .map_err(vsphere(format!(
                        "swapping {} for {file} on {vm}",
                        current.file_name
                    )))?;
                check_backed_up_uuid(env, &vm, &file, d.disk_uuid.as_deref()).await?;
                targets.push((d.clone(), file, true));
            }
            crash_point("restore-after-swap");
            super::pause_point("restore-after-swap").await;
        }
        RestoreType::DiskOnly => {
            let info = plan.existing_vm.as_ref().ok_or_else(|| {
                RestoreError::Invalid("a disk-only restore needs the VM to attach disks to".into())
            })?;
            let controller = info
                .disks
                .first()
                .and_then(|d| d.controller_key)
                .unwrap_or(1000);
            let mut used: Vec<i32> = info.disks.iter().filter_map(|d| d.unit_number).collect();
            let vmx_dir = vm_dir(info, &vm)?;
            // The job in the name too: a file of an earlier restore of this point, which the
            // user may keep attached, is never this job's to create, journal or take away.
            let short = &request.point.to_string()[..8];
            let job = &report.job.to_string()[..8];
            for d in &plan.disks {
                check_cancel()?;
                let file = format!("{vmx_dir}/restored-{short}-{job}-{}.vmdk", d.key);
                if info.disks.iter().any(|x| x.file_name == file) {
                    return Err(RestoreError::Invalid(format!(
                        "{vm} already has a disk {file}"
                    )));
                }
                let unit = (0..16)
                    .find(|u| *u != 7 && !used.contains(u))
                    .ok_or_else(|| RestoreError::Invalid(format!("{vm} has no free SCSI unit")))?;
                used.push(unit);
                // Journalled before it exists: a crash between the task and a later journal
                // write would leave an empty disk on the user's VM that nothing records.
                lock_effects(effects).attached.push(file.clone());
                journal_attached(env, effects, report, request.point, &vm).await?;
                crash_point("restore-disk-journalled");
                step(format!("creating {file} for disk {} ({})", d.key, d.label));
                env.soap
                    .add_new_disk(
                        &vm,
                        &file,
                        d.capacity_bytes.div_ceil(1024),
                        true,
                        controller,
                        unit,
                    )
                    .await
                    .map_err(vsphere(format!("creating {file} on {vm}")))?;
                targets.push((d.clone(), file, true));
            }
            crash_point("restore-after-attach");
        }
        _ => {}
    }
    // The data.
    check_cancel()?;
    let data_started = Instant::now();
    let gate = super::limits::Gate::new(request.limits, request.places.clone());
    report.disks =
        disks::write_disks(env, &vm, request.point, targets, &gate, observer, cancel).await?;
    if !std::mem::take(&mut lock_effects(effects).attached).is_empty() {
        // Written: no longer for a clean-up (or reconcile) to take away.
        journal_attached(env, effects, report, request.point, &vm).await?;
    }
    report.data_seconds = data_started.elapsed().as_secs_f64();
    report.bytes_total = report.disks.iter().map(|d| d.capacity_bytes).sum();
    if let Some(changes) = extra_config_after_data {
        // Said in the journal first: a crash (or a lost reply) from here on leaves the VM
        // with the backup's ExtraConfig or its own, and what is found decides whether the
        // swaps go forward or back.
        let swapped = !lock_effects(effects).swapped.is_empty();
        if swapped {
            lock_effects(effects).committing = plan.data.as_ref().and_then(|d| d.backup_version_ms);
            journal_attached(env, effects, report, request.point, &vm).await?;
        }
        crash_point("restore-committing");
        step(format!(
            "setting {vm}'s vmservice.* ExtraConfig back to the backup's"
        ));
        env.soap
            .set_extra_config(&vm, changes)
            .await
            .map_err(vsphere(format!("reconfiguring {vm}")))?;
        crash_point("restore-after-extra-config");
    }
    if !std::mem::take(&mut lock_effects(effects).swapped).is_empty() {
        lock_effects(effects).committing = None;
        // Restored, with the backup's ExtraConfig for WCP to register the new disks by: the
        // FCDs stay detached, for WCP to delete with their dangling PVCs (§6.2 step 7).
        journal_attached(env, effects, report, request.point, &vm).await?;
    }
    crash_point("restore-after-data");
    let created = matches!(lock_effects(effects).target, Some((_, Target::Created(_))));
    if created {
        let folder = plan.folder.clone().ok_or_else(|| {
            RestoreError::Invalid(format!("namespace {} has no folder", plan.namespace))
        })?;
        step(format!(
            "moving {vm} into the folder of namespace {}",
            plan.namespace
        ));
        env.soap
            .move_into_folder(&folder, std::slice::from_ref(&vm))
            .await
            .map_err(vsphere(format!("moving {vm} into {}", plan.namespace)))?;
    }
    // The VM's tasks before EndAccess: an in-place or disk-only restore keeps the moref, and
    // a registration task of an earlier restore must not pass for WCP's answer to this one.
    let earlier_tasks = if plan.prediction.auto_registration {
        match renv.vapi.tasks_of_vm(&vm).await {
            Ok(tasks) => tasks.into_keys().collect(),
            Err(e) => {
                tracing::warn!(vm = %vm, error = %error_chain(&e), "listing the VM's tasks before EndAccess; an earlier registration task could be taken for this one's");
                std::collections::BTreeSet::new()
            }
        }
    } else {
        std::collections::BTreeSet::new()
    };
    // EndAccess signals WCP that the restore is complete (§5.2). It stays among the effects
    // until it succeeded, so that a failure here is retried by the clean-up (and, failing
    // that, by reconcile), never left to the next backup.
    let (access_id, _, _) = lock_effects(effects)
        .access
        .clone()
        .ok_or_else(|| RestoreError::Invalid("PrepareForAccess was not recorded".into()))?;
    // A new VM is complete from here: should the agent die before the entry is closed,
    // reconcile ends the access and keeps the VM (WCP may be registering it) instead of
    // destroying it as half-restored.
    let shell_entry = {
        let e = lock_effects(effects);
        match (&e.target, &e.registered) {
            (Some((id, Target::Created(Some(_)))), Some(detail)) => Some((*id, detail.clone())),
            _ => None,
        }
    };
    if let Some((id, mut detail)) = shell_entry {
        detail["complete"] = true.into();
        journal::update(env, id, detail).await?;
        lock_effects(effects).complete = true;
    }
    crash_point("restore-complete-journalled");
    journal::end_access(env, &vm, &identity, access_id, true).await?;
    lock_effects(effects).access = None;
    step(format!(
        "EndAccess on {vm}: restore complete, RelocateVM_Task enabled"
    ));
    let target = lock_effects(effects).target.take();
    if let Some((id, _)) = target {
        journal::close(env, id).await?;
    }
    // Nothing is left to undo from here on: a cancel stops the waits for WCP's registration
    // (minutes at most) at once; the restored VM stays, and a registration task that was
    // started goes on in vCenter. Either way, or when the registration fails, the restore
    // returns its report (`unfinished` says what did not finish): the VM is restored, and
    // a caller that took it for not restored would have the user restore it again.
    let mut registered = false;
    let registration = async {
        let task = if plan.prediction.auto_registration {
            step("waiting for WCP's automatic registration".into());
            match wait_for_auto_task(renv, &vm, &earlier_tasks, request.auto_registration_wait)
                .await?
            {
                Some(t) => {
                    report.auto_registered = true;
                    t
                }
                None => {
                    super::pause_point("restore-before-registervm").await;
                    step("no automatic registration appeared: calling registervm".into());
                    register(renv, plan, &vm, &request.subnet_map).await?
                }
            }
        } else {
            register(renv, plan, &vm, &request.subnet_map).await?
        };
        report.registration_task = Some(task.clone());
        let mut task = task;
        let waited = follow_registration(renv, &task, observer).await;
        // registervm is not idempotent: WCP's own registration may have started after the
        // wait and before the call, and ours then fails on the VM it registered. WCP's task
        // decides then.
        let waited = match waited {
            Err(VapiError::TaskFailed { .. })
                if plan.prediction.auto_registration && !report.auto_registered =>
            {
                let mut seen = earlier_tasks.clone();
                seen.insert(task.clone());
                match wait_for_auto_task(renv, &vm, &seen, Duration::ZERO).await? {
                    Some(theirs) => {
                        step(format!(
                            "registervm task {task} failed, but WCP's own registration {theirs} started meanwhile: following it"
                        ));
                        report.auto_registered = true;
                        report.registration_task = Some(theirs.clone());
                        let r = follow_registration(renv, &theirs, observer).await;
                        task = theirs;
                        r
                    }
                    None => waited,
                }
            }
            other => other,
        };
        match waited {
            Ok(_) => {}
            Err(VapiError::TaskFailed { error, .. }) => {
                let (error_id, message) = error_parts(&error);
                return Err(RestoreError::Registration {
                    vm: vm.clone(),
                    task,
                    error_id,
                    message,
                });
            }
            Err(source) => {
                return Err(RestoreError::Vapi {
                    what: format!("following registration task {task}"),
                    source,
                });
            }
        }
        registered = true;
        if request.recreate_related {
            create_related(
                renv,
                &plan.namespace,
                &plan.related,
                &mut report.related,
                &step,
            )
            .await;
        }
        step("registration complete; reading the VirtualMachine back".into());
        super::pause_point("restore-before-verify").await;
        report.verification = Some(check_registered(renv, plan, report).await);
        // Asked for and not done: the namespace is not as the user wanted it.
        let not_created = not_created(renv, &plan.namespace, report.point, &report.related);
        if let Some(v) = report.verification.as_mut() {
            v.problems.extend(not_created);
        }
        Ok(())
    };
    let finished = tokio::select! {
        r = registration => r,
        () = cancel.cancelled() => Err(RestoreError::Engine(BackupError::Cancelled)),
    };
    if let Err(e) = finished {
        report.unfinished = Some(unfinished(plan, &vm, report, registered, &e));
    }
    Ok(())
}

/// Records that a restore in place begins writing `vm`'s disks
/// ([`RESTORED_IN_PLACE_PREFIX`]): the VM's next backup from its newest point now is full,
/// as VDDK's writes need not show in its change tracking.
async fn mark_restored_in_place(env: &Environment, vm: &VmMoref) -> Result<(), RestoreError> {
    let vcenter = env.soap.service_content().about.instance_uuid.clone();
    let catalog = env.repo.catalog().clone();
    let vm = vm.clone();
    blocking(move || {
        let key = format!("{RESTORED_IN_PLACE_PREFIX}{vcenter}/{vm}");
        let newest = catalog
            .latest_point(vcenter, vm)?
            .map(|p| p.id.to_string())
            .unwrap_or_default();
        catalog.set_meta(&key, &newest)
    })
    .await?
    .map_err(BackupError::Catalog)?;
    Ok(())
}

/// What a restore whose data is complete says when its registration, or the check after
/// it, failed or was cancelled (`e`).
fn unfinished(
    plan: &Plan,
    vm: &VmMoref,
    report: &RestoreReport,
    registered: bool,
    e: &RestoreError,
) -> Unfinished {
    let cancelled = matches!(e, RestoreError::Engine(BackupError::Cancelled));
    let what = if cancelled {
        "the restore was cancelled".to_owned()
    } else {
        error_chain(e)
    };
    let registration = match (&report.registration_task, registered) {
        (Some(task), true) => format!("registration task {task} completed"),
        (None, true) => "it is registered".to_owned(),
        (Some(task), false) => format!(
            "registration task {task} {}",
            if cancelled {
                "goes on in vCenter"
            } else {
                "did not complete"
            }
        ),
        (None, false) if plan.prediction.auto_registration => {
            "WCP had not started its registration yet (it may still)".to_owned()
        }
        (None, false) => "registervm was not called".to_owned(),
    };
    Unfinished {
        cancelled,
        error: format!(
            "{what} after {vm}'s data was restored and EndAccess called: the VM stays, with \
             its disks whole (no need to restore it again); {registration}: check it with \
             `kubectl get vm -n {} {}`",
            plan.namespace, plan.name
        ),
    }
}

/// The check after registration ([`verify::verify`]). The VM is restored and registered by
/// then: a check that cannot read it back (the Supervisor or vCenter unreachable) is a
/// problem of the report (the job ends failed, with what was done), not an error that
/// would hide the report.
async fn check_registered(renv: &RestoreEnv, plan: &Plan, report: &RestoreReport) -> Verification {
    match verify::verify(renv, plan, report).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %crate::engine::error_chain(&e), "the check after registration failed");
            Verification {
                problems: vec![format!(
                    "the VM is registered, but the check after registration could not \
                     read it back: {}; check it with `kubectl get vm -n {} {}`",
                    crate::engine::error_chain(&e),
                    plan.namespace,
                    plan.name
                )],
                ..Verification::default()
            }
        }
    }
}

/// The kept objects of `point` asked for and not created in `ns` (`related`), as problems
/// that say how to create them.
fn not_created(
    renv: &RestoreEnv,
    ns: &str,
    point: RestorePointId,
    related: &[RelatedObject],
) -> Vec<String> {
    related
        .iter()
        .filter_map(|r| {
            r.error.as_ref().map(|e| {
                format!(
                    "{} {} (kept with the point) was not created in {ns}: {e}; create it yourself \
                     (`vadp-agent show --repo {} --related {point} | kubectl create -n {ns} -f -`, \
                     §10.5)",
                    r.kind,
                    r.name,
                    renv.env.repo.root().display(),
                )
            })
        })
        .collect()
}

/// §10.5 phase 2, once the VMs are registered: creates each VirtualMachineGroup, then each
/// VirtualMachineService, of `objects` (kept with a point, in apply order) in namespace
/// `ns`, unless one of that kind and name is there (the user's wins). Never fails the
/// restore: what could not be created is recorded in `entries` (one per object), and
/// becomes a problem of the verification.
async fn create_related(
    renv: &RestoreEnv,
    ns: &str,
    objects: &[serde_json::Value],
    entries: &mut [RelatedObject],
    step: &(dyn Fn(String) + Sync),
) {
    for (obj, entry) in objects.iter().zip(entries.iter_mut()) {
        let what = crate::vmservice::related::describe(obj);
        let (obj, power) = crate::vmservice::related::for_restore(obj);
        match renv.supervisor.create_vmop_object(ns, &obj).await {
            Ok(Created::Created) => {
                entry.outcome = RelatedOutcome::Created;
                entry.note = power.map(|p| {
                    format!(
                        "created without spec.powerState {p}, which would power on the VM just \
                         restored: set it once the VMs are checked (kubectl patch \
                         virtualmachinegroup {} -n {ns} --type merge -p \
                         '{{\"spec\":{{\"powerState\":\"{p}\"}}}}', §10.5 phase 3)",
                        entry.name
                    )
                });
                step(format!(
                    "created {what} in {ns} (kept with the point){}",
                    entry
                        .note
                        .as_deref()
                        .map(|n| format!("; {n}"))
                        .unwrap_or_default()
                ));
            }
            Ok(Created::AlreadyThere) => {
                entry.outcome = RelatedOutcome::AlreadyThere;
                step(format!("{what} is in {ns} already: left as it is"));
            }
            Ok(Created::NotServed) => {
                entry.outcome = RelatedOutcome::NotServed;
                entry.error = Some(format!(
                    "the Supervisor does not serve {} at {}",
                    entry.kind,
                    obj.get("apiVersion")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("its apiVersion")
                ));
            }
            Err(e) => {
                entry.outcome = RelatedOutcome::Failed;
                entry.error = Some(crate::engine::error_chain(&e));
            }
        }
    }
}

/// Waits for registration task `task`, passing its progress on to `observer`.
async fn follow_registration(
    renv: &RestoreEnv,
    task: &str,
    observer: &RestoreObserver,
) -> Result<crate::vsphere::CisTaskInfo, VapiError> {
    let obs = observer.clone();
    renv.vapi
        .wait_for_task(task, REGISTRATION_TIMEOUT, move |p| {
            obs(&RestoreEvent::Registration {
                completed: p.completed,
                total: p.total,
            });
        })
        .await
}

/// WCP's error id and message from a cis task's error.
fn error_parts(error: &serde_json::Value) -> (String, String) {
    let m = error.pointer("/messages/0");
    let text = |key: &str| m.and_then(|m| m.get(key)).and_then(|s| s.as_str());
    (
        text("id").unwrap_or("unknown").to_owned(),
        text("default_message").map_or_else(|| error.to_string(), str::to_owned),
    )
}

async fn staging_folder(env: &Environment, dc: &MoRef) -> Result<FolderMoref, RestoreError> {
    match env.soap.find_namespace_folder(STAGING_FOLDER).await {
        Ok(f) => Ok(f),
        Err(crate::vsphere::VsphereError::NotFound { .. }) => {
            let root = env
                .soap
                .root_vm_folder(dc)
                .await
                .map_err(vsphere("finding the root VM folder"))?;
            env.soap
                .create_folder(&root, STAGING_FOLDER)
                .await
                .map_err(vsphere(format!("creating folder {STAGING_FOLDER}")))
        }
        Err(e) => Err(vsphere(format!("finding folder {STAGING_FOLDER}"))(e)),
    }
}

async fn register(
    renv: &RestoreEnv,
    plan: &Plan,
    vm: &VmMoref,
    subnet_map: &[SubnetMapping],
) -> Result<String, RestoreError> {
    renv.vapi
        .register_vm_with(&plan.namespace, vm, subnet_map)
        .await
        .map_err(|source| RestoreError::Vapi {
            what: format!("registervm of {vm} in namespace {}", plan.namespace),
            source,
        })
}

/// WCP's own registration task for `vm`, if one appears within `wait` (looked for once at
/// least; a task in `earlier`, there before EndAccess, is not it).
async fn wait_for_auto_task(
    renv: &RestoreEnv,
    vm: &VmMoref,
    earlier: &std::collections::BTreeSet<String>,
    wait: Duration,
) -> Result<Option<String>, RestoreError> {
    let started = Instant::now();
    loop {
        let tasks = renv
            .vapi
            .tasks_of_vm(vm)
            .await
            .map_err(|source| RestoreError::Vapi {
                what: format!("listing the tasks of {vm}"),
                source,
            })?;
        if let Some((id, _)) = tasks.into_iter().find(|(id, t)| {
            !earlier.contains(id)
                && t.operation.as_deref().is_some_and(|o| {
                    o.to_ascii_lowercase()
                        .replace('_', "")
                        .ends_with("registervm")
                })
        }) {
            return Ok(Some(id));
        }
        if started.elapsed() >= wait {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::SupervisorTarget;

    /// A restore's disk events name the VM written: the daemon keys a job's progress by
    /// VM and disk, and the VMs of a restore of several points share disk keys (2000, …),
    /// so that without it the second VM's disks overwrote the first's.
    #[test]
    fn disk_events_name_the_vm() {
        use super::{DiskKey, RestoreEvent, VmMoref};
        for e in [
            RestoreEvent::DiskStarted {
                vm: VmMoref("vm-7".into()),
                disk: DiskKey(2000),
                label: "Hard disk 1".into(),
                bytes_total: 10,
            },
            RestoreEvent::DiskProgress {
                vm: VmMoref("vm-7".into()),
                disk: DiskKey(2000),
                bytes_done: 5,
                bytes_total: 10,
            },
            RestoreEvent::DiskFinished {
                vm: VmMoref("vm-7".into()),
                disk: DiskKey(2000),
                capacity_bytes: 10,
                seconds: 1.0,
            },
        ] {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(
                (v["vm"].as_str(), v["disk"].as_i64()),
                (Some("vm-7"), Some(2000)),
                "{v}"
            );
        }
    }

    /// A lab vCenter + Supervisor, and a vAPI client of it (not logged in).
    fn lab_vcenter(
        dir: &std::path::Path,
    ) -> (
        lab::vcenter::InProcessVcenter,
        url::Url,
        crate::vsphere::TlsVerification,
        std::sync::Arc<super::VapiClient>,
    ) {
        let root = dir.join("lab");
        lab::Lab::create(&root).unwrap();
        let vc = lab::vcenter::InProcessVcenter::start(&root, false).unwrap();
        let r = vc.running();
        let tls = crate::vsphere::TlsVerification::Thumbprint(
            r.thumbprint.as_deref().unwrap().parse().unwrap(),
        );
        let credentials = crate::vsphere::Credentials::new(&r.user, &r.password);
        let (base, vapi) =
            super::vapi_client(&r.sdk_url.parse().unwrap(), &tls, credentials).unwrap();
        (vc, base, tls, std::sync::Arc::new(vapi))
    }

    /// A Supervisor read that must succeed (the namespace need not exist).
    async fn read(s: &crate::supervisor::Supervisor) -> Result<(), String> {
        s.namespace_annotation("ns1", "example.com/key")
            .await
            .map(|_| ())
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }

    /// vCenter ends a vAPI session left unused for 30 minutes, as a restore's disk copy
    /// leaves it: the Supervisor then refuses its token, and the next call logs in again
    /// and goes on. Callers that meet the refusal together make one login.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_supervisor_token_from_an_ended_vapi_session_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let (vc, base, tls, vapi) = lab_vcenter(dir.path());
        let lab_vc = &vc.running().vcenter;
        let supervisor = SupervisorTarget::default()
            .connect(&base, &tls, &vapi)
            .await
            .unwrap();
        read(&supervisor).await.unwrap();
        assert_eq!(lab_vc.api_login_count(), 1);

        lab_vc.end_api_sessions();
        read(&supervisor).await.unwrap();
        assert_eq!(lab_vc.api_login_count(), 2);

        assert!(vapi.has_session());
    }

    /// Callers that meet the Supervisor's 401 together wait for one renewal: the token's
    /// source is asked once, not once each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_refused_together_wait_for_one_renewal() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (vc, base, tls, vapi) = lab_vcenter(dir.path());
        let lab_vc = &vc.running().vcenter;
        let asked = Arc::new(AtomicUsize::new(0));
        let renew: super::RenewToken = {
            let (asked, inner) = (
                Arc::clone(&asked),
                super::renew_from_vapi(Arc::clone(&vapi)),
            );
            Arc::new(move |refused| {
                asked.fetch_add(1, Ordering::SeqCst);
                inner(refused)
            })
        };
        let token = vapi.bearer_token().await.unwrap();
        let url = base.as_str().trim_end_matches('/').to_owned();
        let supervisor = tokio::task::spawn_blocking(move || {
            crate::supervisor::Supervisor::connect(&url, &tls, &token, Some(renew))
        })
        .await
        .unwrap()
        .unwrap();
        read(&supervisor).await.unwrap();
        lab_vc.end_api_sessions();
        let reads = futures_util::future::join_all((0..8).map(|_| read(&supervisor))).await;
        assert!(reads.iter().all(Result::is_ok), "{reads:?}");
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one renewal for the 8 callers"
        );
        assert_eq!(lab_vc.api_login_count(), 2);
    }

    /// A token from a file is read again when the Supervisor refuses it: the same token
    /// fails the call (once, no loop), a new one in the file lets it through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_supervisor_token_from_a_file_is_read_again_when_refused() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (vc, base, tls, vapi) = lab_vcenter(dir.path());
        let lab_vc = &vc.running().vcenter;
        // Another client's session stands for `kubectl vsphere login`.
        let issuer = lab_vcenter_client(&vc, &tls);
        let first = issuer.bearer_token().await.unwrap();
        let file = dir.path().join("token");
        let write = |token: &str| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)
                .unwrap();
            std::io::Write::write_all(&mut f, token.as_bytes()).unwrap();
        };
        write(&first);
        let supervisor = SupervisorTarget {
            token: Some(first.clone()),
            token_file: Some(file.clone()),
            ..SupervisorTarget::default()
        }
        .connect(&base, &tls, &vapi)
        .await
        .unwrap();
        read(&supervisor).await.unwrap();

        lab_vc.end_api_sessions();
        let e = read(&supervisor).await.unwrap_err();
        assert!(e.contains("401"), "{e}");
        assert!(!e.contains(&first), "the token shows in {e}");

        let second = issuer.renewed_bearer_token(&first).await.unwrap().unwrap();
        assert_ne!(second, first);
        write(&second);
        read(&supervisor).await.unwrap();
        assert!(
            !vapi.has_session(),
            "the agent's own vAPI session was never used"
        );
    }

    fn lab_vcenter_client(
        vc: &lab::vcenter::InProcessVcenter,
        tls: &crate::vsphere::TlsVerification,
    ) -> super::VapiClient {
        let r = vc.running();
        let credentials = crate::vsphere::Credentials::new(&r.user, &r.password);
        super::vapi_client(&r.sdk_url.parse().unwrap(), tls, credentials)
            .unwrap()
            .1
    }

    #[test]
    fn a_supervisor_token_never_shows_in_debug_output() {
        let t = SupervisorTarget {
            token: Some("s3cret-bearer".into()),
            ..SupervisorTarget::default()
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cret-bearer"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
