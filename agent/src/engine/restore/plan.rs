//! The pre-flight: gathers the facts of a restore (the point's `.vmx` and ExtraConfig, the
//! Supervisor, the namespace folder, vCenter's version) and asks [`super::predict`] what WCP
//! will do; plus the `.vmx` rewriting a new VM needs.

use std::sync::Arc;

use super::predict::{self, Facts, Prediction, Refusal, RestoreType, SupervisorVersion};
use super::{RestoreEnv, RestoreError, RestoreMode, RestoreRequest, vsphere};
use crate::engine::{BackupError, blocking};
use crate::ids::JobId;
use crate::repo::catalog::DiskRecord;
use crate::vmservice::VmServiceData;
use crate::vsphere::{DatastorePath, FolderMoref, MoRef, ResourcePoolMoref, VmInfo, VmMoref};

/// Everything the pre-flight learnt, reused by the restore.
pub(super) struct Plan {
    pub(super) vmx: Vec<u8>,
    /// The NVRAM file kept with the point (none for points made before it was kept, and
    /// for VMs that had none).
    pub(super) nvram: Option<Vec<u8>>,
    /// The VirtualMachineGroup and VirtualMachineServices the point kept (§10.3–§10.4), in
    /// the order §10.5 recreates them.
    pub(super) related: Vec<serde_json::Value>,
    /// The `.vmx` entries, parsed once.
    pub(super) entries: Vec<(String, String)>,
    pub(super) data: Option<VmServiceData>,
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) folder: Option<FolderMoref>,
    /// The namespace's resource pool a new VM is registered into (`None` when the restore
    /// makes no new VM, or the pool was not found: then a refusal says so).
    pub(super) pool: Option<ResourcePoolMoref>,
    pub(super) api_version: String,
    /// The VM in the namespace folder with the backup's BIOS UUID (restored in place, or
    /// given the disks of a disk-only restore).
    pub(super) existing_vm: Option<VmInfo>,
    /// The VirtualMachine of that name as it was before the restore (what a restore in place
    /// keeps of it is checked against this afterwards).
    pub(super) existing_cr: Option<serde_json::Value>,
    pub(super) prediction: Prediction,
    /// The disks to restore, from the point.
    pub(super) disks: Vec<DiskRecord>,
    /// The datacenter (VirtualDiskManager calls name it).
    pub(super) datacenter: MoRef,
    /// Its name for datastore HTTP.
    pub(super) dc_name: String,
    /// The datastore a new VM's files go to (`None`: each disk's own).
    pub(super) datastore: Option<String>,
}

impl Plan {
    /// The backup's BIOS UUID (its `.vmx`'s `uuid.bios`), as hex digits only.
    pub(super) fn bios_uuid(&self) -> Option<String> {
        vmx_value(&self.entries, "uuid.bios").map(predict::hex_of)
    }
}

/// The disk of the VM restored in place that backup disk `d` is: the device of the same
/// key, unless its uuid says it is another disk; else the device with the backed-up uuid.
/// A device's key changes when its disk is detached and attached again (a restore in place
/// swaps a First Class Disk for a new disk carrying the backed-up uuid), its uuid does not.
pub(super) fn current_disk<'a>(
    info: &'a crate::vsphere::VmInfo,
    d: &DiskRecord,
) -> Option<&'a crate::vsphere::VirtualDiskInfo> {
    let same = |c: &crate::vsphere::VirtualDiskInfo| match (&c.uuid, &d.disk_uuid) {
        (Some(a), Some(b)) => predict::hex_of(a) == predict::hex_of(b),
        _ => false,
    };
    let by_key = info.disks.iter().find(|c| c.key == d.key);
    by_key
        .filter(|c| c.uuid.is_none() || d.disk_uuid.is_none() || same(c))
        .or_else(|| info.disks.iter().find(|c| same(c)))
        .or(by_key)
}

fn vmx_value<'a>(entries: &'a [(String, String)], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

