//! Conformance targets: a running vSphere endpoint and its known deviations from real
//! vSphere. `vcsim()` builds (once, under a file lock) and starts govmomi's simulator;
//! the lab's vCenter will add its own constructor here.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use url::Url;
use vadp_agent::vsphere::{Credentials, SoapClient, SoapConfig, Thumbprint, TlsVerification};

/// Where vcsim behaves differently from real vSphere (VSPHERE.md; the lab follows real
/// vSphere, so for it every flag is false / the real behaviour).
#[derive(Clone, Copy, Debug)]
pub struct Quirks {
    /// Setting an existing ExtraConfig key again appends a duplicate entry instead of
    /// overwriting it (real vSphere overwrites).
    pub duplicate_extra_config_keys: bool,
    /// Removing a key with an empty value is not honoured (real vSphere removes it).
    pub keeps_removed_extra_config_keys: bool,
    /// Tasks are finished before the `*_Task` call returns (real vSphere: queued/running).
    pub tasks_finish_synchronously: bool,
    /// QueryChangedDiskAreas is implemented.
    pub has_query_changed_disk_areas: bool,
    /// Datastore HTTP accepts requests without a live session (real vSphere: 401): a
    /// download with an ended session then needs no new one.
    pub datastore_http_without_session: bool,
}

/// One endpoint to run the suite against.
#[derive(Clone, Debug)]
pub struct Target {
    /// `vcsim` or `lab`.
    pub name: &'static str,
    /// The SDK URL, without credentials.
    pub sdk_url: Url,
    /// Valid credentials.
    pub user: String,
    /// Their password.
    pub password: String,
    /// The server certificate's SHA-1 thumbprint.
    pub thumbprint: Thumbprint,
    /// Known deviations.
    pub quirks: Quirks,
    /// The lab's root directory (the lab only), for its test knobs.
    pub lab_root: Option<std::path::PathBuf>,
}

impl Target {
    /// A client configuration pinned to the target's certificate, with credentials.
    pub fn config(&self) -> SoapConfig {
        let mut config = SoapConfig::new(self.sdk_url.clone());
        config.tls = TlsVerification::Thumbprint(self.thumbprint.clone());
        config.credentials = Some(Credentials::new(&self.user, &self.password));
        config
    }

    /// A logged-in client.
    pub async fn client(&self) -> SoapClient {
        SoapClient::connect(self.config())
            .await
            .expect("connect and log in to the target")
    }
}

struct Vcsim {
    _child: Child,
    target: Target,
}

/// govmomi's vcsim (one process per test binary; it exits when our stdin pipe closes,
/// i.e. when the test process ends).
pub fn vcsim() -> Target {
    static VCSIM: OnceLock<Vcsim> = OnceLock::new();
    VCSIM.get_or_init(start_vcsim).target.clone()
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build_vcsim() -> PathBuf {
    let root = workspace_root();
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target_dir.join("vcsim");
    std::fs::create_dir_all(&dir).expect("create target/vcsim");
    let binary = dir.join("vcsim-lab");
    let source = root.join("tests/vcsim/main.go");
    let lock = std::fs::File::create(dir.join(".build-lock")).expect("create the build lock file");
    lock.lock().expect("lock the vcsim build");
    let stale = match (std::fs::metadata(&binary), std::fs::metadata(&source)) {
        (Ok(b), Ok(s)) => b.modified().ok() < s.modified().ok(),
        _ => true,
    };
    if stale {
        let output = Command::new(root.join("tests/vcsim/build.sh"))
            .arg(&binary)
            .output()
            .expect("run tests/vcsim/build.sh");
        assert!(
            output.status.success(),
            "building vcsim failed — the conformance suite needs Debian's golang-go and \
             golang-github-vmware-govmomi-dev (`.ci/run` installs them):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    binary
}

fn start_vcsim() -> Vcsim {
    let binary = build_vcsim();
    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vcsim");
    let stdout = child.stdout.take().expect("vcsim stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let url_line = lines
        .next()
        .expect("vcsim prints its url")
        .expect("read vcsim url");
    let thumb_line = lines
        .next()
        .expect("vcsim prints its thumbprint")
        .expect("read thumbprint");
    let mut url: Url = url_line.trim().parse().expect("vcsim url parses");
    let user = url.username().to_owned();
    let password = url.password().unwrap_or_default().to_owned();
    url.set_username("").expect("clear user");
    url.set_password(None).expect("clear password");
    let target = Target {
        name: "vcsim",
        sdk_url: url,
        user,
        password,
        thumbprint: thumb_line.trim().parse().expect("vcsim thumbprint parses"),
        quirks: Quirks {
            duplicate_extra_config_keys: true,
            keeps_removed_extra_config_keys: true,
            tasks_finish_synchronously: true,
            has_query_changed_disk_areas: false,
            datastore_http_without_session: true,
        },
        lab_root: None,
    };
    Vcsim {
        _child: child,
        target,
    }
}

/// The lab's own vCenter, in process (one per test binary, on a lab root under
/// `CARGO_TARGET_TMPDIR`). It follows real vSphere: no quirks.
pub fn lab() -> Target {
    static LAB: OnceLock<Target> = OnceLock::new();
    LAB.get_or_init(start_lab).clone()
}

fn start_lab() -> Target {
    let dir = tempfile::Builder::new()
        .prefix("lab-vcenter-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a lab root")
        .keep();
    let lab = lab::vcenter::open_or_create(&dir).expect("create the lab");
    let lab_root = Some(dir.clone());
    let running = lab::vcenter::spawn(lab, &lab::vcenter::ServeOptions::default())
        .expect("start the lab vcenter");
    Target {
        name: "lab",
        sdk_url: running.sdk_url.parse().expect("sdk url parses"),
        user: running.user,
        password: running.password,
        thumbprint: running
            .thumbprint
            .expect("https has a thumbprint")
            .parse()
            .expect("thumbprint parses"),
        quirks: Quirks {
            duplicate_extra_config_keys: false,
            keeps_removed_extra_config_keys: false,
            tasks_finish_synchronously: false,
            has_query_changed_disk_areas: true,
            datastore_http_without_session: false,
        },
        lab_root,
    }
}
