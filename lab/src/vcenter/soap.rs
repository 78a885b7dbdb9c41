//! vim25 dispatch: parses the envelope, authenticates, enforces `disabledMethod`, and
//! runs the method. Methods that change VMs are `*_Task`s whose work runs on the task
//! worker (`vm_ops`); the rest answer directly.

use std::fmt::Write as _;
use std::sync::Arc;

use super::fault::Fault;
use super::server::{Session, Vcenter};
use super::time::now_xsd;
use super::value::Val;
use super::xml::{Element, envelope, esc};
use crate::vmstate::VmMoref;

/// The cookie that carries the SOAP session.
pub const SESSION_COOKIE: &str = "vmware_soap_session";

/// The answer to one `POST /sdk`.
#[derive(Debug)]
pub(crate) struct SoapReply {
    /// 200, or 500 for a fault.
    pub status: u16,
    /// `Set-Cookie` value (Login).
    pub set_cookie: Option<String>,
    /// The envelope.
    pub body: String,
}

/// One parsed call.
pub(crate) struct Call<'a> {
    pub method: String,
    pub this: (String, String),
    pub req: &'a Element,
    pub session: Option<Session>,
}

impl Call<'_> {
    pub(crate) fn session(&self) -> Result<&Session, Fault> {
        self.session.as_ref().ok_or_else(Fault::not_authenticated)
    }
}

/// The value of the session cookie in a `Cookie` header.
pub(crate) fn cookie_value(header: Option<&str>) -> Option<String> {
    header?.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name.trim() == SESSION_COOKIE).then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// A `returnval` holding a moref.
pub(crate) fn returnval_ref(kind: &str, id: &str) -> String {
    format!("<returnval type=\"{}\">{}</returnval>", esc(kind), esc(id))
}

impl Vcenter {
    /// Handles one SOAP request.
    pub(crate) fn soap(self: &Arc<Self>, cookie: Option<&str>, body: &[u8]) -> SoapReply {
        let fault_reply = |f: Fault| SoapReply {
            status: 500,
            set_cookie: None,
            body: envelope(&f.soap()),
        };
        let Some(root) = Element::parse(body) else {
            return fault_reply(Fault::invalid_request("the request is not well-formed XML"));
        };
        let Some(call_el) = root.child("Body").and_then(|b| b.children.first()) else {
            return fault_reply(Fault::invalid_request("no SOAP body"));
        };
        let Some(this) = call_el.child("_this").and_then(Element::moref) else {
            return fault_reply(Fault::invalid_request("no _this"));
        };
        let call = Call {
            method: call_el.name.clone(),
            this,
            req: call_el,
            session: self.session(cookie),
        };
        let method = call.method.clone();
        if method == "RetrievePropertiesEx" && self.task_poll_fails(call.req) {
            return SoapReply {
                status: 503,
                set_cookie: None,
                body: "vCenter is restarting (lab fault injection)".into(),
            };
        }
        match self.dispatch(&call, cookie) {
            Ok((returnval, set_cookie)) => SoapReply {
                status: 200,
                set_cookie,
                body: envelope(&format!(
                    "<{method}Response xmlns=\"urn:vim25\">{returnval}</{method}Response>"
                )),
            },
            Err(f) => {
                tracing::debug!(method, fault = f.kind, "lab vcenter fault");
                fault_reply(f)
            }
        }
    }

    /// Whether this `RetrievePropertiesEx` reads a task of a VM told to fail its task polls
    /// ([`crate::Lab::fail_next_task_polls`]); takes one failure if so.
    fn task_poll_fails(&self, req: &Element) -> bool {
        let Some(obj) = req
            .child("specSet")
            .and_then(|s| s.child("objectSet"))
            .and_then(|o| o.child("obj"))
            .and_then(Element::moref)
        else {
            return false;
        };
        if obj.0 != "Task" {
            return false;
        }
        let Some(task) = self.tasks.get(&obj.1) else {
            return false;
        };
        task.entity.0 == "VirtualMachine"
            && self
                .lab
                .take_task_poll_failure(&VmMoref(task.entity.1.clone()))
    }