pub(super) async fn plan(
    renv: &RestoreEnv,
    request: &RestoreRequest,
) -> Result<Plan, RestoreError> {
    let env = &renv.env;
    let repo = Arc::clone(&env.repo);
    let id = request.point;
    let (point, config) = blocking(move || {
        let p = repo.catalog().get_point(id)?;
        let c = repo.point_config(id)?;
        Ok::<_, crate::repo::RepoError>((p, c))
    })
    .await?
    .map_err(BackupError::Repo)?;
    let point = point.ok_or_else(|| RestoreError::Invalid(format!("no restore point {id}")))?;
    let (vmx, nvram, mut related) =
        config.map_or((None, None, Vec::new()), |c| (c.vmx, c.nvram, c.related));
    crate::vmservice::related::apply_order(&mut related);
    let vmx =
        vmx.ok_or_else(|| RestoreError::Invalid(format!("restore point {id} kept no .vmx file")))?;
    let entries = crate::engine::vmx::parse(&vmx)
        .map_err(|e| RestoreError::Invalid(format!("the .vmx of point {id}: {e}")))?;
    let data = crate::vmservice::decode(&entries);
    let name = data
        .as_ref()
        .and_then(|d| d.name.clone())
        .unwrap_or_else(|| point.vm.name.clone());
    let namespace = request
        .namespace
        .clone()
        .or_else(|| data.as_ref().and_then(|d| d.namespace.clone()))
        .or_else(|| point.vm.namespace.clone())
        .ok_or_else(|| {
            RestoreError::Invalid(format!(
                "point {id} names no namespace (not a VM Service VM?): give --namespace"
            ))
        })?;
    let about = env.soap.service_content().about.clone();
    let supervisor = SupervisorVersion::from_api_version(&about.api_version).ok_or_else(|| {
        RestoreError::Invalid(format!(
            "vCenter API {} has no VM Service restore: 8.0U3 or later is needed",
            about.api_version
        ))
    })?;
    let folder = match env.soap.find_namespace_folder(&namespace).await {
        Ok(f) => Some(f),
        Err(crate::vsphere::VsphereError::NotFound { .. }) => None,
        Err(e) => {
            return Err(vsphere(format!(
                "finding the folder of namespace {namespace}"
            ))(e));
        }
    };
    let api_version = data
        .as_ref()
        .and_then(|d| d.api_version.as_deref())
        .filter(|v| predict::supported_api_version(v))
        .and_then(|v| v.rsplit('/').next())
        .unwrap_or("v1alpha3")
        .to_owned();
    let existing_cr = renv
        .supervisor
        .virtual_machine(&namespace, &name, &api_version)
        .await?
        .map(|o| serde_json::to_value(o).unwrap_or_default());
    let bios_text = vmx_value(&entries, "uuid.bios");
    let bios = bios_text.map(predict::hex_of);
    // The namespace folder's VMs, read once: the VM with the backup's BIOS UUID, and (for a
    // new VM) whether its name is taken.
    let folder_vms = match &folder {
        Some(f) => env
            .soap
            .vms_in_folder_with_bios_uuids(f)
            .await
            .map_err(vsphere(format!("listing the VMs of namespace {namespace}")))?,
        None => Vec::new(),
    };
    let vm_with_bios = bios.as_ref().and_then(|bios| {
        folder_vms
            .iter()
            .find(|(_, _, u)| u.as_deref().map(predict::hex_of).as_ref() == Some(bios))
            .map(|(vm, _, _)| vm.clone())
    });
    // The VM a restore in place or disk-only works on, read once.
    let existing_vm = match &vm_with_bios {
        Some(vm) => Some(
            env.soap
                .vm_info(vm)
                .await
                .map_err(vsphere(format!("reading {vm}")))?,
        ),
        None => None,
    };
    // A disk-only restore leaves the VM's ExtraConfig as it is, so WCP weighs the VM's own
    // backup version against the annotation, not the backup's (§4.3): disks of any older
    // point can be restored that way. Its auto-registration keys are the VM's too (§4.2).
    let live = existing_vm
        .as_ref()
        .and_then(|info| crate::vmservice::decode(&info.extra_config));
    let as_wcp_sees_it = match (&request.mode, &live, &data) {
        (RestoreMode::DiskOnly, Some(live), Some(d)) => Some(crate::vmservice::VmServiceData {
            backup_version_ms: live.backup_version_ms,
            auto_registration_opt_in: live.auto_registration_opt_in,
            auto_registration_opt_out: live.auto_registration_opt_out,
            ..d.clone()
        }),
        _ => None,
    };
    let mut prediction = predict::predict(&Facts {
        data: as_wcp_sees_it.as_ref().or(data.as_ref()),
        name: &name,
        namespace: &namespace,
        folder_exists: folder.is_some(),
        supervisor,
        vcenter_uuid: &about.instance_uuid,
        existing_cr: existing_cr.as_ref(),
        vm_with_bios_uuid: vm_with_bios.as_ref().map(VmMoref::as_str),
        backup_bios_uuid: bios_text,
        network_override: !request.subnet_map.is_empty(),
    });
    // A disk-only restore `--mode auto` chose: WCP sees the VM's own keys (above).
    if prediction.restore_type == RestoreType::DiskOnly && as_wcp_sees_it.is_none() {
        prediction.auto_registration = predict::auto_registers(supervisor, live.as_ref());
    }
    let ours = |id: &str, reason: String| Refusal {
        id: format!("vadp-agent:{id}"),
        reason,
    };
    let wanted = match request.mode {
        RestoreMode::Auto => None,
        RestoreMode::New => Some(RestoreType::New),
        RestoreMode::Existing => Some(RestoreType::Existing),
        RestoreMode::DiskOnly => Some(RestoreType::DiskOnly),
    };
    if let Some(w) = wanted
        && w != prediction.restore_type
    {
        prediction.refusals.push(ours(
            "ModeMismatch",
            format!(
                "--mode asks for {w} but WCP would do {} for {namespace}/{name}",
                prediction.restore_type
            ),
        ));
    }
    if prediction.auto_registration && !request.subnet_map.is_empty() {
        prediction.refusals.push(ours(
            "AutoRegistration",
            "WCP registers this VM by itself (auto-registration is on), so a network override cannot be passed".into(),
        ));
    }
    // A mapping registervm would refuse (or silently not apply) only after every disk was
    // written: each must name a subnet the backup's VM uses (§9.3 step 1).
    if !request.subnet_map.is_empty()
        && let Some(yaml) = data.as_ref().and_then(|d| d.vm_yaml.as_ref())
    {
        for reason in subnet_map_problems(yaml, &request.subnet_map) {
            prediction.refusals.push(ours("SubnetNotInBackup", reason));
        }
    }
    let mut disks = point.disks.clone();
    match prediction.restore_type {
        RestoreType::DiskOnly => {
            if request.disks.is_empty() {
                prediction.refusals.push(ours(
                    "NoDisks",
                    "a disk-only restore needs --disk KEY for each disk to restore".into(),
                ));
            }
            for k in &request.disks {
                if !disks.iter().any(|d| d.key == *k) {
                    prediction
                        .refusals
                        .push(ours("UnknownDisk", format!("point {id} has no disk {k}")));
                }
            }
            disks.retain(|d| request.disks.contains(&d.key));
            if vm_with_bios.is_none() {
                prediction.refusals.push(ours(
                    "NoVm",
                    format!("no VM of namespace {namespace} has the backup's BIOS UUID to attach the disks to"),
                ));
            }
        }
        RestoreType::Existing | RestoreType::New => {
            if !request.disks.is_empty() {
                prediction.refusals.push(ours(
                    "DisksWithoutDiskOnly",
                    "--disk only applies to a disk-only restore".into(),
                ));
            }
        }
    }
    // A restore in place writes the VM's disks, and a disk-only restore adds disks to the
    // VM and writes them (a running guest would see a blank disk appear, and might format
    // it, while VDDK cannot open a disk the running VM holds): both want it off, and off
    // for VM Operator too.
    if let Some(info) = &existing_vm
        && matches!(
            prediction.restore_type,
            RestoreType::Existing | RestoreType::DiskOnly
        )
    {
        let vm = &info.moref;
        if info.power_state != Some(crate::vsphere::PowerState::PoweredOff) {
            let what = if prediction.restore_type == RestoreType::Existing {
                "restoring it in place (§9.2 step 2)"
            } else {
                "restoring disks into it"
            };
            prediction.refusals.push(ours(
                "PoweredOn",
                format!(
                    "{vm} ({name}) is not powered off: power it off before {what}: kubectl \
                     patch vm {name} -n {namespace} --type merge -p \
                     '{{\"spec\":{{\"powerState\":\"PoweredOff\"}}}}'"
                ),
            ));
        } else if let Some(wanted) = existing_cr
            .as_ref()
            .and_then(|cr| cr.pointer("/spec/powerState"))
            .and_then(serde_json::Value::as_str)
            .filter(|p| *p != "PoweredOff")
        {
            // Off in vSphere only: VM Operator powers it on again as soon as it reconciles,
            // perhaps while its disks are written (PrepareForAccess does not stop that).
            prediction.refusals.push(ours(
                "PoweredOn",
                format!(
                    "{vm} is off, but VirtualMachine {namespace}/{name} asks for {wanted} and VM Operator would power it on: kubectl patch vm {name} -n {namespace} --type merge -p '{{\"spec\":{{\"powerState\":\"PoweredOff\"}}}}' first (§9.2 step 2)"
                ),
            ));
        }
    }
    if let Some(info) = &existing_vm
        && prediction.restore_type == RestoreType::Existing
    {
        let vm = &info.moref;
        // With a snapshot the disks' current files are deltas over the snapshot's: the
        // restore would write (or swap) redo logs the snapshot still stands on, and a
        // revert would bring the old disks back under the restored ExtraConfig.
        // A backup's own snapshot is not counted: the backup holds the VM's lock, which
        // refuses this restore by name; a crashed one's is gone after the reconcile that
        // runs first.
        let snapshots: Vec<String> = info
            .all_snapshots()
            .iter()
            .filter(|t| crate::engine::journal::snapshot_job(&t.description).is_none())
            .map(|t| format!("{} ({})", t.name, t.snapshot))
            .collect();
        if !snapshots.is_empty() {
            prediction.refusals.push(ours(
                "HasSnapshots",
                format!(
                    "{vm} ({name}) has snapshots {}: delete them (or restore to new) before restoring it in place",
                    snapshots.join(", ")
                ),
            ));
        }
        for d in &disks {
            match current_disk(info, d) {
                Some(c) if c.capacity_bytes == d.capacity_bytes => {}
                Some(c) => prediction.refusals.push(ours(
                    "DiskChanged",
                    format!(
                        "{vm} disk {} is {} bytes, the backup's {} bytes: restore to new (delete the VM) or disk-only",
                        d.key, c.capacity_bytes, d.capacity_bytes
                    ),
                )),
                None => prediction.refusals.push(ours(
                    "DiskChanged",
                    format!("{vm} no longer has disk {} ({})", d.key, d.label),
                )),
            }
        }
    }
    let (datacenter, dc_name) = env
        .soap
        .only_datacenter()
        .await
        .map_err(vsphere("finding the datacenter"))?;
    let dc_name = env.datacenter.clone().unwrap_or(dc_name);
    let new_vm = prediction.restore_type == RestoreType::New
        || (prediction.restore_type == RestoreType::Existing && existing_vm.is_none());
    // A folder holds one VM of a name: a new VM could not be moved into the namespace's
    // folder beside another of its name (`DuplicateName`), which would be found only after
    // all its data was written.
    if new_vm && let Some((vm, _, _)) = folder_vms.iter().find(|(_, n, _)| *n == name) {
        prediction.refusals.push(ours(
            "NameTaken",
            format!(
                "{vm} in the folder of namespace {namespace} is already named {name}, and \
                 vCenter keeps one VM of a name in a folder: rename or remove {vm} first"
            ),
        ));
    }
    // The pool a new VM goes into, found before anything changes: registering it anywhere
    // else would put it outside the namespace's limits (VSPHERE.md §A.11).
    let pool = if new_vm {
        let annotated = match renv
            .supervisor
            .namespace_annotation(&namespace, "vmware-system-resource-pool")
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(
                    namespace,
                    error = %crate::engine::error_chain(&e),
                    "cannot read the namespace's resource pool annotation; finding its pool by name"
                );
                None
            }
        };
        match env
            .soap
            .namespace_resource_pool(&namespace, annotated.as_deref())
            .await
        {
            Ok(p) => Some(p),
            Err(
                e @ (crate::vsphere::VsphereError::NotFound { .. }
                | crate::vsphere::VsphereError::Ambiguous { .. }),
            ) => {
                prediction.refusals.push(ours(
                    "NoNamespacePool",
                    format!(
                        "no resource pool of namespace {namespace} to register the new VM into: {e}"
                    ),
                ));
                None
            }
            Err(e) => {
                return Err(vsphere(format!(
                    "finding the resource pool of namespace {namespace}"
                ))(e));
            }
        }
    } else {
        None
    };
    match (&request.datastore, new_vm) {
        (Some(ds), false) => prediction.refusals.push(ours(
            "DatastoreForNewOnly",
            format!(
                "--datastore {ds} places a new VM's files; a restore {} writes into the disks of the VM that is there",
                prediction.restore_type
            ),
        )),
        (_, true) => {
            let refusals = datastore_refusals(env, &datacenter, &point, &disks, request).await?;
            // Where the files go, as the restore will place them (with a stand-in job id:
            // the directory's name carries the real one's first 8 hex digits).
            match placement(
                &disks,
                &name,
                JobId(uuid::Uuid::nil()),
                request.datastore.as_deref(),
            ) {
                Err(e) => prediction.refusals.push(ours("BadName", e.to_string())),
                Ok(p) if refusals.is_empty() => {
                    let dir = |d: &str| d.replace("-restore-00000000", "-restore-<job>");
                    let mut text = format!(
                        "the VM's .vmx and disks in a new directory {}",
                        dir(&p.dirs[0])
                    );
                    if p.dirs.len() > 1 {
                        let others: Vec<String> = p.dirs[1..].iter().map(|d| dir(d)).collect();
                        text.push_str(&format!(", disks also in {}", others.join(", ")));
                    }
                    text.push_str(" (<job>: the first 8 hex digits of this job's id)");
                    prediction.expectations.push(text);
                }
                Ok(_) => {}
            }
            prediction.refusals.extend(refusals);
        }
        (None, false) => {}
    }
    if related.is_empty() && request.recreate_related {
        prediction.expectations.push(
            "the point keeps no VirtualMachineGroup or VirtualMachineService: nothing to recreate (a VM in none, or a point made before they were kept or without the Supervisor to read them from)".into(),
        );
    }
    if !related.is_empty() {
        let names: Vec<String> = related
            .iter()
            .map(crate::vmservice::related::describe)
            .collect();
        let powered = related
            .iter()
            .any(|o| crate::vmservice::related::for_restore(o).1.is_some());
        prediction.expectations.push(if request.recreate_related {
            format!(
                "after registration, {} (kept with the point) created in namespace {namespace} where it has none of that name (§10.5){}",
                names.join(", "),
                if powered {
                    "; a VirtualMachineGroup without its spec.powerState, which would power on the VM just restored (§8.1.4): set it once the VMs are checked"
                } else {
                    ""
                }
            )
        } else {
            format!(
                "the point keeps {}: not recreated (ask for it with --recreate-related, or `vadp-agent show --repo {} --related {id} | kubectl create -n {namespace} -f -`, §10.5)",
                names.join(", "),
                env.repo.root().display()
            )
        });
    }
    Ok(Plan {
        vmx,
        nvram,
        related,
        entries,
        data,
        name,
        namespace,
        folder,
        pool,
        api_version,
        existing_vm,
        existing_cr,
        prediction,
        disks,
        datacenter,
        dc_name,
        datastore: request.datastore.clone(),
    })
}

