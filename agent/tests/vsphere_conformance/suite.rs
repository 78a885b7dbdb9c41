//! The conformance cases. Each creates what it mutates (its own folder and VMs), so the
//! cases run in parallel against one server.

// Test code: a failed step is a failed case (clippy's allow-unwrap-in-tests only covers
// `#[test]` functions, and these are called from them).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use vadp_agent::vsphere::{
    ChangeId, CreateSnapshot, DatastoreError, DatastorePath, DiskChange, ExtraConfigChange,
    FaultKind, FolderMoref, NewDisk, PowerState, ResourcePoolMoref, SoapClient, Thumbprint,
    TlsVerification, VmConfigSpec, VmMoref, VsphereError,
};

use crate::target::Target;

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where new objects go: the first datacenter's VM folder, a resource pool, a datastore.
struct Inventory {
    datacenter: vadp_agent::vsphere::MoRef,
    datacenter_name: String,
    vm_folder: FolderMoref,
    pool: ResourcePoolMoref,
    datastore_name: String,
}

async fn inventory(t: &Target, client: &SoapClient) -> Inventory {
    let root = client.service_content().root_folder.clone();
    let dcs = client
        .list_in_container(&root, "Datacenter", &["name", "vmFolder"], true)
        .await
        .unwrap();
    let dc = dcs
        .first()
        .unwrap_or_else(|| panic!("{}: no datacenter", t.name));
    let vm_folder = dc.get("vmFolder").unwrap().moref().unwrap();
    let dc_ref = dc.obj.clone();
    let pools = client
        .list_in_container(&dc_ref, "ResourcePool", &["name"], true)
        .await
        .unwrap();
    let stores = client
        .list_in_container(&dc_ref, "Datastore", &["name"], true)
        .await
        .unwrap();
    Inventory {
        datacenter: dc_ref.clone(),
        datacenter_name: dc.text("name").unwrap().to_owned(),
        vm_folder: FolderMoref(vm_folder.value),
        pool: ResourcePoolMoref(pools.first().expect("a resource pool").obj.value.clone()),
        datastore_name: stores
            .first()
            .expect("a datastore")
            .text("name")
            .unwrap()
            .to_owned(),
    }
}

/// Creates a folder and a powered-off VM with one 1 MiB disk and one ExtraConfig key.
async fn new_vm(client: &SoapClient, inv: &Inventory, name: &str) -> (FolderMoref, VmMoref) {
    let folder = client.create_folder(&inv.vm_folder, name).await.unwrap();
    let spec = VmConfigSpec {
        name: Some(name.to_owned()),
        guest_id: Some("otherGuest64".into()),
        vm_path_name: Some(format!("[{}]", inv.datastore_name)),
        num_cpus: Some(1),
        memory_mb: Some(64),
        new_disks: vec![NewDisk {
            capacity_kb: 1024,
            unit_number: 0,
        }],
        extra_config: vec![ExtraConfigChange::Set(
            "vmservice.namespacedName".into(),
            format!("{name}/{name}"),
        )],
        ..VmConfigSpec::default()
    };
    let vm = client
        .create_vm(&folder, &spec, &inv.pool, None)
        .await
        .unwrap();
    (folder, vm)
}

fn fault_kind(err: &VsphereError) -> FaultKind {
    err.fault_kind()
        .unwrap_or_else(|| panic!("expected a fault, got {err:?}"))
}

pub async fn login_logout_and_about(t: &Target) {
    let client = t.client().await;
    let about = &client.service_content().about;
    assert_eq!(about.api_type, "VirtualCenter");
    assert!(!about.instance_uuid.is_empty());
    let cookie = client.session_cookie().unwrap();
    client.current_time().await.unwrap();
    client.logout().await.unwrap();
    assert!(client.session_cookie().is_none());
    // The session is over on the server too: its cookie no longer works.
    let mut config = t.config();
    config.credentials = None;
    let stale = SoapClient::attach(config, cookie).await.unwrap();
    let err = stale.current_time().await.unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::NotAuthenticated);
}

pub async fn invalid_login_is_permanent(t: &Target) {
    let mut config = t.config();
    config.credentials = Some(vadp_agent::vsphere::Credentials::new(
        &t.user,
        "wrong-password",
    ));
    let err = SoapClient::connect(config).await.unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::InvalidLogin);
    assert!(!err.is_retryable());
    assert!(!format!("{err:?}").contains("wrong-password"));
}

