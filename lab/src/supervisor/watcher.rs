//! Automatic registration (seed 001 §4.2, §4.3, §7.2.1, §7.3.3; VSPHERE.md §C.6): the
//! thread `supervisor-wcp` polls the lab's VMs every 100 ms, like WCP's property
//! collector, and starts the same registration task as the API.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::codec::{self, Key, KeySpelling};
use super::operator::ANN_BACKUP_VERSION;
use super::registervm::RegisterVmSpec;
use super::{Supervisor, SupervisorVersion, kind, lock};
use crate::vmstate::RELOCATE_METHOD;

const POLL: Duration = Duration::from_millis(100);
/// The user of automatically started tasks.
pub(crate) const AUTO_USER: &str = "wcp-auto-registration";

/// What the watcher last saw of one VM.
#[derive(Debug, Clone, Default)]
struct Seen {
    folder: String,
    yaml: Option<String>,
    /// A trigger waits (RelocateVM_Task disabled).
    pending: bool,
    /// The scan that raised `pending`; it fires on a later scan at the earliest.
    armed_at: u64,
    disabled_since: Option<Instant>,
}

/// The watcher's memory.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    seen: HashMap<String, Seen>,
    primed: bool,
    /// Completed scans (tests wait on it).
    pub(crate) scans: u64,
}

pub(super) fn spawn(sup: Weak<Supervisor>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("supervisor-wcp".into())
        .spawn(move || {
            loop {
                let Some(s) = sup.upgrade() else { break };
                if let Err(e) = s.scan() {
                    tracing::warn!(error = %e, "lab wcp: auto-registration scan failed");
                }
                drop(s);
                std::thread::sleep(POLL);
            }
        })?;
    Ok(())
}

impl Supervisor {
    /// Completed auto-registration scans; a test that waits for two more has seen the
    /// watcher look at the current state.
    #[must_use]
    pub fn watcher_scans(&self) -> u64 {
        lock(&self.watch).scans
    }

    /// One pass of the watcher.
    fn scan(&self) -> Result<(), crate::vmstate::LabError> {
        let settings = self.settings();
        let vms = self.lab.vms()?;
        let prefix = format!("{}/", self.namespace_folder(""));
        let prefix = prefix.trim_end_matches('/').to_owned() + "/";
        let mut starts = Vec::new();
        {
            let mut w = lock(&self.watch);
            let primed = w.primed;
            let scan_no = w.scans;
            w.seen.retain(|m, _| vms.iter().any(|v| v.moref.0 == *m));
            for vm in &vms {
                let yaml = Key::VmYaml
                    .get(&vm.extra_config, KeySpelling::Code)
                    .map(str::to_owned);
                let entry = w.seen.entry(vm.moref.0.clone());
                let fresh = matches!(entry, std::collections::hash_map::Entry::Vacant(_));
                let seen = entry.or_default();
                let ns = vm
                    .folder
                    .strip_prefix(&prefix)
                    .filter(|n| !n.contains('/'))
                    .map(str::to_owned);
                let event = primed
                    && ns.is_some()
                    && match settings.version {
                        // §4.2 pre-9: VM creation events (parent folder changes).
                        SupervisorVersion::V80U3 => fresh || seen.folder != vm.folder,
                        // §4.2 9.0+: changes of the VM YAML key.
                        SupervisorVersion::V90 => yaml.is_some() && (fresh || seen.yaml != yaml),
                    };
                seen.folder.clone_from(&vm.folder);
                seen.yaml.clone_from(&yaml);
                if event {
                    seen.pending = true;
                    seen.armed_at = scan_no;
                }
                let disabled = vm
                    .disabled_methods
                    .iter()
                    .any(|m| m.method == RELOCATE_METHOD);
                if !disabled {
                    seen.disabled_since = None;
                }
                let ready = seen.pending && seen.armed_at < scan_no;
                let Some(ns) = ns.filter(|_| ready) else {
                    continue;
                };
                if self.registration_in_flight(&vm.moref.0) {
                    continue;
                }
                if disabled {
                    // §7.3.3: wait for EndAccess, unless the restore takes too long.
                    let since = *seen.disabled_since.get_or_insert_with(Instant::now);
                    if since.elapsed()
                        < Duration::from_secs(settings.auto_registration_timeout_secs)
                    {
                        continue;
                    }
                }
                seen.pending = false;
                if self.wants_auto_registration(&ns, vm, settings.version) {
                    starts.push((ns, vm.moref.0.clone()));
                }
            }
            w.primed = true;
        }
        for (ns, vm) in starts {
            tracing::info!(ns, vm, "lab wcp: automatic registration");
            let spec = RegisterVmSpec {
                vm,
                network_config_override: None,
            };
            if let Err(e) = self.register_vm(&ns, spec, AUTO_USER) {
                tracing::warn!(error = %e, "lab wcp: automatic registration refused");
            }
        }
        lock(&self.watch).scans += 1;
        Ok(())
    }

    fn registration_in_flight(&self, vm: &str) -> bool {
        self.tasks.all().iter().any(|t| {
            t.method == super::registervm::TASK_METHOD
                && t.entity.1 == vm
                && matches!(
                    t.state,
                    crate::vcenter::tasks::TaskState::Queued
                        | crate::vcenter::tasks::TaskState::Running
                )
        })
    }

    /// §4.3 / C.6 rules 1–2, the snapshot-revert rule (§7.2.1), and VM Operator's own
    /// writes (a CR's VM that is not restored, C.4) are not restores.
    fn wants_auto_registration(
        &self,
        ns: &str,
        vm: &crate::vmstate::VmState,
        version: SupervisorVersion,
    ) -> bool {
        let ec = &vm.extra_config;
        let Some(yaml) = Key::VmYaml.get(ec, KeySpelling::Code) else {
            return false;
        };
        let enabled = match version {
            SupervisorVersion::V80U3 => !Key::DisableAutoRegistration
                .get(ec, KeySpelling::Code)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            SupervisorVersion::V90 => Key::EnableAutoRegistration
                .get(ec, KeySpelling::Code)
                .is_some_and(codec::truthy),
        };
        if !enabled {
            return false;
        }
        let name = codec::decode(yaml)
            .and_then(|t| codec::from_yaml(&t))
            .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned));
        let store = lock(&self.store);
        let cr = name.and_then(|n| store.get(&kind("virtualmachines"), ns, &n));
        let own = store
            .list(&kind("virtualmachines"), Some(ns), None)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c["status"]["uniqueID"] == vm.moref.0.as_str());
        let own = own.or_else(|| {
            cr.clone()
                .filter(|c| c["status"]["uniqueID"].as_str().is_none_or(str::is_empty))
        });
        if cr.as_ref().or(own.as_ref()).is_some_and(|c| {
            c["metadata"]["annotations"]
                .get("vmoperator.vmware.com/snapshot-revert-in-progress")
                .is_some()
        }) {
            return false;
        }
        if let Some(c) = own {
            let ann = c["metadata"]["annotations"][ANN_BACKUP_VERSION]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok());
            let ecv = Key::BackupVersion
                .get(ec, KeySpelling::Code)
                .and_then(|v| v.parse::<u64>().ok());
            let restored = matches!((ecv, ann), (Some(e), Some(a)) if e < a);
            if version == SupervisorVersion::V80U3 || !restored {
                return false;
            }
        }
        true
    }
}
