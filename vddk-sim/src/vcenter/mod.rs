//! The control plane: a blocking vim25 SOAP client that talks to the lab's vCenter the
//! way VDDK talks to vCenter — ConnectEx logs in (or checks a session cookie) and checks
//! the VM and snapshot, PrepareForAccess/EndAccess call
//! `AuthorizationManager.DisableMethods`/`EnableMethods`, Disconnect logs out.
//!
//! Where the vCenter is: `serverName` and `port` of the connect parameters (port 0 ⇒
//! 443; a `serverName` of the form `host:port` with port 0 is accepted because the lab
//! records its server that way). The scheme is HTTPS unless the lab's `lab.json` records
//! a plain-HTTP server (`vcenter_url` starting with `http://`, `lab serve --http`).
//!
//! TLS: the control-plane session pins the certificate to the thumbprint the lab
//! recorded in `lab.json` (the one `lab serve` generated), not to the caller's
//! `thumbPrint`: real VDDK reports a wrong caller thumbprint at Open (VIX_E_FAIL), so
//! ConnectEx must not fail on it. The thumbprint seen here is what Open compares the
//! caller's with.

mod http;
mod xml;

use std::fmt::Write as _;

use vddk_sys::{
    VIX_E_AUTHENTICATION_FAIL, VIX_E_FAIL, VIX_E_HOST_SERVER_NOT_FOUND, VIX_E_INVALID_ARG,
    VIX_E_VM_NOT_FOUND,
};

pub(crate) use http::normalise_thumbprint;
use http::{Endpoint, Pin};
use xml::{Element, esc};

use crate::log;
use crate::params::{ConnectSpec, Credentials};
use crate::vix::{VixCallError, VixResult, fail};
use lab::vmstate::LabSettings;

/// The cookie that carries a vim25 session.
const SESSION_COOKIE: &str = "vmware_soap_session";
/// What PrepareForAccess disables (VSPHERE.md §A.12).
pub(crate) const RELOCATE_METHOD: &str = "RelocateVM_Task";

/// A SOAP fault, or a transport/protocol error already mapped to a VIX code.
#[derive(Debug)]
pub(crate) enum CallError {
    Fault { kind: String, message: String },
    Vix(VixCallError),
}

impl From<VixCallError> for CallError {
    fn from(e: VixCallError) -> Self {
        Self::Vix(e)
    }
}

impl CallError {
    /// The usual mapping: login faults are AUTHENTICATION_FAIL, a missing object is
    /// VM_NOT_FOUND (the only objects the sim names are VMs), the rest VIX_E_FAIL with
    /// the fault's text, as VDDK reports vCenter faults.
    pub(crate) fn into_vix(self, what: &str) -> VixCallError {
        match self {
            Self::Vix(e) => e,
            Self::Fault { kind, message } => {
                let code = match kind.as_str() {
                    "InvalidLogin" | "NotAuthenticated" => VIX_E_AUTHENTICATION_FAIL,
                    "ManagedObjectNotFound" => VIX_E_VM_NOT_FOUND,
                    _ => VIX_E_FAIL,
                };
                VixCallError::new(code, format!("{what}: vCenter fault {kind}: {message}"))
            }
        }
    }
}

/// The parts of ServiceContent the sim uses.
#[derive(Debug, Clone)]
struct ServiceContent {
    property_collector: String,
    session_manager: String,
    authorization_manager: String,
}

/// A vim25 session with the lab's vCenter. A session this client logged in (user and
/// password) is logged out when dropped; a caller's session cookie is left alone.
#[derive(Debug)]
pub(crate) struct Session {
    endpoint: Endpoint,
    /// The `Cookie` header value.
    cookie: String,
    owned: bool,
    sc: ServiceContent,
}

/// `host`, `host:port`, `[v6]:port` → (host, port).
fn host_port(server: &str, port: u32) -> VixResult<(String, u16)> {
    let bad = || {
        fail(
            VIX_E_HOST_SERVER_NOT_FOUND,
            format!("serverName {server:?} / port {port} do not name a server"),
        )
    };
    let (host, named_port) = match server.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.trim_start_matches('[').trim_end_matches(']'), Some(p)),
            Err(_) => return bad(),
        },
        _ => (server.trim_start_matches('[').trim_end_matches(']'), None),
    };
    let port = match (port, named_port) {
        (0, Some(p)) => p,
        (0, None) => 443,
        (p, _) => match u16::try_from(p) {
            Ok(p) => p,
            Err(_) => return bad(),
        },
    };
    if host.is_empty() {
        return bad();
    }
    Ok((host.to_owned(), port))
}