/// The datastore of `[ds] path`.
fn datastore_of(path: &str) -> Option<&str> {
    path.trim()
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .map(|(ds, _)| ds)
        .filter(|ds| !ds.is_empty())
}

/// Why a new VM's files cannot go where [`placement`] puts them: a datastore the
/// datacenter does not have (a failover into another vCenter, whose datastores are named
/// otherwise: `--datastore`), one that is not accessible, or one with less free space than
/// the disks' data (what the point's indexes hold that is not zero: the disks are made thin,
/// so that is what they take; a lower bound on vSAN, whose storage policy may keep copies).
async fn datastore_refusals(
    env: &crate::engine::Environment,
    datacenter: &MoRef,
    point: &crate::repo::catalog::PointRecord,
    disks: &[DiskRecord],
    request: &RestoreRequest,
) -> Result<Vec<Refusal>, RestoreError> {
    let ours = |id: &str, reason: String| Refusal {
        id: format!("vadp-agent:{id}"),
        reason,
    };
    let stores = env
        .soap
        .datastores(datacenter)
        .await
        .map_err(vsphere("listing the datastores"))?;
    let repo = Arc::clone(&env.repo);
    let (record, keys) = (
        point.clone(),
        disks.iter().map(|d| d.key).collect::<Vec<_>>(),
    );
    // An index that does not read counts nothing here: the repository check that follows
    // the pre-flight reports it, naming the disk and file.
    let data_bytes: Vec<u64> = blocking(move || {
        keys.iter()
            .map(|k| {
                repo.load_index(&record, *k)
                    .map_or(0, |index| index.data_bytes())
            })
            .collect()
    })
    .await?;
    // Each target datastore and the bytes it is to take, in the disks' order.
    let mut wanted: Vec<(String, u64)> = Vec::new();
    for (d, bytes) in disks.iter().zip(data_bytes) {
        let ds = match &request.datastore {
            Some(ds) => ds.clone(),
            None => datastore_of(&d.backing_file)
                .ok_or_else(|| RestoreError::Invalid(format!("bad disk path {}", d.backing_file)))?
                .to_owned(),
        };
        match wanted.iter_mut().find(|(n, _)| *n == ds) {
            Some((_, total)) => *total += bytes,
            None => wanted.push((ds, bytes)),
        }
    }
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
    let mut refusals = Vec::new();
    for (ds, bytes) in wanted {
        match stores.iter().find(|s| s.name == ds) {
            None => {
                let mut names: Vec<&str> = stores.iter().map(|s| s.name.as_str()).collect();
                names.sort_unstable();
                let hint = if request.datastore.is_some() {
                    "name one of those"
                } else {
                    "the backup's datastore is not here (another vCenter?): choose one with --datastore (API: \"datastore\")"
                };
                refusals.push(ours(
                    "NoSuchDatastore",
                    format!("datastore {ds} is not in this datacenter (it has {names:?}): {hint}"),
                ));
            }
            Some(s) if !s.accessible => refusals.push(ours(
                "DatastoreInaccessible",
                format!("datastore {ds} is not accessible: restore to another with --datastore"),
            )),
            // A vVol datastore makes top-level directories only through
            // DatastoreNamespaceManager, which the agent does not use.
            Some(s) if s.kind.eq_ignore_ascii_case("VVOL") => refusals.push(ours(
                "UnsupportedDatastore",
                format!(
                    "datastore {ds} is a vVol datastore, where the agent cannot make the restore's directory: restore to a VMFS, NFS or vSAN datastore with --datastore"
                ),
            )),
            Some(s) if s.free_bytes.is_some_and(|free| free < bytes) => refusals.push(ours(
                "NotEnoughSpace",
                format!(
                    "datastore {ds} has {} free, and the disks to restore there hold {} of data: free space or restore to another with --datastore",
                    gib(s.free_bytes.unwrap_or_default()),
                    gib(bytes)
                ),
            )),
            Some(_) => {}
        }
    }
    Ok(refusals)
}