pub async fn tls_refuses_unpinned_and_wrong_pin(t: &Target) {
    // A self-signed server certificate is refused without a pin …
    let mut config = t.config();
    config.tls = TlsVerification::SystemRoots;
    let err = SoapClient::connect(config).await.unwrap_err();
    assert!(matches!(err, VsphereError::Transport { .. }), "{err:?}");
    // Not a passing failure: trying again gives the same answer.
    assert!(
        err.is_certificate_failure() && !err.is_retryable(),
        "{err:?}"
    );
    // … and with a pin of another certificate (a renewed one, say).
    let mut config = t.config();
    config.tls = TlsVerification::Thumbprint(Thumbprint::sha1_of(b"another certificate"));
    let err = SoapClient::connect(config).await.unwrap_err();
    assert!(matches!(err, VsphereError::Transport { .. }), "{err:?}");
    assert!(
        err.is_certificate_failure() && !err.is_retryable(),
        "{err:?}"
    );
    // Plain http is refused unless explicitly allowed.
    let mut config = t.config();
    config.url.set_scheme("http").unwrap();
    assert!(matches!(
        SoapClient::connect(config).await,
        Err(VsphereError::Config { .. })
    ));
}

pub async fn unknown_moref_faults(t: &Target) {
    let client = t.client().await;
    let missing = VmMoref::from("vm-987654");
    let err = client.vm_info(&missing).await.unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::ManagedObjectNotFound);
    assert!(!err.is_retryable());
    let err = client.power_off_vm(&missing).await.unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::ManagedObjectNotFound);
    match err {
        VsphereError::Fault { method, object, .. } => {
            assert_eq!(method, "PowerOffVM_Task");
            assert_eq!(object, missing.moref());
        }
        other => panic!("expected a call fault, got {other:?}"),
    }
}

/// A session vCenter ended (a restart, an idle timeout) is renewed for datastore
/// transfers too: a download answered 401 logs in again and is asked again, and an upload
/// (a stream, sent once) renews the session before it starts.
pub async fn datastore_transfers_outlive_the_session(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let folder = unique("conf-sess");
    client
        .make_directory(
            &inv.datacenter,
            &format!("[{}] {folder}", inv.datastore_name),
        )
        .await
        .unwrap();
    let remote = DatastorePath {
        datacenter: inv.datacenter_name.clone(),
        datastore: inv.datastore_name.clone(),
        path: format!("{folder}/kept.vmx"),
    };
    let data = b"config.version = \"8\"\n".to_vec();
    let end_session = || async {
        let session = client.login().await.unwrap();
        let other = t.client().await;
        other.terminate_sessions(&[session.key]).await.unwrap();
    };
    end_session().await;
    let before = client.session_cookie();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("kept.vmx");
    tokio::fs::write(&src, &data).await.unwrap();
    client.upload_file(&remote, &src).await.unwrap();
    assert_ne!(client.session_cookie(), before);
    end_session().await;
    let before = client.session_cookie();
    let got = client.download_small(&remote, 1 << 20).await.unwrap();
    assert_eq!(got, data);
    if !t.quirks.datastore_http_without_session {
        assert_ne!(client.session_cookie(), before);
    }
    client
        .delete_datastore_file(&inv.datacenter, &remote.to_string())
        .await
        .unwrap();
}

pub async fn session_expiry_relogs_in(t: &Target) {
    let a = t.client().await;
    let session = a.login().await.unwrap();
    let before = a.session_cookie();
    // Another session terminates ours behind our back, as an idle timeout would.
    let b = t.client().await;
    b.terminate_sessions(&[session.key]).await.unwrap();
    // The next call meets NotAuthenticated and logs in again transparently.
    a.current_time().await.unwrap();
    assert_ne!(a.session_cookie(), before);
    a.vm_info(&VmMoref::from("vm-987654")).await.unwrap_err();
}

