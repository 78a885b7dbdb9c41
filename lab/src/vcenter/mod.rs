//! The lab's vCenter (feature `server`): vim25 SOAP at `/sdk`, datastore HTTP at
//! `/folder`, vAPI REST at `/api` (session, cis tasks) and the lab control API at `/lab`,
//! over the lab's storage model (ARCHITECTURE §8, VSPHERE.md §A, §B).
//!
//! Owns: the inventory around the VMs (`<root>/vcenter/inventory.json`: datacenter,
//! folders with `Namespaces`, cluster, host, resource pools, datastores), the server
//! certificate (`<root>/vcenter/cert.der`, thumbprint in `lab.json`), sessions, views
//! and tasks (in memory: a restart logs everyone out and forgets tasks, as a vCenter
//! restart does). VMs, snapshots, disks and CBT stay in [`crate::vmstate`] /
//! [`crate::datastore`]; this module must not duplicate that state.
//!
//! Threads: tokio workers only parse HTTP and hand every call that touches the lab
//! (files, `flock`) to `spawn_blocking`; task work runs on one named thread,
//! `vcenter-tasks`. [`spawn`] runs the server on its own runtime thread,
//! `vcenter-http`, so callers need no runtime.
//!
//! Deviations from vCenter, on purpose: PUT `/folder` creates missing directories (as
//! vcsim does; the agent's datastore client relies on it); removing a snapshot always
//! consolidates; RegisterVM rebuilds a VM from its `.vmx` without its snapshot tree;
//! RelocateVM_Task only checks `disabledMethod` and then does nothing.

mod cert;
pub(crate) mod fault;
pub(crate) mod http;
pub(crate) mod inventory;
mod lab_api;
mod objects;
mod property;
mod server;
mod soap;
pub(crate) mod tasks;
mod tasks_cis;
mod time;
mod value;
mod vm_ops;
mod xml;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use server::{Vcenter, VcenterError};
pub use soap::SESSION_COOKIE;
pub(crate) use tasks_cis::cis_info;
pub(crate) use time::now_rfc3339;

use crate::Lab;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Pause between task states (queued → running → done); makes the asynchrony
    /// observable. 50 ms by default.
    pub task_step: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            plain_http: false,
            task_step: Duration::from_millis(50),
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct RunningVcenter {
    /// The bound address.
    pub addr: SocketAddr,
    /// `https://127.0.0.1:port/sdk`.
    pub sdk_url: String,
    /// SHA-1 thumbprint of the certificate (`None` for plain HTTP).
    pub thumbprint: Option<String>,
    /// Login user.
    pub user: String,
    /// Login password.
    pub password: String,
    /// The state, for in-process inspection.
    pub vcenter: Arc<Vcenter>,
    /// Stops the accept loop (see [`RunningVcenter::stop`]); dropping it does not.
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The `vcenter-http` thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningVcenter {
    /// Stops the server and waits for its thread: the listener closes (new connections
    /// are refused) and open connections are dropped. Idempotent. Without a call the
    /// server runs until the process exits (`lab serve`).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("lab vcenter: the server thread panicked");
        }
    }
}

/// The lab's vCenter running in this process for tests, benchmarks and the demo: the one
/// shared way to get a vCenter that vddk-sim (which finds it through `lab.json`) and the
/// agent's SOAP client can talk to. Stops when dropped.
#[derive(Debug)]
pub struct InProcessVcenter {
    running: RunningVcenter,
}

impl InProcessVcenter {
    /// Starts the vCenter over the lab at `root` on `127.0.0.1:<free port>` on its own
    /// thread and tokio runtime (the caller needs none). `plain_http` serves `http://`;
    /// otherwise HTTPS with the lab's certificate ([`Self::thumbprint`]). Task steps are
    /// 1 ms so tests do not wait. Records the URL, `server_name` and thumbprint in
    /// `lab.json`, so settings read after this call name the running server.
    ///
    /// # Errors
    /// Lab, certificate or socket errors.
    pub fn start(root: &std::path::Path, plain_http: bool) -> Result<Self, VcenterError> {
        Self::start_with(
            root,
            &ServeOptions {
                plain_http,
                task_step: Duration::from_millis(1),
                ..ServeOptions::default()
            },
        )
    }

    /// As [`Self::start`] with the given options (e.g. the default 50 ms task steps, so
    /// task progress can be watched).
    ///
    /// # Errors
    /// Lab, certificate or socket errors.
    pub fn start_with(
        root: &std::path::Path,
        options: &ServeOptions,
    ) -> Result<Self, VcenterError> {
        let lab = open_or_create(root)?;
        Ok(Self {
            running: spawn(lab, options)?,
        })
    }