/// Where a restore to a new VM puts its files. Never at the backup's own paths: the
/// backed-up VM's directory went with it (and `CreateVirtualDisk_Task` makes no
/// directories), on vSAN it was a namespace object named by UUID, and a PVC's disk outlives
/// its VM as a First Class Disk, still at its path. Each datastore the point's disks were
/// on gets a directory of the restore's own, `<vm>-restore-<job>`, made with
/// `MakeDirectory`; the job's id in its name makes it the restore's beyond doubt, so a
/// failed restore (or reconcile) deletes it whole. The `.vmx` goes into the first disk's.
/// Disks keep their file names, a second of one name in a directory getting `_1`, `_2`, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placement {
    /// The directories to make, `[ds] <vm>-restore-<job>`, the `.vmx`'s first.
    pub dirs: Vec<String>,
    /// `[ds] <vm>-restore-<job>/<vm>.vmx`.
    pub vmx: String,
    /// The new file of each of the point's disks, in the point's order.
    pub disks: Vec<String>,
}

/// The name of a restore's own directory.
pub(super) fn restore_dir_name(vm: &str, job: JobId) -> String {
    let id = job.to_string();
    format!("{vm}-restore-{}", &id[..8])
}

/// Whether `path` (`[ds] dir`) is a directory [`placement`] makes for `job`: the only
/// directories a restore ever deletes.
pub(super) fn is_restore_dir(path: &str, job: JobId) -> bool {
    let id = job.to_string();
    let suffix = format!("-restore-{}", &id[..8]);
    path.split_once(']').is_some_and(|(_, dir)| {
        let dir = dir.trim().trim_end_matches('/');
        !dir.is_empty() && !dir.contains('/') && dir.ends_with(&suffix) && dir.len() > suffix.len()
    })
}