pub async fn vm_create_read_find_power_destroy(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let name = unique("conf-vm");
    let (folder, vm) = new_vm(&client, &inv, &name).await;

    let err = client
        .create_folder(&inv.vm_folder, &name)
        .await
        .unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::DuplicateName);

    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(info.name, name);
    assert_eq!(info.parent.as_ref(), Some(&folder));
    assert_eq!(info.power_state, Some(PowerState::PoweredOff));
    assert!(info.bios_uuid.is_some() && info.instance_uuid.is_some());
    assert!(!info.datastores.is_empty());
    assert!(
        info.vmx_path
            .as_deref()
            .unwrap_or_default()
            .starts_with(&format!("[{}]", inv.datastore_name))
    );
    assert_eq!(
        info.extra_config_value("vmservice.namespacedName"),
        Some(format!("{name}/{name}").as_str())
    );
    assert_eq!(info.disks.len(), 1, "{:?}", info.disks);
    let disk = &info.disks[0];
    assert_eq!(disk.capacity_bytes, 1 << 20);
    assert!(disk.file_name.ends_with(".vmdk"), "{}", disk.file_name);
    assert_eq!(disk.backing_type, "VirtualDiskFlatVer2BackingInfo");
    assert!(disk.controller_key.is_some() && disk.unit_number == Some(0));
    assert!(info.snapshots.is_empty());

    assert_eq!(client.find_vm_in_folder(&folder, &name).await.unwrap(), vm);
    let err = client
        .find_vm_in_folder(&folder, "no-such-vm")
        .await
        .unwrap_err();
    assert!(matches!(err, VsphereError::NotFound { .. }));
    assert_eq!(client.find_namespace_folder(&name).await.unwrap(), folder);
    let in_ns = client.list_vms_in_namespace(&name).await.unwrap();
    assert_eq!(in_ns, vec![(vm.clone(), name.clone())]);

    let err = client.power_off_vm(&vm).await.unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::InvalidPowerState);
    assert!(!err.is_retryable());
    client.power_on_vm(&vm).await.unwrap();
    assert_eq!(
        client.vm_info(&vm).await.unwrap().power_state,
        Some(PowerState::PoweredOn)
    );
    client.power_off_vm(&vm).await.unwrap();
    client.destroy(&vm.moref()).await.unwrap();
    let err = client.vm_info(&vm).await.unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::ManagedObjectNotFound);
    client.destroy(&folder.moref()).await.unwrap();
}

pub async fn reconfigure_extra_config(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let (_, vm) = new_vm(&client, &inv, &unique("conf-ec")).await;
    let set = |k: &str, v: &str| ExtraConfigChange::Set(k.into(), v.into());

    client
        .set_extra_config(&vm, vec![set("vadp.a", "1"), set("vadp.b", "x")])
        .await
        .unwrap();
    client
        .set_extra_config(&vm, vec![set("vadp.a", "2")])
        .await
        .unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(info.extra_config_value("vadp.a"), Some("2"));
    let count = info
        .extra_config
        .iter()
        .filter(|(k, _)| k == "vadp.a")
        .count();
    if t.quirks.duplicate_extra_config_keys {
        // vcsim appends a second entry; real vSphere overwrites (VSPHERE.md §A.9).
        assert_eq!(count, 2, "vcsim quirk changed: {:?}", info.extra_config);
    } else {
        assert_eq!(count, 1);
    }

    client
        .set_extra_config(&vm, vec![ExtraConfigChange::Remove("vadp.b".into())])
        .await
        .unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    let b = info.extra_config_value("vadp.b");
    if t.quirks.keeps_removed_extra_config_keys {
        // vcsim stores the empty value instead of removing the key.
        assert_eq!(b, Some(""), "vcsim quirk changed");
    } else {
        assert_eq!(b, None);
    }
    client.destroy(&vm.moref()).await.unwrap();
}