/// The vCenter the connect parameters name, with the scheme and pin from `lab.json`.
pub(crate) fn endpoint(spec: &ConnectSpec, lab: &LabSettings) -> VixResult<Endpoint> {
    let Some(server) = spec.server.as_deref() else {
        return fail(VIX_E_INVALID_ARG, "serverName is NULL");
    };
    let (host, port) = host_port(server, spec.port)?;
    let plain = lab
        .vcenter_url
        .as_deref()
        .is_some_and(|u| u.starts_with("http://"));
    let tls = (!plain).then(|| {
        std::sync::Arc::new(Pin::new(
            Some(lab.thumbprint.clone()).filter(|t| !t.is_empty()),
        ))
    });
    Ok(Endpoint { host, port, tls })
}

fn envelope(body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            "<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"
        ),
        body
    )
}

/// One call: `<method xmlns=ns><_this type=…>…</_this>{args}</method>`; returns the
/// response element and the response's `Set-Cookie` values.
fn call(
    endpoint: &Endpoint,
    cookie: Option<&str>,
    ns: &str,
    method: &str,
    this: (&str, &str),
    args: &str,
) -> Result<(Element, Vec<String>), CallError> {
    let body = envelope(&format!(
        "<{method} xmlns=\"{ns}\"><_this type=\"{}\">{}</_this>{args}</{method}>",
        esc(this.0),
        esc(this.1)
    ));
    let mut headers = vec![
        ("Content-Type", "text/xml; charset=utf-8"),
        ("SOAPAction", "urn:vim25/8.0.3.0"),
    ];
    if let Some(c) = cookie {
        headers.push(("Cookie", c));
    }
    let resp = endpoint.post("/sdk", &headers, &body)?;
    let what = format!("{method} on {}:{}", endpoint.host, endpoint.port);
    if resp.status != 200 && resp.status != 500 {
        return Err(CallError::Vix(VixCallError::new(
            VIX_E_FAIL,
            format!("{what}: HTTP status {}", resp.status),
        )));
    }
    let Some(root) = Element::parse(&resp.body) else {
        return Err(CallError::Vix(VixCallError::new(
            VIX_E_FAIL,
            format!("{what}: the answer is not well-formed XML"),
        )));
    };
    let Some(first) = root.child("Body").and_then(|b| b.children.first()) else {
        return Err(CallError::Vix(VixCallError::new(
            VIX_E_FAIL,
            format!("{what}: the answer has no SOAP body"),
        )));
    };
    if first.name == "Fault" {
        let detail = first.child("detail").and_then(|d| d.children.first());
        let kind = detail
            .and_then(|d| d.xsi_type.clone())
            .or_else(|| detail.map(|d| d.name.trim_end_matches("Fault").to_owned()))
            .unwrap_or_else(|| "SystemError".to_owned());
        let message = first
            .child_text("faultstring")
            .unwrap_or_default()
            .to_owned();
        return Err(CallError::Fault { kind, message });
    }
    Ok((first.clone(), resp.set_cookies))
}

fn service_content(endpoint: &Endpoint) -> VixResult<ServiceContent> {
    let (resp, _) = call(
        endpoint,
        None,
        "urn:vim25",
        "RetrieveServiceContent",
        ("ServiceInstance", "ServiceInstance"),
        "",
    )
    .map_err(|e| e.into_vix("RetrieveServiceContent"))?;
    let rv = resp.child("returnval");
    let get = |name: &str| -> VixResult<String> {
        match rv.and_then(|r| r.child_text(name)) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => fail(
                VIX_E_FAIL,
                format!(
                    "the server at {}:{} is not a vCenter: ServiceContent has no {name}",
                    endpoint.host, endpoint.port
                ),
            ),
        }
    };
    Ok(ServiceContent {
        property_collector: get("propertyCollector")?,
        session_manager: get("sessionManager")?,
        authorization_manager: get("authorizationManager")?,
    })
}