/// The [`Placement`] of `disks` for VM `name` restored by `job`, on `datastore` (`None`:
/// each disk on its own).
///
/// # Errors
/// [`RestoreError::Invalid`] for a point without disks or a disk path that is not
/// `[ds] path`.
pub(super) fn placement(
    disks: &[DiskRecord],
    name: &str,
    job: JobId,
    datastore: Option<&str>,
) -> Result<Placement, RestoreError> {
    let dir = restore_dir_name(name, job);
    let datastore_of = |d: &DiskRecord| -> Result<String, RestoreError> {
        datastore
            .or_else(|| datastore_of(&d.backing_file))
            .map(str::to_owned)
            .ok_or_else(|| RestoreError::Invalid(format!("bad disk path {}", d.backing_file)))
    };
    let first = disks
        .first()
        .ok_or_else(|| RestoreError::Invalid("the restore point has no disk".into()))?;
    let mut dirs = vec![format!("[{}] {dir}", datastore_of(first)?)];
    let mut out: Vec<String> = Vec::with_capacity(disks.len());
    for d in disks {
        let ds_dir = format!("[{}] {dir}", datastore_of(d)?);
        if !dirs.contains(&ds_dir) {
            dirs.push(ds_dir.clone());
        }
        let file = d
            .backing_file
            .rsplit(['/', ']'])
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let stem = file.strip_suffix(".vmdk").unwrap_or(&file).to_owned();
        let mut candidate = format!("{ds_dir}/{stem}.vmdk");
        let mut n = 0;
        while out.contains(&candidate) {
            n += 1;
            candidate = format!("{ds_dir}/{stem}_{n}.vmdk");
        }
        out.push(candidate);
    }
    // A name the clean-up would not know for the restore's (empty, or with a `/`) is
    // refused before anything is made.
    if let Some(bad) = dirs.iter().find(|d| !is_restore_dir(d, job)) {
        return Err(RestoreError::Invalid(format!(
            "the VM's name {name:?} gives the directory {bad}, which is not one directory of the datastore's root"
        )));
    }
    Ok(Placement {
        vmx: format!("{}/{name}.vmx", dirs[0]),
        dirs,
        disks: out,
    })
}