    fn dispatch(
        self: &Arc<Self>,
        call: &Call<'_>,
        cookie: Option<&str>,
    ) -> Result<(String, Option<String>), Fault> {
        let m = call.method.as_str();
        match m {
            "RetrieveServiceContent" => return Ok((self.service_content(), None)),
            "Login" => {
                let user = call.req.child_text("userName").unwrap_or_default();
                let password = call.req.child_text("password").unwrap_or_default();
                let (cookie, s) = self.login(user, password)?;
                let set = format!("{SESSION_COOKIE}=\"{cookie}\"; Path=/; HttpOnly; Secure");
                return Ok((user_session(&s), Some(set)));
            }
            _ => {}
        }
        let session = call.session()?.clone();
        self.check_disabled(call)?;
        let out = match m {
            "Logout" => {
                // `cookie` is the session cookie's value already (see `http::cookie`).
                if let Some(c) = cookie {
                    self.logout(c);
                }
                String::new()
            }
            "CurrentTime" => {
                let mut failing = false;
                let _ = self.lab.update_settings(|s| {
                    failing = s.failing_current_time > 0;
                    s.failing_current_time = s.failing_current_time.saturating_sub(1);
                });
                if failing {
                    return Err(Fault::system_error("injected CurrentTime failure"));
                }
                let offset = self.lab.settings().map_or(0, |s| s.clock_offset_secs);
                format!(
                    "<returnval>{}</returnval>",
                    super::time::now_xsd_offset(offset)
                )
            }
            "TerminateSession" => {
                let keys: Vec<String> = call
                    .req
                    .children_named("sessionId")
                    .map(|e| e.text.trim().to_owned())
                    .collect();
                self.terminate(&session.key, &keys)?;
                String::new()
            }
            "SessionIsActive" => {
                let id = call.req.child_text("sessionID").unwrap_or_default();
                let active = self.session(Some(id)).is_some();
                format!("<returnval>{active}</returnval>")
            }
            "RetrievePropertiesEx" => {
                let world = self.world()?;
                self.retrieve(&world, &session.key, call.req)?
            }
            "ContinueRetrievePropertiesEx" => {
                self.continue_retrieve(call.req.child_text("token").unwrap_or_default())?
            }
            "CancelRetrievePropertiesEx" => {
                self.pages_lock()
                    .remove(call.req.child_text("token").unwrap_or_default());
                String::new()
            }
            "CreateContainerView" => self.create_container_view(call, &session)?,
            "DestroyView" => {
                self.views_lock().remove(&call.this.1);
                String::new()
            }
            "CreateFolder" => {
                let name = call.req.child_text("name").unwrap_or_default().to_owned();
                let parent = call.this.1.clone();
                let moref = self.modify_inventory(|inv| inv.create_folder(&parent, &name))?;
                // A VM with that name in the folder is a duplicate too.
                returnval_ref("Folder", &moref)
            }
            "QueryChangedDiskAreas" => self.query_changed_disk_areas(call)?,
            "DisableMethods" => self.disable_methods(call)?,
            "EnableMethods" => self.enable_methods(call)?,
            "MakeDirectory" => self.make_directory(call)?,
            "UnregisterVM" => self.unregister(call)?,
            "SetVirtualDiskUuid" => self.set_virtual_disk_uuid(call)?,
            _ => self.start_task(call, &session)?,
        };
        Ok((out, None))
    }

    /// `MethodDisabled` when the target VM has `call.method` in its `disabledMethod`.
    fn check_disabled(&self, call: &Call<'_>) -> Result<(), Fault> {
        if call.this.0 != "VirtualMachine" {
            return Ok(());
        }
        let Ok(vm) = self.lab.vm(&VmMoref(call.this.1.clone())) else {
            return Ok(());
        };
        match vm.disabled_methods.iter().find(|d| d.method == call.method) {
            Some(d) => Err(Fault::method_disabled(&d.source)),
            None => Ok(()),
        }
    }

