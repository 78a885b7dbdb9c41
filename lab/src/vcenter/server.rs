//! [`Vcenter`]: the state of one simulated vCenter — the lab, the persisted inventory,
//! sessions, container views, result pages and tasks. All methods are blocking (they
//! read the lab's files and take its `flock`): the HTTP layer calls them through
//! `spawn_blocking`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::fault::Fault;
use super::inventory::Inventory;
use super::objects::World;
use super::property::View;
use super::tasks::Tasks;
use super::time::now_xsd;
use crate::Lab;

/// A SOAP session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// `UserSession.key` (what TerminateSession takes).
    pub key: String,
    /// The user.
    pub user: String,
    /// Login time (xsd:dateTime).
    pub login_time: String,
}

/// Errors starting a [`Vcenter`].
#[derive(Debug, thiserror::Error)]
pub enum VcenterError {
    /// The lab could not be opened or created.
    #[error("lab at {path}")]
    Lab {
        /// The root.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: Box<crate::vmstate::LabError>,
    },
    /// A file of the vCenter (inventory, certificate) failed.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate could not be generated or loaded.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Logging in to the running server failed.
    #[error("login: {0}")]
    Login(String),
}

/// The simulated vCenter's state.
#[derive(Debug)]
pub struct Vcenter {
    pub(crate) lab: Lab,
    inv: Arc<Mutex<Inventory>>,
    supervisor: Arc<crate::supervisor::Supervisor>,
    sessions: Mutex<HashMap<String, Session>>,
    failed_logins: std::sync::atomic::AtomicUsize,
    api_tokens: Mutex<HashMap<String, String>>,
    /// vAPI logins that made a session (see [`Vcenter::api_login_count`]).
    api_logins: std::sync::atomic::AtomicUsize,
    /// Set by [`Vcenter::end_api_sessions_before_next_registervm`].
    end_api_sessions_at_registervm: std::sync::atomic::AtomicBool,
    views: Mutex<HashMap<String, View>>,
    pages: Mutex<HashMap<String, (Vec<String>, usize)>>,
    pub(crate) tasks: Tasks,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Vcenter {
    /// A vCenter over `lab`; `task_step` is the pause between task states.
    ///
    /// # Errors
    /// [`VcenterError::Io`] when the inventory cannot be read or written.
    pub fn new(lab: Lab, task_step: Duration) -> Result<Self, VcenterError> {
        let inv = Inventory::load(lab.root()).map_err(|source| VcenterError::Io {
            what: "load the vCenter inventory".into(),
            source,
        })?;
        let tasks = Tasks::start(task_step).map_err(|source| VcenterError::Io {
            what: "start the task worker".into(),
            source,
        })?;
        let inv = Arc::new(Mutex::new(inv));
        let supervisor = crate::supervisor::Supervisor::start(
            lab.clone(),
            Arc::clone(&inv),
            tasks.clone(),
            task_step,
        )
        .map_err(|source| VcenterError::Io {
            what: "start the Supervisor".into(),
            source,
        })?;
        Ok(Self {
            lab,
            inv,
            supervisor,
            sessions: Mutex::default(),
            failed_logins: std::sync::atomic::AtomicUsize::new(0),
            api_tokens: Mutex::default(),
            api_logins: std::sync::atomic::AtomicUsize::new(0),
            end_api_sessions_at_registervm: std::sync::atomic::AtomicBool::new(false),
            views: Mutex::default(),
            pages: Mutex::default(),
            tasks,
        })
    }

    /// The lab.
    #[must_use]
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The simulated Supervisor (Kubernetes API, VM Operator, WCP).
    #[must_use]
    pub fn supervisor(&self) -> &Arc<crate::supervisor::Supervisor> {
        &self.supervisor
    }

    pub(crate) fn views_lock(&self) -> MutexGuard<'_, HashMap<String, View>> {
        lock(&self.views)
    }

