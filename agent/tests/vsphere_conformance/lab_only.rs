//! Cases only the lab's vCenter runs: methods the agent's typed client does not wrap
//! (DisableMethods/EnableMethods, RelocateVM_Task, paging), each method's fault cases,
//! asynchronous tasks, the vAPI session and cis tasks.

#[cfg(test)]
mod tests {
    use vadp_agent::vsphere::{
        ChangeId, CreateSnapshot, Credentials, ExtraConfigChange, FaultKind, FolderMoref, MoRef,
        NewDisk, ResourcePoolMoref, SessionCookie, SoapClient, TaskMoref, TaskState, VapiClient,
        VmConfigSpec, VmMoref, VsphereError,
    };

    use crate::target::{Target, lab};

    fn kind(err: &VsphereError) -> FaultKind {
        err.fault_kind()
            .unwrap_or_else(|| panic!("expected a fault, got {err:?}"))
    }

    async fn new_vm(t: &Target, name: &str) -> (SoapClient, VmMoref) {
        let client = t.client().await;
        let spec = VmConfigSpec {
            name: Some(name.to_owned()),
            vm_path_name: Some("[ds1]".into()),
            new_disks: vec![NewDisk {
                capacity_kb: 1024,
                unit_number: 0,
            }],
            extra_config: vec![ExtraConfigChange::Set("k".into(), "v".into())],
            ..VmConfigSpec::default()
        };
        let vm = client
            .create_vm(
                &FolderMoref("group-v3".into()),
                &spec,
                &ResourcePoolMoref("resgroup-9".into()),
                None,
            )
            .await
            .unwrap();
        (client, vm)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_authenticated_without_session() {
        let t = lab();
        let mut config = t.config();
        config.credentials = None;
        let client = SoapClient::attach(config, SessionCookie::new("\"bogus\""))
            .await
            .unwrap();
        let err = client.current_time().await.unwrap_err();
        assert_eq!(kind(&err), FaultKind::NotAuthenticated);
        let err = client.vm_info(&VmMoref::from("vm-1")).await.unwrap_err();
        assert_eq!(kind(&err), FaultKind::NotAuthenticated);
    }

    /// A password changed while the agent runs: the callers that find the session ended
    /// together try the refused login once between them, not once each (SSO locks the
    /// account after a few failures), and each gets the refusal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_login_is_tried_once_for_all_waiting_callers() {
        let dir = tempfile::tempdir().unwrap();
        let vc = lab::vcenter::InProcessVcenter::start(dir.path(), false).unwrap();
        let mut config = vadp_agent::vsphere::SoapConfig::new(vc.sdk_url().parse().unwrap());
        config.tls = vadp_agent::vsphere::TlsVerification::Thumbprint(
            vc.thumbprint().unwrap().parse().unwrap(),
        );
        let r = vc.running();
        config.credentials = Some(Credentials::new(&r.user, &r.password));
        let client = SoapClient::connect(config).await.unwrap();
        lab::Lab::open(dir.path())
            .unwrap()
            .update_settings(|s| s.password = "changed-meanwhile".into())
            .unwrap();
        // The session ends (here: ours; a vCenter restart, an idle timeout alike).
        client.logout().await.unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let client = client.clone();
            calls.spawn(async move { client.current_time().await });
        }
        while let Some(done) = calls.join_next().await {
            let err = done.unwrap().unwrap_err();
            assert_eq!(kind(&err), FaultKind::InvalidLogin, "{err:?}");
        }
        assert_eq!(r.vcenter.failed_login_count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminate_session_faults() {
        let t = lab();
        let client = t.client().await;
        let own = client.login().await.unwrap();
        let err = client
            .terminate_sessions(std::slice::from_ref(&own.key))
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::InvalidArgument);
        let err = client
            .terminate_sessions(&["no-such-session".into()])
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::NotFound);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disabled_relocate_fails_with_method_disabled() {
        let t = lab();
        let (client, vm) = new_vm(&t, "lab-disable").await;
        let am = MoRef::new("AuthorizationManager", "AuthorizationManager");
        let entity = format!("<entity type=\"VirtualMachine\">{vm}</entity>");
        let disable = |source: &str| {
            format!(
                "{entity}<method><method>RelocateVM_Task</method><reasonId>restore</reasonId></method><sourceId>{source}</sourceId>"
            )
        };
        client
            .invoke("DisableMethods", &am, &disable("vadp-restore"))
            .await
            .unwrap();
        // Idempotent for the same source, refused for another.
        client
            .invoke("DisableMethods", &am, &disable("vadp-restore"))
            .await
            .unwrap();
        let err = client
            .invoke("DisableMethods", &am, &disable("someone-else"))
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::MethodAlreadyDisabled);
        let props = client
            .retrieve_object(&vm.moref(), &["disabledMethod"])
            .await
            .unwrap();
        let list = props.get("disabledMethod").unwrap();
        assert_eq!(list.children[0].text, "RelocateVM_Task");
        let err = client
            .run_task("RelocateVM_Task", &vm.moref(), "<spec/>")
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::MethodDisabled);
        client
            .invoke(
                "EnableMethods",
                &am,
                &format!(
                    "{entity}<method>RelocateVM_Task</method><sourceId>vadp-restore</sourceId>"
                ),
            )
            .await
            .unwrap();
        client
            .run_task("RelocateVM_Task", &vm.moref(), "<spec/>")
            .await
            .unwrap();
        let err = client
            .invoke(
                "DisableMethods",
                &am,
                &disable("x").replace(&vm.to_string(), "vm-999999"),
            )
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::ManagedObjectNotFound);
        client.destroy(&vm.moref()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_changed_disk_areas_faults() {
        let t = lab();
        let (client, vm) = new_vm(&t, "lab-qcda").await;
        client
            .enable_cbt(&vm, "vadp-agent test: enable CBT", |_| {})
            .await
            .unwrap();
        let s1 = client
            .create_snapshot(&vm, &CreateSnapshot::backup("s1", ""), |_| {})
            .await
            .unwrap();
        let disk = client.snapshot_disks(&s1).await.unwrap().remove(0);
        let c1 = disk.change_id.clone().expect("a changeId with CBT on");
        let none = client
            .query_changed_disk_areas(&vm, Some(&s1), disk.key, disk.capacity_bytes, &c1)
            .await
            .unwrap();
        assert!(none.is_empty());
        client.remove_snapshot(&s1, true, |_| {}).await.unwrap();
        // Reset CBT: the old changeId is stale.
        let off = VmConfigSpec {
            change_tracking_enabled: Some(false),
            ..VmConfigSpec::default()
        };
        client.reconfigure_vm(&vm, &off).await.unwrap();
        client
            .enable_cbt(&vm, "vadp-agent test: enable CBT", |_| {})
            .await
            .unwrap();
        let s2 = client
            .create_snapshot(&vm, &CreateSnapshot::backup("s2", ""), |_| {})
            .await
            .unwrap();
        let err = client
            .query_changed_disk_areas(&vm, Some(&s2), disk.key, disk.capacity_bytes, &c1)
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::FileFault);
        let err = client
            .query_changed_disk_areas(
                &vm,
                Some(&s2),
                vadp_agent::vsphere::DiskKey(4711),
                1,
                &ChangeId::all(),
            )
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::NotFound);
        let err = client
            .query_changed_disk_areas(&vm, Some(&s1), disk.key, 1, &ChangeId::all())
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::ManagedObjectNotFound);
        client.remove_snapshot(&s2, true, |_| {}).await.unwrap();
        client.destroy(&vm.moref()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn power_register_and_destroy_faults() {
        let t = lab();
        let (client, vm) = new_vm(&t, "lab-power").await;
        client.power_on_vm(&vm).await.unwrap();
        let err = client.power_on_vm(&vm).await.unwrap_err();
        assert_eq!(kind(&err), FaultKind::InvalidPowerState);
        let err = client.destroy(&vm.moref()).await.unwrap_err();
        assert_eq!(kind(&err), FaultKind::InvalidPowerState);
        let err = client.unregister_vm(&vm).await.unwrap_err();
        assert_eq!(kind(&err), FaultKind::InvalidPowerState);
        client.power_off_vm(&vm).await.unwrap();
        let vmx = client.vm_info(&vm).await.unwrap().vmx_path.unwrap();
        let folder = FolderMoref("group-v3".into());
        let pool = ResourcePoolMoref("resgroup-9".into());
        let err = client
            .register_vm(&folder, &vmx, None, &pool)
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::AlreadyExists);
        let err = client
            .unregister_vm(&VmMoref::from("vm-999999"))
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::ManagedObjectNotFound);
        client.destroy(&vm.moref()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_are_asynchronous_and_visible_over_cis() {
        let t = lab();
        let (client, vm) = new_vm(&t, "lab-async").await;
        // The task runs for 2 s, so that its first state read is before its end however
        // loaded the machine.
        lab::Lab::open(t.lab_root.as_deref().unwrap())
            .unwrap()
            .slow_next_snapshot(
                &lab::vmstate::VmMoref(vm.as_str().to_owned()),
                std::time::Duration::from_secs(2),
            )
            .unwrap();
        let params = "<name>s</name><memory>false</memory><quiesce>false</quiesce>";
        let task: TaskMoref = client
            .start_task("CreateSnapshot_Task", &vm.moref(), params)
            .await
            .unwrap();
        let first = client.task_info(&task).await.unwrap();
        assert!(
            matches!(first.state, TaskState::Queued | TaskState::Running),
            "{first:?}"
        );
        let mut base = t.sdk_url.clone();
        base.set_path("/");
        let vapi = VapiClient::new(
            base.clone(),
            &t.config().tls,
            false,
            Credentials::new(&t.user, &t.password),
        )
        .unwrap();
        vapi.login().await.unwrap();
        let info = vapi
            .wait_for_task(&task.0, std::time::Duration::from_secs(30), |_| {})
            .await;
        assert!(info.is_ok(), "{info:?}");
        let bad = VapiClient::new(
            base,
            &t.config().tls,
            false,
            Credentials::new(&t.user, "nope"),
        )
        .unwrap();
        assert!(bad.login().await.is_err());
        client
            .wait_for_task(
                &task,
                "CreateSnapshot_Task",
                &vm.moref(),
                std::time::Duration::from_secs(30),
                |_| {},
            )
            .await
            .unwrap();
        client.destroy(&vm.moref()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn property_collector_pages_and_faults() {
        let t = lab();
        let client = t.client().await;
        let pc = client.service_content().property_collector.clone();
        let spec = concat!(
            "<specSet><propSet><type>Folder</type><pathSet>name</pathSet></propSet>",
            "<objectSet><obj type=\"Folder\">group-d1</obj><skip>false</skip>",
            "<selectSet xsi:type=\"TraversalSpec\"><name>f</name><type>Folder</type><path>childEntity</path><skip>false</skip>",
            "<selectSet><name>f</name></selectSet><selectSet><name>d</name></selectSet></selectSet>",
            "<selectSet xsi:type=\"TraversalSpec\"><name>d</name><type>Datacenter</type><path>vmFolder</path><skip>false</skip>",
            "<selectSet><name>f</name></selectSet></selectSet>",
            "</objectSet></specSet><options><maxObjects>1</maxObjects></options>"
        );
        let first = client
            .invoke("RetrievePropertiesEx", &pc, spec)
            .await
            .unwrap();
        let rv = first.child("returnval").unwrap();
        assert_eq!(rv.children_named("objects").count(), 1);
        let mut token = rv.child_text("token").map(str::to_owned);
        let mut pages = 1;
        while let Some(tk) = token {
            let next = client
                .invoke(
                    "ContinueRetrievePropertiesEx",
                    &pc,
                    &format!("<token>{tk}</token>"),
                )
                .await
                .unwrap();
            pages += 1;
            token = next
                .child("returnval")
                .and_then(|r| r.child_text("token"))
                .map(str::to_owned);
        }
        assert!(pages >= 2, "root folder and the vm folder at least");
        let err = client
            .retrieve_object(&MoRef::new("Folder", "group-d1"), &["noSuchProperty"])
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::InvalidProperty);
        let err = client
            .invoke("ContinueRetrievePropertiesEx", &pc, "<token>nope</token>")
            .await
            .unwrap_err();
        assert_eq!(kind(&err), FaultKind::InvalidArgument);
        let err = client.invoke("NoSuchMethod", &pc, "").await.unwrap_err();
        assert_eq!(kind(&err), FaultKind::NotImplemented);
    }
    /// Waiting for a VM's recent tasks (what a clean-up does before it looks for a
    /// snapshot whose create lost its reply) reads a task again when vCenter fails the
    /// read for a while (503), and is an error when it keeps failing: skipping the task
    /// could skip a create still running, and the caller would close its journal entry
    /// with the snapshot on its way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recent_task_unreadable_for_a_while_is_read_again() {
        let t = lab();
        let (client, vm) = new_vm(&t, "lab-recent-task").await;
        let s1 = client
            .create_snapshot(&vm, &CreateSnapshot::backup("s1", ""), |_| {})
            .await
            .unwrap();
        client.remove_snapshot(&s1, true, |_| {}).await.unwrap();
        let handle = lab::vmstate::Lab::open(t.lab_root.as_ref().unwrap()).unwrap();
        let lab_vm = lab::vmstate::VmMoref(vm.0.clone());
        let wait = || {
            client.wait_for_vm_tasks(
                &vm,
                "CreateSnapshot_Task",
                &["createSnapshot"],
                std::time::Duration::from_secs(60),
            )
        };
        handle.fail_next_task_polls(&lab_vm, 2).unwrap();
        assert_eq!(
            wait().await.unwrap(),
            0,
            "the finished tasks are not waited for"
        );
        assert_eq!(
            handle.vm(&lab_vm).unwrap().failing_task_polls,
            0,
            "the failing reads were not retried"
        );
        handle.fail_next_task_polls(&lab_vm, 1_000).unwrap();
        let err = wait().await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        handle.fail_next_task_polls(&lab_vm, 0).unwrap();
    }
}