    /// The running server (URL, address, credentials, state).
    #[must_use]
    pub fn running(&self) -> &RunningVcenter {
        &self.running
    }

    /// `http(s)://127.0.0.1:port/sdk`.
    #[must_use]
    pub fn sdk_url(&self) -> &str {
        &self.running.sdk_url
    }

    /// The host VDDK's `serverName` takes (`127.0.0.1`).
    #[must_use]
    pub fn host(&self) -> String {
        self.running.addr.ip().to_string()
    }

    /// The port VDDK's `port` takes.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.running.addr.port()
    }

    /// The certificate's SHA-1 thumbprint (`None` over plain HTTP).
    #[must_use]
    pub fn thumbprint(&self) -> Option<&str> {
        self.running.thumbprint.as_deref()
    }

    /// A new vim25 session of the lab's user, as the `Cookie` value a VDDK caller passes
    /// with SESSIONID credentials (`vmware_soap_session="…"`).
    ///
    /// # Errors
    /// The lab's settings cannot be read.
    pub fn session_cookie(&self) -> Result<String, VcenterError> {
        let (cookie, _) = self
            .running
            .vcenter
            .login(&self.running.user, &self.running.password)
            .map_err(|f| VcenterError::Login(f.message))?;
        Ok(format!("{SESSION_COOKIE}=\"{cookie}\""))
    }

    /// Stops the server now (also done on drop).
    pub fn stop(&mut self) {
        self.running.stop();
    }
}

impl Drop for InProcessVcenter {
    fn drop(&mut self) {
        self.running.stop();
    }
}

/// Creates a lab at `root` unless one exists (the default inventory comes with the
/// vCenter on first start).
///
/// # Errors
/// [`VcenterError::Lab`].
pub fn open_or_create(root: &std::path::Path) -> Result<Lab, VcenterError> {
    let err = |source| VcenterError::Lab {
        path: root.to_owned(),
        source: Box::new(source),
    };
    if root.join("lab.json").exists() {
        Lab::open(root).map_err(err)
    } else {
        Lab::create(root).map_err(err)
    }
}

/// Starts the vCenter on its own thread and runtime; returns once it listens. Records
/// the certificate thumbprint, `server_name` (`host:port`) and the SDK URL in `lab.json`.
///
/// # Errors
/// Binding, certificate, inventory or lab errors.
pub fn spawn(lab: Lab, options: &ServeOptions) -> Result<RunningVcenter, VcenterError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| VcenterError::Io { what, source }
    };
    let std_listener = std::net::TcpListener::bind(options.listen).map_err(io("bind"))?;
    std_listener.set_nonblocking(true).map_err(io("bind"))?;
    let addr = std_listener.local_addr().map_err(io("bind"))?;
    let host = addr.ip().to_string();
    let (tls, thumbprint) = if options.plain_http {
        (None, None)
    } else {
        let names = vec![host.clone(), "localhost".to_owned()];
        let id = cert::load_or_create(lab.root(), &names)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| VcenterError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(id.cert_der.clone())],
                rustls::pki_types::PrivateKeyDer::Pkcs8(id.key_der.clone().into()),
            )
            .map_err(|e| VcenterError::Certificate(e.to_string()))?;
        (
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            Some(id.thumbprint),
        )
    };
    let scheme = if options.plain_http { "http" } else { "https" };
    let sdk_url = format!("{scheme}://{addr}/sdk");
    let lab_err = |source| VcenterError::Lab {
        path: lab.root().to_owned(),
        source: Box::new(source),
    };
    let settings = lab.update_settings(|s| {
        if let Some(t) = &thumbprint {
            s.thumbprint.clone_from(t);
        }
        s.server_name = addr.to_string();
        s.vcenter_url = Some(sdk_url.clone());
    });
    let settings = settings.map_err(lab_err)?;
    let vcenter = Arc::new(Vcenter::new(lab, options.task_step)?);
    let app = http::app(Arc::clone(&vcenter));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vcenter-http")
        .enable_all()
        .build()
        .map_err(io("start the runtime"))?;
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("vcenter-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "lab vcenter: listener");
                        return;
                    }
                };
                tokio::select! {
                    () = http::serve(listener, app, tls) => {}
                    // Only an explicit stop ends the server, not a dropped sender.
                    Ok(()) = stop => {}
                }
            });
            // Dropping the runtime here cancels the connection tasks.
            runtime.shutdown_background();
        })
        .map_err(io("spawn the server thread"))?;
    Ok(RunningVcenter {
        addr,
        sdk_url,
        thumbprint,
        user: settings.user,
        password: settings.password,
        vcenter,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}