impl Session {
    /// Logs in with user and password, or checks a caller's session cookie
    /// (`vmware_soap_session="…"` or the bare value) with `CurrentTime`.
    pub(crate) fn open(endpoint: Endpoint, credentials: &Credentials) -> VixResult<Self> {
        let sc = service_content(&endpoint)?;
        let server = format!("{}:{}", endpoint.host, endpoint.port);
        match credentials {
            Credentials::Uid { user, password } => {
                let args = format!(
                    "<userName>{}</userName><password>{}</password>",
                    esc(user),
                    esc(password)
                );
                let (_, cookies) = call(
                    &endpoint,
                    None,
                    "urn:vim25",
                    "Login",
                    ("SessionManager", &sc.session_manager),
                    &args,
                )
                .map_err(|e| e.into_vix(&format!("Login as {user:?} on {server}")))?;
                let Some(cookie) = cookies
                    .iter()
                    .filter_map(|c| c.split(';').next())
                    .find(|c| c.trim_start().starts_with(SESSION_COOKIE))
                else {
                    return fail(
                        VIX_E_FAIL,
                        format!("Login on {server} returned no {SESSION_COOKIE} cookie"),
                    );
                };
                Ok(Self {
                    cookie: cookie.trim().to_owned(),
                    endpoint,
                    owned: true,
                    sc,
                })
            }
            Credentials::Session { cookie } => {
                if cookie.is_empty() {
                    return fail(
                        VIX_E_AUTHENTICATION_FAIL,
                        format!("empty session cookie for {server}"),
                    );
                }
                let cookie = if cookie.contains('=') {
                    cookie.clone()
                } else {
                    format!("{SESSION_COOKIE}=\"{cookie}\"")
                };
                let session = Self {
                    cookie,
                    endpoint,
                    owned: false,
                    sc,
                };
                session
                    .call(
                        "urn:vim25",
                        "CurrentTime",
                        ("ServiceInstance", "ServiceInstance"),
                        "",
                    )
                    .map_err(|e| e.into_vix(&format!("session cookie on {server}")))?;
                Ok(session)
            }
            Credentials::Other(t) => fail(VIX_E_INVALID_ARG, format!("credType {t} is not valid")),
        }
    }

    fn call(
        &self,
        ns: &str,
        method: &str,
        this: (&str, &str),
        args: &str,
    ) -> Result<Element, CallError> {
        call(&self.endpoint, Some(&self.cookie), ns, method, this, args).map(|(e, _)| e)
    }

    /// `host:port` of the server.
    pub(crate) fn server(&self) -> String {
        format!("{}:{}", self.endpoint.host, self.endpoint.port)
    }

    /// The thumbprint of the certificate the server presented (None over plain HTTP).
    pub(crate) fn server_thumbprint(&self) -> Option<String> {
        self.endpoint.tls.as_ref().and_then(|p| p.seen())
    }

    /// Checks that `vm` exists and returns the morefs of its snapshots
    /// (`RetrievePropertiesEx` of `name` and `snapshot`).
    pub(crate) fn vm_snapshots(&self, vm: &str) -> VixResult<Vec<String>> {
        let object = self.vm_object(vm, &["name", "snapshot"], &format!("VM {vm}"))?;
        let snapshots = object
            .children
            .iter()
            .filter(|p| p.name == "propSet" && p.child_text("name") == Some("snapshot"))
            .flat_map(Element::descendants)
            .filter(|e| e.attr("type") == Some("VirtualMachineSnapshot"))
            .map(|e| e.text.trim().to_owned())
            .collect();
        Ok(snapshots)
    }

    /// `RetrievePropertiesEx` of `paths` of the object `kind`:`moref`.
    fn retrieve(&self, kind: &str, moref: &str, paths: &[&str]) -> Result<Element, CallError> {
        let mut args = format!("<specSet><propSet><type>{kind}</type><all>false</all>");
        for p in paths {
            let _ = write!(args, "<pathSet>{p}</pathSet>");
        }
        let _ = write!(
            args,
            "</propSet><objectSet><obj type=\"{kind}\">{}</obj><skip>false</skip></objectSet>\
             </specSet><options></options>",
            esc(moref)
        );
        self.call(
            "urn:vim25",
            "RetrievePropertiesEx",
            ("PropertyCollector", &self.sc.property_collector),
            &args,
        )
    }

    /// The `objects` element of VM `vm` with `paths`; VM_NOT_FOUND when vCenter returns
    /// none. `what` names the call in errors.
    fn vm_object(&self, vm: &str, paths: &[&str], what: &str) -> VixResult<Element> {
        let resp = self
            .retrieve("VirtualMachine", vm, paths)
            .map_err(|e| e.into_vix(what))?;
        let object = resp
            .child("returnval")
            .and_then(|r| r.child("objects"))
            .filter(|o| o.child_text("obj") == Some(vm))
            .cloned();
        match object {
            Some(o) => Ok(o),
            None => fail(VIX_E_VM_NOT_FOUND, format!("VM {vm} not found in vCenter")),
        }
    }

    /// `DisableMethods` (disable) / `EnableMethods` of RelocateVM_Task on `vm` for
    /// `identity` (VSPHERE.md §A.12).
    pub(crate) fn set_relocate_disabled(
        &self,
        vm: &str,
        identity: &str,
        disable: bool,
    ) -> VixResult<()> {
        let entity = format!("<entity type=\"VirtualMachine\">{}</entity>", esc(vm));
        let source = format!("<sourceId>{}</sourceId>", esc(identity));
        let (method, args) = if disable {
            (
                "DisableMethods",
                format!("{entity}<method><method>{RELOCATE_METHOD}</method></method>{source}"),
            )
        } else {
            (
                "EnableMethods",
                format!("{entity}<method>{RELOCATE_METHOD}</method>{source}"),
            )
        };
        self.call(
            "urn:internalvim25",
            method,
            ("AuthorizationManager", &self.sc.authorization_manager),
            &args,
        )
        .map_err(|e| {
            e.into_vix(&format!(
                "{method} {RELOCATE_METHOD} on VM {vm} for {identity:?}"
            ))
        })?;
        Ok(())
    }
}