pub async fn cbt_enable_and_snapshot_cycle(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let (_, vm) = new_vm(&client, &inv, &unique("conf-cbt")).await;
    client.power_on_vm(&vm).await.unwrap();

    assert!(!client.vm_info(&vm).await.unwrap().change_tracking_enabled);
    assert!(
        !client
            .enable_cbt(&vm, "vadp-agent test: enable CBT", |_| {})
            .await
            .unwrap(),
        "CBT was off, so it was enabled now"
    );
    assert!(
        client
            .enable_cbt(&vm, "vadp-agent test: enable CBT", |_| {})
            .await
            .unwrap(),
        "second call finds CBT on"
    );
    let info = client.vm_info(&vm).await.unwrap();
    assert!(info.change_tracking_enabled);
    assert!(
        info.snapshots.is_empty(),
        "the enable cycle removes its snapshot"
    );

    let mut progress = Vec::new();
    let request = CreateSnapshot::backup("vadp-backup", "vadp-agent job 1");
    let snapshot = client
        .create_snapshot(&vm, &request, |p| progress.push(p))
        .await
        .unwrap();
    assert_eq!(progress.last(), Some(&100));
    if t.quirks.tasks_finish_synchronously {
        // vcsim finishes the task before the call returns: no intermediate progress.
        assert_eq!(progress, [100]);
    }
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(info.current_snapshot.as_ref(), Some(&snapshot));
    let tree = info.all_snapshots();
    assert_eq!(tree.len(), 1);
    assert_eq!(tree[0].name, "vadp-backup");
    assert_eq!(tree[0].description, "vadp-agent job 1");
    let disks = client.snapshot_disks(&snapshot).await.unwrap();
    assert_eq!(disks.len(), 1);

    let disk = &disks[0];
    let result = client
        .query_changed_disk_areas(
            &vm,
            Some(&snapshot),
            disk.key,
            disk.capacity_bytes,
            &ChangeId::all(),
        )
        .await;
    if t.quirks.has_query_changed_disk_areas {
        let areas = result.unwrap();
        assert!(
            areas
                .iter()
                .all(|a| a.start_bytes + a.length_bytes <= disk.capacity_bytes)
        );
    } else {
        // vcsim (govmomi 0.24) does not implement QueryChangedDiskAreas.
        let err = result.unwrap_err();
        assert_eq!(fault_kind(&err), FaultKind::NotImplemented, "{err:?}");
        assert!(!err.is_retryable());
    }

    client
        .remove_snapshot(&snapshot, true, |_| {})
        .await
        .unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    assert!(info.snapshots.is_empty() && info.current_snapshot.is_none());
    let err = client
        .remove_snapshot(&snapshot, true, |_| {})
        .await
        .unwrap_err();
    assert_eq!(fault_kind(&err), FaultKind::ManagedObjectNotFound);

    client.power_off_vm(&vm).await.unwrap();
    client.destroy(&vm.moref()).await.unwrap();
}

pub async fn register_vm_into_folder(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let name = unique("conf-reg");
    let (folder, vm) = new_vm(&client, &inv, &name).await;
    let vmx = client
        .vm_info(&vm)
        .await
        .unwrap()
        .vmx_path
        .expect("a vmx path");
    client.unregister_vm(&vm).await.unwrap();
    let registered = client
        .register_vm(&folder, &vmx, Some(&name), &inv.pool)
        .await
        .unwrap();
    let info = client.vm_info(&registered).await.unwrap();
    assert_eq!(info.name, name);
    assert_eq!(info.parent.as_ref(), Some(&folder));
    // (vcsim 0.24 drops the connection for an unknown datastore name: stay on a known one.)
    let missing = format!("[{}] {name}-missing/missing.vmx", inv.datastore_name);
    let err = client
        .register_vm(&folder, &missing, None, &inv.pool)
        .await
        .unwrap_err();
    // Real vSphere answers NotFound or a FileFault subclass (VSPHERE.md §A.10).
    assert!(
        matches!(
            fault_kind(&err),
            FaultKind::NotFound | FaultKind::FileNotFound | FaultKind::FileFault
        ),
        "{err:?}"
    );
    client.destroy(&registered.moref()).await.unwrap();
}

/// A disk-only restore's disk: created and attached in one ReconfigVM_Task
/// (`fileOperation = create`), then detached and deleted (`fileOperation = destroy`).
pub async fn add_new_disk_then_detach_and_destroy(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let name = unique("conf-disk");
    let (_folder, vm) = new_vm(&client, &inv, &name).await;
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(info.disks.len(), 1, "{:?}", info.disks);
    let first = &info.disks[0];
    let dir = first
        .file_name
        .rsplit_once('/')
        .map(|(d, _)| d.to_owned())
        .expect("a disk in a VM directory");
    let file = format!("{dir}/restored-{name}.vmdk");
    let controller = first.controller_key.expect("a controller");
    client
        .add_new_disk(&vm, &file, 2048, true, controller, 1)
        .await
        .unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    let added = info
        .disks
        .iter()
        .find(|d| d.file_name == file)
        .unwrap_or_else(|| panic!("{file} not attached: {:?}", info.disks));
    assert_eq!(added.capacity_bytes, 2048 * 1024);
    assert_eq!(added.unit_number, Some(1));
    // The same file again: it exists now.
    let err = client
        .add_new_disk(&vm, &file, 2048, true, controller, 2)
        .await
        .unwrap_err();
    assert!(err.fault_kind().is_some(), "{err:?}");
    client.detach_disk(&vm, added.key, true).await.unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    assert!(
        info.disks.iter().all(|d| d.file_name != file),
        "{:?}",
        info.disks
    );
    client.destroy(&vm.moref()).await.unwrap();
}