/// The backed-up `.vmx` (to be written at `vmx_path`, `[ds] dir/name.vmx`) with its disk
/// file names pointed at the disks' new files, `targets` (one per point disk, in the
/// point's order; see [`Placement`]). The backup read it while its snapshot existed, so
/// `scsi0:0.fileName` named `disk-0-000001.vmdk`: a line is matched to its disk by the base
/// disk's name (and its folder, when two disks share a name). A disk in the `.vmx`'s
/// directory is named as ESXi names it, by file name; one elsewhere by its absolute path,
/// `/vmfs/volumes/<datastore>/<dir>/<file>.vmdk`, as a bare name would point the VM at a
/// file next to the `.vmx` that does not exist. `uuid.action` is set to `keep` (see
/// [`UUID_KEEP`]), and every other line is kept byte for byte.
pub(super) fn restored_vmx(
    vmx: &[u8],
    disks: &[DiskRecord],
    targets: &[String],
    vmx_path: &DatastorePath,
) -> Result<Vec<u8>, RestoreError> {
    let vmx_dir = (vmx_path.datastore.as_str(), dir_of(&vmx_path.path));
    let mut out = Vec::with_capacity(vmx.len() + UUID_KEEP.len() + 1);
    let mut uuid_action = false;
    // Line by line as bytes: a line in another encoding (`.encoding = "windows-1252"`, a
    // display name in Latin-1) is kept as it was, not decoded and re-encoded.
    for raw in vmx.split_inclusive(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(raw);
        let trimmed = line.trim();
        let Some((key, value)) = trimmed.split_once('=') else {
            out.extend_from_slice(raw);
            continue;
        };
        let key = key.trim();
        let value = value.trim().trim_matches('"');
        if key.eq_ignore_ascii_case("uuid.action") {
            uuid_action = true;
            let ending = &raw[raw.trim_ascii_end().len()..];
            out.extend_from_slice(UUID_KEEP.as_bytes());
            out.extend_from_slice(ending);
            continue;
        }
        let is_disk = key.to_ascii_lowercase().ends_with(".filename")
            && ["scsi", "sata", "nvme", "ide"]
                .iter()
                .any(|p| key.to_ascii_lowercase().starts_with(p))
            && value.to_ascii_lowercase().ends_with(".vmdk");
        if !is_disk {
            out.extend_from_slice(raw);
            continue;
        }
        if std::str::from_utf8(raw).is_err() {
            return Err(RestoreError::Invalid(format!(
                "the .vmx names disk {value} ({key}) in bytes that are not UTF-8; \
                 its name cannot be matched with the restore point's disks"
            )));
        }
        let (parent, file) = value.rsplit_once('/').map_or(("", value), |(d, f)| (d, f));
        let parent = parent.rsplit('/').next().unwrap_or_default();
        let base = base_disk_name(file);
        let named: Vec<&DiskRecord> = disks
            .iter()
            // The file name after the last `/` — or after `] ` for a disk at the root of
            // its datastore (`[ds1] w.vmdk`).
            .filter(|d| {
                d.backing_file.rsplit(['/', ']']).next().map(str::trim) == Some(base.as_str())
            })
            .collect();
        // Two disks of one name in different folders: the one in the folder the line names.
        let disk = match named.as_slice() {
            [one] => *one,
            [] => {
                return Err(RestoreError::Invalid(format!(
                    "the .vmx names disk {value} ({key}), which the restore point does not hold"
                )));
            }
            several => {
                let in_parent: Vec<&&DiskRecord> = several
                    .iter()
                    .filter(|d| {
                        d.backing_file
                            .rsplit_once('/')
                            .and_then(|(dir, _)| dir.rsplit(['/', ' ']).next())
                            == Some(parent)
                    })
                    .collect();
                match in_parent.as_slice() {
                    [one] => **one,
                    _ => {
                        return Err(RestoreError::Invalid(format!(
                            "the .vmx names disk {value} ({key}), and the restore point holds \
                             {} disks of that name",
                            several.len()
                        )));
                    }
                }
            }
        };
        let target = disks
            .iter()
            .position(|d| std::ptr::eq(d, disk))
            .and_then(|i| targets.get(i))
            .ok_or_else(|| {
                RestoreError::Invalid(format!("no new file for disk {}", disk.backing_file))
            })?;
        let at = DatastorePath::parse(&vmx_path.datacenter, target)
            .map_err(|_| RestoreError::Invalid(format!("bad disk path {target}")))?;
        let path = if (at.datastore.as_str(), dir_of(&at.path)) == vmx_dir {
            at.path.rsplit('/').next().unwrap_or_default().to_owned()
        } else {
            format!("/vmfs/volumes/{}/{}", at.datastore, at.path)
        };
        let ending = &raw[raw.trim_ascii_end().len()..];
        out.extend_from_slice(format!("{key} = \"{path}\"").as_bytes());
        out.extend_from_slice(ending);
    }
    if !uuid_action {
        // With the file's own line ending.
        let eol: &[u8] = if vmx.windows(2).any(|w| w == b"\r\n") {
            b"\r\n"
        } else {
            b"\n"
        };
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(UUID_KEEP.as_bytes());
        out.extend_from_slice(eol);
    }
    Ok(out)
}

/// The line that keeps a restored VM's BIOS UUID: its `.vmx` is registered from a new
/// directory, so its `uuid.location` no longer matches, and without it ESXi would ask at
/// the first power-on whether the VM was moved or copied, blocking that power-on until
/// someone answers, and "copied" would give the VM a new BIOS UUID (seed 001 §8.2 keeps
/// it; the VirtualMachine's `spec.biosUUID` names it).
const UUID_KEEP: &str = "uuid.action = \"keep\"";