/// A virtual disk of a VM, as `config.hardware.device` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskDevice {
    pub key: i32,
    pub controller_key: i32,
    pub unit_number: i32,
    /// `backing.fileName` (`[ds] dir/file.vmdk`).
    pub file_name: String,
}

/// How long a task the sim started may take.
const TASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Session {
    /// The virtual disks of `vm` (`RetrievePropertiesEx` of `config.hardware.device`).
    pub(crate) fn disk_devices(&self, vm: &str) -> VixResult<Vec<DiskDevice>> {
        let object = self.vm_object(
            vm,
            &["config.hardware.device"],
            &format!("the devices of VM {vm}"),
        )?;
        let number = |e: &Element, name: &str| e.child_text(name).and_then(|t| t.parse().ok());
        Ok(object
            .descendants()
            .into_iter()
            .filter(|e| e.xsi_type.as_deref() == Some("VirtualDisk"))
            .filter_map(|d| {
                Some(DiskDevice {
                    key: number(d, "key")?,
                    controller_key: number(d, "controllerKey").unwrap_or(0),
                    unit_number: number(d, "unitNumber").unwrap_or(-1),
                    file_name: d.child("backing")?.child_text("fileName")?.to_owned(),
                })
            })
            .collect())
    }

    /// `ReconfigVM_Task` of `vm` with the `deviceChange` elements `changes`, waited for.
    pub(crate) fn reconfigure(&self, vm: &str, changes: &str) -> VixResult<()> {
        let what = format!("ReconfigVM_Task of VM {vm}");
        let resp = self
            .call(
                "urn:vim25",
                "ReconfigVM_Task",
                ("VirtualMachine", vm),
                &format!("<spec>{changes}</spec>"),
            )
            .map_err(|e| e.into_vix(&what))?;
        let Some(task) = resp.child_text("returnval").map(str::to_owned) else {
            return fail(VIX_E_FAIL, format!("{what}: the reply names no task"));
        };
        self.wait_task(&task, &what)
    }

    /// Polls the task's `info` until it succeeds (Ok) or fails (its fault as the error).
    fn wait_task(&self, task: &str, what: &str) -> VixResult<()> {
        let deadline = std::time::Instant::now() + TASK_TIMEOUT;
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            let resp = self
                .retrieve("Task", task, &["info"])
                .map_err(|e| e.into_vix(&format!("{what}: task {task}")))?;
            let info = resp
                .descendants()
                .into_iter()
                .find(|e| e.name == "val" && e.child("state").is_some())
                .cloned();
            let Some(info) = info else {
                return fail(VIX_E_FAIL, format!("{what}: task {task} has no info"));
            };
            match info.child_text("state") {
                Some("success") => return Ok(()),
                Some("error") => {
                    let error = info.child("error");
                    let kind = error
                        .and_then(|e| e.child("fault"))
                        .and_then(|f| f.xsi_type.clone())
                        .unwrap_or_else(|| "unknown".into());
                    let message = error
                        .and_then(|e| e.child_text("localizedMessage"))
                        .unwrap_or_default();
                    return fail(
                        VIX_E_FAIL,
                        format!("{what}: task {task} failed: {kind}: {message}"),
                    );
                }
                _ if std::time::Instant::now() >= deadline => {
                    return fail(
                        VIX_E_FAIL,
                        format!("{what}: task {task} did not end within {TASK_TIMEOUT:?}"),
                    );
                }
                _ => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let r = self.call(
            "urn:vim25",
            "Logout",
            ("SessionManager", &self.sc.session_manager),
            "",
        );
        if let Err(e) = r {
            let e = e.into_vix("Logout");
            log::warn(&format!(
                "logout from {}:{}: {}",
                self.endpoint.host, self.endpoint.port, e.detail
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_and_ports() {
        assert_eq!(host_port("vc.lab", 0).unwrap(), ("vc.lab".into(), 443));
        assert_eq!(host_port("vc.lab", 8443).unwrap(), ("vc.lab".into(), 8443));
        assert_eq!(
            host_port("127.0.0.1:8443", 0).unwrap(),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(host_port("[::1]:9", 0).unwrap(), ("::1".into(), 9));
        assert_eq!(host_port("::1", 0).unwrap(), ("::1".into(), 443));
        assert!(host_port("vc:x", 0).is_err());
        assert!(host_port("vc", 70000).is_err());
    }
}
