//! vim25 conformance: the agent's SOAP client against a real peer.
//!
//! The suite (`suite.rs`) is written once and instantiated per target by
//! `conformance_suite!`; today the target is govmomi's vcsim (built from Debian's
//! packages, `tests/vcsim/`), later also the lab's own vCenter. Where vcsim and real
//! vSphere differ, the test states it through [`target::Quirks`] and the lab follows
//! real vSphere.

mod lab_only;
mod suite;
mod target;

macro_rules! conformance_suite {
    ($target_mod:ident, $target:expr, [$($case:ident),* $(,)?]) => {
        #[cfg(test)]
        mod $target_mod {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let target = $target;
                    super::suite::$case(&target).await;
                }
            )*
        }
    };
}

conformance_suite!(
    vcsim,
    crate::target::vcsim(),
    [
        login_logout_and_about,
        invalid_login_is_permanent,
        tls_refuses_unpinned_and_wrong_pin,
        unknown_moref_faults,
        session_expiry_relogs_in,
        vm_create_read_find_power_destroy,
        reconfigure_extra_config,
        cbt_enable_and_snapshot_cycle,
        register_vm_into_folder,
        namespace_folder_is_a_vm_folder,
        add_new_disk_then_detach_and_destroy,
        swap_a_disk_at_its_unit_and_back,
        datastore_upload_download,
        datastore_transfers_outlive_the_session,
    ]
);

conformance_suite!(
    lab,
    crate::target::lab(),
    [
        login_logout_and_about,
        invalid_login_is_permanent,
        tls_refuses_unpinned_and_wrong_pin,
        unknown_moref_faults,
        session_expiry_relogs_in,
        vm_create_read_find_power_destroy,
        reconfigure_extra_config,
        cbt_enable_and_snapshot_cycle,
        register_vm_into_folder,
        namespace_folder_is_a_vm_folder,
        add_new_disk_then_detach_and_destroy,
        swap_a_disk_at_its_unit_and_back,
        datastore_upload_download,
        datastore_transfers_outlive_the_session,
    ]
);
