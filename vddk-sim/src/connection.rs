//! ConnectEx semantics: validating connect parameters against the lab (server, credentials,
//! VM moref, snapshot), choosing the transport mode, and what a connection remembers.
//!
//! As with real VDDK, the thumbprint is *not* checked here but at Open (VDDK.md §6).

use std::path::Path;

use vddk_sys::{
    VIX_E_AUTHENTICATION_FAIL, VIX_E_FAIL, VIX_E_HOST_SERVER_NOT_FOUND, VIX_E_INVALID_ARG,
    VIX_E_NOT_SUPPORTED, VIX_E_VM_NOT_FOUND, VIXDISKLIB_CRED_SSPI, VIXDISKLIB_CRED_TICKETID,
    VIXDISKLIB_SPEC_VMX,
};

use crate::params::{ConnectSpec, Credentials};
use lab::vmstate::LabSettings;

use crate::storage::{DatastorePath, LabView};
use crate::vix::{VixResult, fail};

/// What ListTransportModes reports (real VDDK's order).
pub(crate) const ALL_TRANSPORT_MODES: &str = "file:san:hotadd:nbdssl:nbd";
/// Modes the simulator can serve for a remote connection (it is not a proxy VM and has no
/// SAN LUNs, so san/hotadd never work).
const REMOTE_MODES: [&str; 2] = ["nbdssl", "nbd"];

/// A live connection.
#[derive(Debug)]
pub(crate) struct Connection {
    /// None for a local connection (no server: hosted disks by absolute path).
    pub remote: Option<Remote>,
    pub read_only: bool,
    /// The mode Open will use, or None when none of the requested modes is available.
    pub transport: Option<&'static str>,
    pub requested_modes: String,
}

/// The remote half of a connection.
#[derive(Debug)]
pub(crate) struct Remote {
    /// The thumbprint the caller expects; checked against the lab's at Open.
    pub thumbprint: Option<String>,
    pub lab_thumbprint: Option<String>,
    pub vm: Option<String>,
    pub snapshot: Option<String>,
    /// The files the snapshot froze (`snapshot` is Some).
    pub snapshot_disks: Vec<DatastorePath>,
}

impl Connection {
    /// ConnectEx.
    pub(crate) fn connect(
        lab_root: &Path,
        spec: &ConnectSpec,
        read_only: bool,
        snapshot_ref: Option<&str>,
        transport_modes: Option<&str>,
    ) -> VixResult<Self> {
        let requested = transport_modes
            .filter(|m| !m.is_empty())
            .unwrap_or(ALL_TRANSPORT_MODES)
            .to_owned();
        if spec.server.is_none() {
            let transport = requested.split(':').any(|m| m == "file").then_some("file");
            return Ok(Self {
                remote: None,
                read_only,
                transport,
                requested_modes: requested,
            });
        }
        let view = LabView::open(lab_root)?;
        let lab = authenticate(&view, spec)?;
        let vm = vm_moref(spec)?;
        if let Some(moref) = &vm {
            view.check_vm(moref)?;
        }
        let snapshot = snapshot_ref.filter(|s| !s.is_empty()).map(str::to_owned);
        let snapshot_disks = match (&snapshot, &vm) {
            (None, _) => Vec::new(),
            (Some(snap), None) => {
                return fail(
                    VIX_E_INVALID_ARG,
                    format!("snapshotRef {snap:?} needs a vmxSpec naming the VM"),
                );
            }
            (Some(snap), Some(vm)) => view.snapshot_disks(vm, snap)?,
        };
        let transport = requested
            .split(':')
            .find_map(|m| REMOTE_MODES.iter().copied().find(|r| *r == m));
        Ok(Self {
            remote: Some(Remote {
                thumbprint: spec.thumbprint.clone(),
                lab_thumbprint: Some(lab.thumbprint).filter(|t| !t.is_empty()),
                vm,
                snapshot,
                snapshot_disks,
            }),
            read_only,
            transport,
            requested_modes: requested,
        })
    }