/// The subnets the backup's VM YAML attaches its interfaces to, as registervm's mappings
/// name them: `(SUBNET|SUBNETSET, name)`, an interface without a network on the
/// namespace's default SubnetSet (`SUBNETSET`, empty name).
fn backup_subnets(yaml: &serde_json::Value) -> Vec<(String, String)> {
    yaml.pointer("/spec/network/interfaces")
        .and_then(serde_json::Value::as_array)
        .map(|interfaces| {
            interfaces
                .iter()
                .map(|i| {
                    let network = i.get("network");
                    let kind = network
                        .and_then(|n| n.get("kind"))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("SubnetSet");
                    let name = network
                        .and_then(|n| n.get("name"))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default();
                    let kind = if kind.eq_ignore_ascii_case("Subnet") {
                        "SUBNET"
                    } else if kind.eq_ignore_ascii_case("SubnetSet") {
                        "SUBNETSET"
                    } else {
                        kind
                    };
                    (kind.to_owned(), name.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each mapping of `map` whose current subnet the backup's VM does not use, in words.
fn subnet_map_problems(
    yaml: &serde_json::Value,
    map: &[crate::vsphere::SubnetMapping],
) -> Vec<String> {
    let used = backup_subnets(yaml);
    let show = |(kind, name): &(String, String)| {
        if name.is_empty() {
            format!("{kind} (the namespace's default)")
        } else {
            format!("{kind} {name}")
        }
    };
    map.iter()
        .filter(|m| {
            !used
                .iter()
                .any(|(k, n)| *k == m.current_subnet.kind && *n == m.current_subnet.name)
        })
        .map(|m| {
            format!(
                "--subnet-map names {}, which no interface of the backup's VM uses (it uses: {})",
                show(&(m.current_subnet.kind.clone(), m.current_subnet.name.clone())),
                if used.is_empty() {
                    "no interface".to_owned()
                } else {
                    used.iter().map(show).collect::<Vec<_>>().join(", ")
                }
            )
        })
        .collect()
}

/// The directory part of a path inside a datastore (`""` at its root).
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// `disk-0-000002.vmdk` → `disk-0.vmdk` (ESXi names redo logs `<base>-NNNNNN.vmdk`).
fn base_disk_name(file: &str) -> String {
    let stem = file.strip_suffix(".vmdk").unwrap_or(file);
    match stem.rsplit_once('-') {
        Some((base, n)) if n.len() == 6 && n.chars().all(|c| c.is_ascii_digit()) => {
            format!("{base}.vmdk")
        }
        _ => file.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DiskKey;

    #[test]
    fn redo_log_names() {
        assert_eq!(base_disk_name("disk-0-000001.vmdk"), "disk-0.vmdk");
        assert_eq!(base_disk_name("disk-0.vmdk"), "disk-0.vmdk");
        assert_eq!(base_disk_name("data-12.vmdk"), "data-12.vmdk");
    }

    fn vmx_at(path: &str) -> DatastorePath {
        DatastorePath::parse("dc1", path).unwrap()
    }

    fn disk(key: i32, file: &str) -> DiskRecord {
        DiskRecord {
            key: DiskKey(key),
            label: String::new(),
            capacity_bytes: 1,
            backing_file: file.into(),
            disk_uuid: None,
            change_id: None,
            role: crate::repo::catalog::DiskRole::Os,
            index_path: String::new(),
            bytes_changed: 0,
            bytes_stored: 0,
        }
    }

    fn job() -> JobId {
        "0b5c1f3e-8a2d-4e7f-9c1b-2d3e4f5a6b7c".parse().unwrap()
    }

    /// The .vmx of `disks` restored as VM `name` by [`job`], where its placement puts it.
    /// The restored `.vmx` without the `uuid.action` line it ends with.
    fn restored(vmx: &[u8], disks: &[DiskRecord], name: &str) -> Result<String, RestoreError> {
        let p = placement(disks, name, job(), None)?;
        restored_vmx(vmx, disks, &p.disks, &vmx_at(&p.vmx)).map(|out| {
            let out = String::from_utf8(out).unwrap();
            out.strip_suffix("uuid.action = \"keep\"\n")
                .unwrap_or_else(|| panic!("no uuid.action line at the end: {out}"))
                .to_owned()
        })
    }

    /// A subnet mapping must name a subnet an interface of the backup's VM uses; an
    /// interface without a network is on the namespace's default SubnetSet.
    #[test]
    fn a_subnet_mapping_names_a_subnet_the_backup_uses() {
        let yaml = serde_json::json!({"spec": {"network": {"interfaces": [
            {"name": "eth0", "network": {"apiVersion": "crd.nsx.vmware.com/v1alpha1",
                                         "kind": "Subnet", "name": "subnet-prod-a"}},
            {"name": "eth1"},
        ]}}});
        let map = |from: &str| vec![super::super::subnet_mapping(from, "x").unwrap()];
        assert!(subnet_map_problems(&yaml, &map("subnet-prod-a")).is_empty());
        assert!(subnet_map_problems(&yaml, &map("subnetset:")).is_empty());
        let problems = subnet_map_problems(&yaml, &map("subnet-prod-b"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("SUBNET subnet-prod-b")
                && problems[0].contains("SUBNET subnet-prod-a")
                && problems[0].contains("SUBNETSET (the namespace's default)"),
            "{problems:?}"
        );
        let problems = subnet_map_problems(&serde_json::json!({"spec": {}}), &map("a"));
        assert!(problems[0].contains("no interface"), "{problems:?}");
    }

    /// A restored VM keeps its BIOS UUID without a question at its first power-on: the
    /// `.vmx` says `uuid.action = "keep"`, set where it was, added (with the file's line
    /// ending) where it was not.
    #[test]
    fn a_restored_vmx_keeps_its_uuid() {
        let disk = disk(2000, "[ds1] w/disk-0.vmdk");
        let run = |vmx: &[u8]| {
            String::from_utf8(
                restored_vmx(
                    vmx,
                    std::slice::from_ref(&disk),
                    &["[ds1] w/disk-0.vmdk".into()],
                    &vmx_at("[ds1] w/w.vmx"),
                )
                .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            run(b"uuid.bios = \"42 1a\"\nuuid.action = \"create\"\nx = \"1\"\n"),
            "uuid.bios = \"42 1a\"\nuuid.action = \"keep\"\nx = \"1\"\n"
        );
        assert_eq!(
            run(b"uuid.bios = \"42 1a\"\r\nx = \"1\""),
            "uuid.bios = \"42 1a\"\r\nx = \"1\"\r\nuuid.action = \"keep\"\r\n"
        );
        assert_eq!(run(b"UUID.Action = \"keep\"\n"), "uuid.action = \"keep\"\n");
    }

    /// A disk at the root of its datastore (`[ds1] w.vmdk`, no folder) is matched with
    /// the `.vmx` line that names it.
    #[test]
    fn a_disk_at_a_datastores_root_is_matched() {
        let disks = [disk(2000, "[ds1] w.vmdk")];
        let out = restored(b"scsi0:0.fileName = \"w-000001.vmdk\"\n", &disks, "w").unwrap();
        assert!(out.contains("w.vmdk\""), "{out}");
        assert!(!out.contains("000001"), "{out}");
    }

    #[test]
    fn a_new_vm_gets_directories_of_its_own() {
        let disks = [
            disk(2000, "[vsanDatastore] 6adf-vmdir/w.vmdk"),
            disk(2001, "[vsanDatastore] c5aa-pvcdir/216a8642.vmdk"),
            disk(2002, "[ds2] fcd/216a8642.vmdk"),
            disk(2003, "[vsanDatastore] c7d0-dir/216a8642.vmdk"),
        ];
        let p = placement(&disks, "w", job(), None).unwrap();
        assert_eq!(
            p,
            Placement {
                dirs: vec![
                    "[vsanDatastore] w-restore-0b5c1f3e".into(),
                    "[ds2] w-restore-0b5c1f3e".into()
                ],
                vmx: "[vsanDatastore] w-restore-0b5c1f3e/w.vmx".into(),
                disks: vec![
                    "[vsanDatastore] w-restore-0b5c1f3e/w.vmdk".into(),
                    "[vsanDatastore] w-restore-0b5c1f3e/216a8642.vmdk".into(),
                    "[ds2] w-restore-0b5c1f3e/216a8642.vmdk".into(),
                    "[vsanDatastore] w-restore-0b5c1f3e/216a8642_1.vmdk".into(),
                ],
            }
        );
        for d in &p.dirs {
            assert!(is_restore_dir(d, job()), "{d}");
        }
        let other: JobId = "1b5c1f3e-8a2d-4e7f-9c1b-2d3e4f5a6b7c".parse().unwrap();
        for not_ours in [
            "[ds1] w-restore-1b5c1f3e",
            "[ds1] -restore-0b5c1f3e",
            "[ds1] ",
            "[ds1] a/w-restore-0b5c1f3e",
            "[ds1] w-restore-0b5c1f3e/w.vmx",
            "w-restore-0b5c1f3e",
        ] {
            assert!(!is_restore_dir(not_ours, job()), "{not_ours}");
        }
        assert!(!is_restore_dir("[ds1] w-restore-0b5c1f3e", other));
        assert!(placement(&[], "w", job(), None).is_err());
        for bad in ["", "a/b", "../x"] {
            assert!(
                placement(&[disk(2000, "[ds1] w/w.vmdk")], bad, job(), None).is_err(),
                "{bad:?}"
            );
        }
        assert!(placement(&[disk(2000, "ds1 w/w.vmdk")], "w", job(), None).is_err());
        // Everything on one datastore, asked for.
        let p = placement(&disks, "w", job(), Some("ds3")).unwrap();
        assert_eq!(p.dirs, ["[ds3] w-restore-0b5c1f3e"]);
        assert_eq!(p.vmx, "[ds3] w-restore-0b5c1f3e/w.vmx");
        assert_eq!(p.disks[2], "[ds3] w-restore-0b5c1f3e/216a8642_1.vmdk");
    }

    #[test]
    fn vmx_disk_names_follow_the_point() {
        let vmx = b"displayName = \"w\"\nscsi0:0.fileName = \"disk-0-000001.vmdk\"\nvmservice.x = \"a|22b\"\n";
        assert_eq!(
            restored(vmx, &[disk(2000, "[ds1] w/disk-0.vmdk")], "w").unwrap(),
            "displayName = \"w\"\nscsi0:0.fileName = \"disk-0.vmdk\"\nvmservice.x = \"a|22b\"\n"
        );
        assert!(
            restored(
                b"scsi0:1.fileName = \"other.vmdk\"\n",
                &[disk(2000, "[ds1] w/disk-0.vmdk")],
                "w"
            )
            .is_err()
        );
        // A PVC's disk in a folder of its own (vSAN), its redo log beside the .vmx; a
        // classic disk of the same file name in yet another folder, named there. All
        // three land in the new VM's directory.
        let vmx = b"scsi0:0.fileName = \"w-000001.vmdk\"\n\
scsi0:1.fileName = \"216a8642-000001.vmdk\"\n\
scsi0:2.fileName = \"/vmfs/volumes/5f1e-uuid/c7d0-dir/216a8642.vmdk\"\n";
        let disks = [
            disk(2000, "[vsanDatastore] 6adf-vmdir/w.vmdk"),
            disk(2001, "[vsanDatastore] c5aa-pvcdir/216a8642.vmdk"),
            disk(2002, "[vsanDatastore] c7d0-dir/216a8642.vmdk"),
        ];
        let vmx_only_first_two = b"scsi0:0.fileName = \"w-000001.vmdk\"\n\
scsi0:1.fileName = \"216a8642-000001.vmdk\"\n";
        assert_eq!(
            restored(vmx_only_first_two, &disks[..2], "w").unwrap(),
            "scsi0:0.fileName = \"w.vmdk\"\nscsi0:1.fileName = \"216a8642.vmdk\"\n"
        );
        // The same name twice: the line's folder decides; a bare name cannot.
        let err = restored(vmx, &disks, "w").unwrap_err();
        assert!(err.to_string().contains("2 disks of that name"), "{err}");
        assert_eq!(
            restored(
                b"scsi0:2.fileName = \"/vmfs/volumes/5f1e-uuid/c7d0-dir/216a8642.vmdk\"\n",
                &disks,
                "w"
            )
            .unwrap(),
            "scsi0:2.fileName = \"216a8642_1.vmdk\"\n"
        );
        // A disk on another datastore than the .vmx's: by its absolute path.
        assert_eq!(
            restored(
                b"scsi0:0.fileName = \"w.vmdk\"\nscsi0:1.fileName = \"/vmfs/volumes/ds2/fcd/d.vmdk\"\n",
                &[disk(2000, "[ds1] w/w.vmdk"), disk(2001, "[ds2] fcd/d.vmdk")],
                "w"
            )
            .unwrap(),
            "scsi0:0.fileName = \"w.vmdk\"\nscsi0:1.fileName = \"/vmfs/volumes/ds2/w-restore-0b5c1f3e/d.vmdk\"\n"
        );
    }

    /// Every line but the disks' is kept byte for byte, also in another encoding than
    /// UTF-8, and a rewritten line keeps its line ending.
    #[test]
    fn vmx_lines_in_other_encodings_are_kept_byte_for_byte() {
        let disk = disk(2000, "[ds1] w/disk-0.vmdk");
        // "Café" in windows-1252: 0xE9 is not UTF-8.
        let vmx: &[u8] = b".encoding = \"windows-1252\"\r\ndisplayName = \"Caf\xe9\"\r\n\
scsi0:0.fileName = \"disk-0-000001.vmdk\"\r\nannotation = \"\xe9t\xe9\"";
        let out = restored_vmx(
            vmx,
            std::slice::from_ref(&disk),
            &["[ds1] w/disk-0.vmdk".into()],
            &vmx_at("[ds1] w/w.vmx"),
        )
        .unwrap();
        assert_eq!(
            out,
            b".encoding = \"windows-1252\"\r\ndisplayName = \"Caf\xe9\"\r\n\
scsi0:0.fileName = \"disk-0.vmdk\"\r\nannotation = \"\xe9t\xe9\"\r\nuuid.action = \"keep\"\r\n"
        );
        // A disk line that is not UTF-8 cannot be matched: refused, not guessed.
        let err = restored_vmx(
            b"scsi0:0.fileName = \"d\xe9-000001.vmdk\"\n",
            &[disk],
            &["[ds1] w/disk-0.vmdk".into()],
            &vmx_at("[ds1] w/w.vmx"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