/// A restore in place's swap of a First Class Disk: a new disk made unattached
/// (CreateVirtualDisk_Task) and given a uuid (SetVirtualDiskUuid); one ReconfigVM_Task
/// removes a disk keeping its file and attaches the new one at the same controller and
/// unit; the swap back removes the new disk, deleting its file, and attaches the kept file
/// again at that unit, in the disk mode asked for. A new disk never attached is deleted
/// with DeleteVirtualDisk_Task, and deleting it again is `FileNotFound`.
pub async fn swap_a_disk_at_its_unit_and_back(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let name = unique("conf-swap");
    let (_folder, vm) = new_vm(&client, &inv, &name).await;
    let info = client.vm_info(&vm).await.unwrap();
    let first = &info.disks[0];
    let dir = first
        .file_name
        .rsplit_once('/')
        .map(|(d, _)| d.to_owned())
        .expect("a disk in a VM directory");
    let controller = first.controller_key.expect("a controller");
    let kept = format!("{dir}/kept-{name}.vmdk");
    let new = format!("{dir}/restored-{name}.vmdk");
    client
        .add_new_disk(&vm, &kept, 2048, true, controller, 1)
        .await
        .unwrap();
    let at_unit_1 = |info: &vadp_agent::vsphere::VmInfo| {
        info.disks
            .iter()
            .find(|d| d.controller_key == Some(controller) && d.unit_number == Some(1))
            .cloned()
    };
    let old = at_unit_1(&client.vm_info(&vm).await.unwrap()).expect("the kept disk at unit 1");
    let uuid = "6000C29a-1b2c-3d4e-5f60-718293a4b5c6";
    client
        .create_virtual_disk(&inv.datacenter, &new, 4096, true)
        .await
        .unwrap();
    client
        .set_virtual_disk_uuid(&inv.datacenter, &new, uuid)
        .await
        .unwrap();
    client
        .reconfigure_disks(
            &vm,
            &[
                DiskChange::Remove {
                    key: old.key,
                    destroy: false,
                },
                DiskChange::Attach {
                    path: &new,
                    capacity_kb: 4096,
                    controller_key: controller,
                    unit_number: 1,
                    disk_mode: "persistent",
                },
            ],
        )
        .await
        .unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    let swapped = at_unit_1(&info).expect("a disk at unit 1");
    assert_eq!(swapped.file_name, new, "{:?}", info.disks);
    assert_eq!(swapped.capacity_bytes, 4096 * 1024);
    assert!(info.disks.iter().all(|d| d.file_name != kept));
    // vcsim reports no backing uuid for a disk attached from an existing file.
    if t.name == "lab" {
        assert_eq!(swapped.uuid.as_deref(), Some(uuid));
    }
    client
        .reconfigure_disks(
            &vm,
            &[
                DiskChange::Remove {
                    key: swapped.key,
                    destroy: true,
                },
                DiskChange::Attach {
                    path: &kept,
                    capacity_kb: 2048,
                    controller_key: controller,
                    unit_number: 1,
                    disk_mode: "independent_persistent",
                },
            ],
        )
        .await
        .unwrap();
    let info = client.vm_info(&vm).await.unwrap();
    let back = at_unit_1(&info).expect("a disk at unit 1");
    assert_eq!(back.file_name, kept, "{:?}", info.disks);
    assert_eq!(back.uuid, old.uuid);
    assert_eq!(back.disk_mode.as_deref(), Some("independent_persistent"));
    assert!(info.disks.iter().all(|d| d.file_name != new));

    let never_attached = format!("{dir}/unattached-{name}.vmdk");
    client
        .create_virtual_disk(&inv.datacenter, &never_attached, 1024, true)
        .await
        .unwrap();
    client
        .delete_virtual_disk(&inv.datacenter, &never_attached)
        .await
        .unwrap();
    let again = client
        .delete_virtual_disk(&inv.datacenter, &never_attached)
        .await
        .unwrap_err();
    assert_eq!(
        again.fault_kind(),
        Some(vadp_agent::vsphere::FaultKind::FileNotFound),
        "{again:?}"
    );
    client.destroy(&vm.moref()).await.unwrap();
}