    /// The thumbprint check real VDDK makes when it opens the NFC session (Open).
    pub(crate) fn check_thumbprint(&self) -> VixResult<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let Some(actual) = &remote.lab_thumbprint else {
            return Ok(());
        };
        let expected = remote.thumbprint.as_deref().unwrap_or("<none>");
        if normalise_thumbprint(actual) != normalise_thumbprint(expected) {
            return fail(
                VIX_E_FAIL,
                format!(
                    "SSL thumbprint mismatch: actual thumbprint={actual} expected={expected}; \
                     the server's certificate is not the one the caller trusts"
                ),
            );
        }
        Ok(())
    }
}

fn normalise_thumbprint(t: &str) -> String {
    t.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Checks the server name and credentials against `lab.json` (ConnectEx,
/// PrepareForAccess, EndAccess).
pub(crate) fn authenticate(view: &LabView, spec: &ConnectSpec) -> VixResult<LabSettings> {
    let lab = view.settings()?;
    let Some(server) = spec.server.as_deref() else {
        return fail(VIX_E_INVALID_ARG, "serverName is NULL");
    };
    if !server_matches(&lab.server_name, server, spec.port) {
        return fail(
            VIX_E_HOST_SERVER_NOT_FOUND,
            format!(
                "server {server:?} is not the lab's vCenter ({:?})",
                lab.server_name
            ),
        );
    }
    match &spec.credentials {
        Credentials::Uid { user, password } => {
            if *user != lab.user || *password != lab.password {
                return fail(
                    VIX_E_AUTHENTICATION_FAIL,
                    format!("wrong user name or password for {user:?} on {server}"),
                );
            }
        }
        Credentials::Session { cookie } => {
            // The lab keeps no session registry yet: any non-empty cookie is accepted.
            if cookie.is_empty() {
                return fail(
                    VIX_E_AUTHENTICATION_FAIL,
                    format!("empty session cookie for {server}"),
                );
            }
        }
        Credentials::Other(t @ (VIXDISKLIB_CRED_TICKETID | VIXDISKLIB_CRED_SSPI)) => {
            return fail(
                VIX_E_NOT_SUPPORTED,
                format!("credType {t} is not supported by vddk-sim"),
            );
        }
        Credentials::Other(t) => {
            return fail(VIX_E_INVALID_ARG, format!("credType {t} is not valid"));
        }
    }
    if spec.spec_type != VIXDISKLIB_SPEC_VMX {
        return fail(
            VIX_E_NOT_SUPPORTED,
            format!(
                "specType {} (first-class disks) is not supported",
                spec.spec_type
            ),
        );
    }
    Ok(lab)
}

/// `lab.json`'s server may carry a port (`127.0.0.1:8443`): then the caller may name the
/// host and pass the port in `port`.
fn server_matches(lab_server: &str, server: &str, port: u32) -> bool {
    if lab_server.eq_ignore_ascii_case(server) {
        return true;
    }
    match lab_server.rsplit_once(':') {
        Some((host, lab_port)) => {
            host.eq_ignore_ascii_case(server) && (port == 0 || lab_port == port.to_string())
        }
        None => false,
    }
}

/// `moref=vm-42` → `vm-42`. Other vmxSpec forms (the legacy `path?dcPath=&dsName=`) are
/// not modelled by the lab.
pub(crate) fn vm_moref(spec: &ConnectSpec) -> VixResult<Option<String>> {
    let Some(vmx) = spec.vmx_spec.as_deref() else {
        return Ok(None);
    };
    match vmx.strip_prefix("moref=") {
        Some(moref) if !moref.is_empty() => Ok(Some(moref.to_owned())),
        _ => fail(
            VIX_E_VM_NOT_FOUND,
            format!("vmxSpec {vmx:?} does not name a VM (expected \"moref=vm-N\")"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(server_matches("vc.lab", "VC.lab", 0));
        assert!(server_matches("127.0.0.1:8443", "127.0.0.1", 8443));
        assert!(server_matches("127.0.0.1:8443", "127.0.0.1", 0));
        assert!(!server_matches("127.0.0.1:8443", "127.0.0.1", 443));
        assert!(!server_matches("vc.lab", "other", 0));
    }

    #[test]
    fn thumbprints_compare_on_hex_digits() {
        assert_eq!(
            normalise_thumbprint("aa:bb:0c"),
            normalise_thumbprint("AA:BB:0C")
        );
    }
}
