//! ConnectEx semantics: validating connect parameters against the lab's vCenter (server,
//! credentials, VM moref, snapshot — over SOAP, see [`crate::vcenter`]), choosing the
//! transport mode, and what a connection remembers.
//!
//! As with real VDDK, the caller's thumbprint is *not* checked here but at Open
//! (VDDK.md §6).

use std::path::Path;

use vddk_sys::{
    VIX_E_FAIL, VIX_E_INVALID_ARG, VIX_E_NOT_SUPPORTED, VIX_E_SNAPSHOT_NOTFOUND,
    VIX_E_VM_NOT_FOUND, VIXDISKLIB_CRED_SSPI, VIXDISKLIB_CRED_TICKETID, VIXDISKLIB_SPEC_VMX,
};

use crate::params::{ConnectSpec, Credentials};
use crate::storage::{DatastorePath, LabView};
use crate::vcenter::{self, Session, normalise_thumbprint};
use crate::vix::{VixResult, fail};

/// What ListTransportModes reports (real VDDK's order).
pub(crate) const ALL_TRANSPORT_MODES: &str = "file:san:hotadd:nbdssl:nbd";
/// Modes the simulator can serve for a remote connection over the network. It has no SAN
/// LUNs, so san never works; hotadd works for snapshot reads when the config names the
/// proxy VM (`vadp.sim.proxyVm`, see [`crate::hotadd`]).
const NETWORK_MODES: [&str; 2] = ["nbdssl", "nbd"];

/// A live connection.
#[derive(Debug)]
pub(crate) struct Connection {
    /// None for a local connection (no server: hosted disks by absolute path).
    pub remote: Option<Remote>,
    pub read_only: bool,
    /// The mode Open will use, or None when none of the requested modes is available.
    pub transport: Option<&'static str>,
    /// With `transport` hotadd: the network mode Open falls back to when the hot-add
    /// fails (the next requested one), as VDDK tries the modes in order.
    pub fallback: Option<&'static str>,
    pub requested_modes: String,
}

/// The remote half of a connection.
#[derive(Debug)]
pub(crate) struct Remote {
    /// The thumbprint the caller expects; checked against the server's at Open.
    pub thumbprint: Option<String>,
    /// The server's: the one its certificate had during ConnectEx, or (plain HTTP lab)
    /// the one `lab.json` records.
    pub server_thumbprint: Option<String>,
    pub vm: Option<String>,
    pub snapshot: Option<String>,
    /// The files the snapshot froze (`snapshot` is Some).
    pub snapshot_disks: Vec<DatastorePath>,
    /// The vCenter session; a session ConnectEx logged in is logged out when the
    /// connection goes (Disconnect, or the last disk opened through it closing). Hot-adds
    /// go through it.
    pub session: Session,
    /// The proxy VM hotadd attaches disks to (the config's `vadp.sim.proxyVm`).
    pub proxy_vm: Option<String>,
}

impl Connection {
    /// ConnectEx.
    pub(crate) fn connect(
        lab_root: &Path,
        spec: &ConnectSpec,
        read_only: bool,
        snapshot_ref: Option<&str>,
        transport_modes: Option<&str>,
        proxy_vm: Option<&str>,
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
                fallback: None,
                requested_modes: requested,
            });
        }
        let view = LabView::open(lab_root)?;
        let vm = vm_moref(spec)?;
        let snapshot = snapshot_ref.filter(|s| !s.is_empty()).map(str::to_owned);
        if let (Some(snap), None) = (&snapshot, &vm) {
            return fail(
                VIX_E_INVALID_ARG,
                format!("snapshotRef {snap:?} needs a vmxSpec naming the VM"),
            );
        }
        let (session, lab) = open_session(&view, spec)?;
        let snapshot_disks = match &vm {
            None => Vec::new(),
            Some(vm) => {
                let snapshots = session.vm_snapshots(vm)?;
                match &snapshot {
                    None => Vec::new(),
                    Some(snap) if snapshots.iter().any(|s| s == snap) => {
                        // The data path reads the datastore directly (as SAN or hotadd
                        // would): the frozen files come from the lab's VM state.
                        view.snapshot_disks(vm, snap)?
                    }
                    Some(snap) => {
                        return fail(
                            VIX_E_SNAPSHOT_NOTFOUND,
                            format!("VM {vm} has no snapshot {snap:?} in vCenter"),
                        );
                    }
                }
            }
        };
        // Hotadd reads a snapshot's frozen files through the proxy VM; writes, and reads
        // without a snapshot, go over the network.
        let hotadd = proxy_vm.is_some() && snapshot.is_some() && read_only;
        let available = |m: &str| {
            if hotadd && m == "hotadd" {
                Some("hotadd")
            } else {
                NETWORK_MODES.iter().copied().find(|r| *r == m)
            }
        };
        let mut usable = requested.split(':').filter_map(available);
        let transport = usable.next();
        let fallback = if transport == Some("hotadd") {
            usable.find(|m| *m != "hotadd")
        } else {
            None
        };
        let server_thumbprint = session
            .server_thumbprint()
            .or_else(|| Some(lab.thumbprint).filter(|t| !t.is_empty()));
        Ok(Self {
            remote: Some(Remote {
                thumbprint: spec.thumbprint.clone(),
                server_thumbprint,
                vm,
                snapshot,
                snapshot_disks,
                session,
                proxy_vm: proxy_vm.filter(|_| hotadd).map(str::to_owned),
            }),
            read_only,
            transport,
            fallback,
            requested_modes: requested,
        })
    }

    /// The thumbprint check real VDDK makes when it opens the NFC session (Open).
    pub(crate) fn check_thumbprint(&self) -> VixResult<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let Some(actual) = &remote.server_thumbprint else {
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

/// Checks what can be checked locally (credential and spec types), then opens a vCenter
/// session with the credentials (ConnectEx, PrepareForAccess, EndAccess).
pub(crate) fn open_session(
    view: &LabView,
    spec: &ConnectSpec,
) -> VixResult<(Session, lab::vmstate::LabSettings)> {
    match &spec.credentials {
        Credentials::Uid { .. } | Credentials::Session { .. } => {}
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
    let lab = view.settings()?;
    let endpoint = vcenter::endpoint(spec, &lab)?;
    let session = Session::open(endpoint, &spec.credentials)?;
    Ok((session, lab))
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