pub async fn datastore_upload_download(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    // tokio::fs::write completes the write; a dropped tokio File may still have one in flight.
    tokio::fs::write(&src, &data).await.unwrap();

    // FileManager.MakeDirectory: vSphere makes no directory for an upload (nor for
    // CreateVirtualDisk_Task); a second one of the name is FileAlreadyExists.
    let folder = unique("conf-ds");
    let folder_path = format!("[{}] {folder}", inv.datastore_name);
    client
        .make_directory(&inv.datacenter, &folder_path)
        .await
        .unwrap();
    let again = client
        .make_directory(&inv.datacenter, &folder_path)
        .await
        .unwrap_err();
    assert_eq!(
        again.fault_kind(),
        Some(vadp_agent::vsphere::FaultKind::FileAlreadyExists),
        "{again:?}"
    );
    let nowhere = format!("[{}] {}/d.vmdk", inv.datastore_name, unique("conf-none"));
    let err = client
        .create_virtual_disk(&inv.datacenter, &nowhere, 1024, true)
        .await
        .unwrap_err();
    assert_eq!(
        err.fault_kind(),
        Some(vadp_agent::vsphere::FaultKind::FileNotFound),
        "{err:?}"
    );
    let remote = DatastorePath {
        datacenter: inv.datacenter_name.clone(),
        datastore: inv.datastore_name.clone(),
        path: format!("{folder}/blob file.bin"),
    };
    client.upload_file(&remote, &src).await.unwrap();
    let dest = dir.path().join("dest.bin");
    let n = client.download_to_file(&remote, &dest).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(tokio::fs::read(&dest).await.unwrap(), data);

    let missing = DatastorePath {
        path: "no-such-dir/no-such-file".into(),
        ..remote.clone()
    };
    let err = client.download_to_file(&missing, &dest).await.unwrap_err();
    assert!(
        matches!(err, DatastoreError::Http { status: 404, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // FileManager.DeleteDatastoreFile_Task: gone, and a second delete is FileNotFound.
    let name = remote.to_string();
    client
        .delete_datastore_file(&inv.datacenter, &name)
        .await
        .unwrap();
    let err = client.download_to_file(&remote, &dest).await.unwrap_err();
    assert!(
        matches!(err, DatastoreError::Http { status: 404, .. }),
        "{err:?}"
    );
    let again = client
        .delete_datastore_file(&inv.datacenter, &name)
        .await
        .unwrap_err();
    assert_eq!(
        again.fault_kind(),
        Some(vadp_agent::vsphere::FaultKind::FileNotFound),
        "{again:?}"
    );

    // DeleteDatastoreFile_Task on a directory: it goes with everything in it.
    client.upload_file(&remote, &src).await.unwrap();
    client
        .delete_directory(&inv.datacenter, &folder_path)
        .await
        .unwrap();
    let err = client.download_to_file(&remote, &dest).await.unwrap_err();
    assert!(
        matches!(err, DatastoreError::Http { status: 404, .. }),
        "{err:?}"
    );
    let again = client
        .delete_directory(&inv.datacenter, &folder_path)
        .await
        .unwrap_err();
    assert_eq!(
        again.fault_kind(),
        Some(vadp_agent::vsphere::FaultKind::FileNotFound),
        "{again:?}"
    );
}

/// A namespace's folder is the VM folder of its name: a datastore folder of that name (a
/// VI administrator's, say) neither wins nor makes the lookup ambiguous.
pub async fn namespace_folder_is_a_vm_folder(t: &Target) {
    let client = t.client().await;
    let inv = inventory(t, &client).await;
    let name = unique("conf-ns");
    let datastore_folder = client
        .retrieve_object(&inv.datacenter, &["datastoreFolder"])
        .await
        .unwrap()
        .get("datastoreFolder")
        .unwrap()
        .moref()
        .unwrap();
    let other = client
        .create_folder(&FolderMoref(datastore_folder.value), &name)
        .await
        .unwrap();
    let err = client.find_namespace_folder(&name).await.unwrap_err();
    assert!(
        matches!(err, VsphereError::NotFound { .. }),
        "{}: a datastore folder was taken for the namespace's: {err:?}",
        t.name
    );
    let vm_folder = client.create_folder(&inv.vm_folder, &name).await.unwrap();
    assert_eq!(
        client.find_namespace_folder(&name).await.unwrap(),
        vm_folder,
        "{}",
        t.name
    );
    client.destroy(&vm_folder.moref()).await.unwrap();
    client.destroy(&other.moref()).await.unwrap();
}