    pub(crate) fn pages_lock(&self) -> MutexGuard<'_, HashMap<String, (Vec<String>, usize)>> {
        lock(&self.pages)
    }

    /// A copy of the inventory.
    pub(crate) fn inventory(&self) -> Inventory {
        lock(&self.inv).clone()
    }

    /// Changes the inventory and persists it.
    pub(crate) fn modify_inventory<T>(
        &self,
        f: impl FnOnce(&mut Inventory) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        let mut inv = lock(&self.inv);
        let out = f(&mut inv)?;
        inv.save(self.lab.root())
            .map_err(|e| Fault::system_error(&format!("save inventory: {e}")))?;
        Ok(out)
    }

    /// One consistent read of inventory and VMs.
    pub(crate) fn world(&self) -> Result<World, Fault> {
        let inv = self.inventory();
        let vms = self.lab.vms().map_err(|e| Fault::from_lab(&e))?;
        let vm_tasks = self
            .tasks
            .all()
            .into_iter()
            .filter(|t| t.entity.0 == "VirtualMachine")
            .map(|t| (t.key, t.entity.1))
            .collect();
        Ok(World { inv, vms, vm_tasks })
    }

    /// Checks the lab credentials.
    pub(crate) fn check_credentials(&self, user: &str, password: &str) -> Result<(), Fault> {
        let s = self.lab.settings().map_err(|e| Fault::from_lab(&e))?;
        if s.user == user && s.password == password {
            Ok(())
        } else {
            Err(Fault::invalid_login())
        }
    }

    /// Login: a new session; returns (cookie value, session).
    pub(crate) fn login(&self, user: &str, password: &str) -> Result<(String, Session), Fault> {
        if let Err(f) = self.check_credentials(user, password) {
            self.failed_logins
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(f);
        }
        let cookie = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            key: uuid::Uuid::new_v4().to_string().to_uppercase(),
            user: user.to_owned(),
            login_time: now_xsd(),
        };
        lock(&self.sessions).insert(cookie.clone(), session.clone());
        Ok((cookie, session))
    }

    /// How many vim25 logins were refused for their credentials: what a test counts to
    /// see that a client does not try a refused password again and again (SSO locks an
    /// account after a few).
    pub fn failed_login_count(&self) -> usize {
        self.failed_logins.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many vim25 sessions are open now (the agent's own, and one per VDDK connection
    /// that logged in): what a test counts to see how many connections a job holds.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The session of a cookie value.
    pub(crate) fn session(&self, cookie: Option<&str>) -> Option<Session> {
        lock(&self.sessions).get(cookie?).cloned()
    }

    /// Logout.
    pub(crate) fn logout(&self, cookie: &str) {
        if let Some(s) = lock(&self.sessions).remove(cookie) {
            let prefix = format!("session[{}]", s.key);
            self.views_lock().retain(|k, _| !k.starts_with(&prefix));
        }
    }

    /// TerminateSession of other sessions' keys.
    pub(crate) fn terminate(&self, own_key: &str, keys: &[String]) -> Result<(), Fault> {
        let mut sessions = lock(&self.sessions);
        for key in keys {
            if key == own_key {
                return Err(Fault::invalid_argument("sessionId"));
            }
            if !sessions.values().any(|s| &s.key == key) {
                return Err(Fault::not_found(&format!("session {key} not found")));
            }
        }
        sessions.retain(|_, s| !keys.contains(&s.key));
        Ok(())
    }

    /// vAPI `POST /api/session`: a token for valid credentials.
    pub(crate) fn api_login(&self, user: &str, password: &str) -> Result<String, Fault> {
        self.check_credentials(user, password)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        lock(&self.api_tokens).insert(token.clone(), user.to_owned());
        self.api_logins
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(token)
    }

    /// How many vAPI sessions were made (`POST /api/session` with valid credentials):
    /// what a test counts to see that a client logged in again after its session ended.
    pub fn api_login_count(&self) -> usize {
        self.api_logins.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends every vAPI session now, as vCenter does to the sessions left unused for its
    /// idle timeout (30 minutes by default) or when it restarts. Their tokens are then
    /// refused by vAPI and by the Supervisor's API alike.
    pub fn end_api_sessions(&self) {
        lock(&self.api_tokens).clear();
    }

    /// Ends every vAPI session when the next `registervm` request arrives, before it is
    /// checked: what a restore whose disk copy outlasted vCenter's idle timeout meets, its
    /// first vAPI call after the copy being the registration.
    pub fn end_api_sessions_before_next_registervm(&self) {
        self.end_api_sessions_at_registervm
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes what [`Self::end_api_sessions_before_next_registervm`] arranged: ends the
    /// sessions if it was.
    pub(crate) fn take_registervm_session_end(&self) {
        if self
            .end_api_sessions_at_registervm
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.end_api_sessions();
        }
    }

    /// The user of a vAPI token.
    pub(crate) fn api_user(&self, token: Option<&str>) -> Option<String> {
        lock(&self.api_tokens).get(token?).cloned()
    }

    /// vAPI `DELETE /api/session`.
    pub(crate) fn api_logout(&self, token: &str) -> bool {
        lock(&self.api_tokens).remove(token).is_some()
    }
}