    fn create_container_view(&self, call: &Call<'_>, session: &Session) -> Result<String, Fault> {
        let container = call
            .req
            .child("container")
            .and_then(Element::moref)
            .ok_or_else(|| Fault::invalid_argument("container"))?;
        let world = self.world()?;
        if !world.exists(&container.0, &container.1) {
            return Err(Fault::not_found_object(&container.0, &container.1));
        }
        let types = call
            .req
            .children_named("type")
            .map(|t| t.text.trim().to_owned())
            .collect();
        let recursive = call.req.child_bool("recursive").unwrap_or(false);
        let id = format!("session[{}]{}", session.key, uuid::Uuid::new_v4());
        self.views_lock().insert(
            id.clone(),
            super::property::View {
                container,
                types,
                recursive,
            },
        );
        Ok(returnval_ref("ContainerView", &id))
    }

    fn service_content(&self) -> String {
        let inv = self.inventory();
        let mut out = String::from("<returnval>");
        let refs: &[(&str, &str, &str)] = &[
            ("rootFolder", "Folder", super::inventory::ROOT_FOLDER),
            (
                "propertyCollector",
                "PropertyCollector",
                "propertyCollector",
            ),
            ("viewManager", "ViewManager", "ViewManager"),
        ];
        for (e, k, v) in refs {
            let _ = write!(out, "<{e} type=\"{k}\">{v}</{e}>");
        }
        // The Supervisor's version setting picks the vCenter release (seed 001 §1.3).
        let (version, build) = match self.supervisor().settings().version {
            crate::supervisor::SupervisorVersion::V80U3 => ("8.0.3", "24022515"),
            crate::supervisor::SupervisorVersion::V90 => ("9.0.0", "24755230"),
        };
        let about = Val::obj(
            "AboutInfo",
            vec![
                ("name", Val::str("VMware vCenter Server")),
                (
                    "fullName",
                    Val::str(format!(
                        "VMware vCenter Server {version} build-{build} (vadp-agent lab)"
                    )),
                ),
                ("vendor", Val::str("VMware, Inc.")),
                ("version", Val::str(version)),
                ("build", Val::str(build)),
                ("localeVersion", Val::str("INTL")),
                ("localeBuild", Val::str("000")),
                ("osType", Val::str("linux-x64")),
                ("productLineId", Val::str("vpx")),
                ("apiType", Val::str("VirtualCenter")),
                ("apiVersion", Val::str(format!("{version}.0"))),
                ("instanceUuid", Val::str(&inv.instance_uuid)),
                (
                    "licenseProductName",
                    Val::str("VMware VirtualCenter Server"),
                ),
                ("licenseProductVersion", Val::str(&version[..3])),
            ],
        );
        about.write(&mut out, "about", false);
        let rest: &[(&str, &str, &str)] = &[
            ("setting", "OptionManager", "VpxSettings"),
            ("userDirectory", "UserDirectory", "UserDirectory"),
            ("sessionManager", "SessionManager", "SessionManager"),
            (
                "authorizationManager",
                "AuthorizationManager",
                "AuthorizationManager",
            ),
            ("taskManager", "TaskManager", "TaskManager"),
            ("searchIndex", "SearchIndex", "SearchIndex"),
            ("fileManager", "FileManager", "FileManager"),
            (
                "virtualDiskManager",
                "VirtualDiskManager",
                "virtualDiskManager",
            ),
        ];
        for (e, k, v) in rest {
            let _ = write!(out, "<{e} type=\"{k}\">{v}</{e}>");
        }
        out.push_str("</returnval>");
        out
    }
}

fn user_session(s: &Session) -> String {
    let mut out = String::new();
    Val::obj(
        "UserSession",
        vec![
            ("key", Val::str(&s.key)),
            ("userName", Val::str(&s.user)),
            ("fullName", Val::str(&s.user)),
            ("loginTime", Val::Time(s.login_time.clone())),
            ("lastActiveTime", Val::Time(now_xsd())),
            ("locale", Val::str("en")),
            ("messageLocale", Val::str("en")),
            ("extensionSession", Val::Bool(false)),
            ("ipAddress", Val::str("127.0.0.1")),
            ("userAgent", Val::str("")),
            ("callCount", Val::Long(0)),
        ],
    )
    .write(&mut out, "returnval", false);
    out
}
