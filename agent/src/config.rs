//! The daemon's configuration: `/etc/vadp-agent/agent.toml` (or `--config PATH`), then
//! `VADP_AGENT_<SECTION>__<KEY>` environment variables (e.g. `VADP_AGENT_API__LISTEN`),
//! read with the `config` crate and validated at start with messages naming the key.
//!
//! The vCenter password is not in this file: `vcenter.password_file` names a separate file
//! that must be readable by its owner only (mode 0600 or 0400); the API token file
//! (`api.token_file`) must be mode 0600. Neither secret is ever formatted: both are held in
//! [`crate::vddk::Secret`]-like wrappers whose `Debug` prints `***`.

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{Limits, VmSelector};
use crate::repo::RetentionPolicy;

/// Where the configuration file is by default.
pub const DEFAULT_PATH: &str = "/etc/vadp-agent/agent.toml";

/// Errors reading or validating the configuration; each names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or does not match the schema.
    #[error("configuration {path}: {message}")]
    Load {
        /// The configuration file.
        path: PathBuf,
        /// The `config` crate's message (it names the key).
        message: String,
    },
    /// A value is invalid.
    #[error("configuration key {key}: {message}")]
    Invalid {
        /// The key, e.g. `api.listen`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A secret file is missing, unreadable or readable by others.
    #[error("{key} {path}: {message}")]
    SecretFile {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `[vcenter]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcenterConfig {
    /// The SDK URL, e.g. `https://vc.example.com/sdk`.
    pub url: String,
    /// The user.
    pub user: String,
    /// SHA-1 thumbprint of vCenter's certificate (`AA:BB:…`).
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// A CA certificate (PEM) to trust besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The VMs' datacenter (default: the only one).
    #[serde(default)]
    pub datacenter: Option<String>,
    /// File holding the password (first line); owner-only permissions.
    pub password_file: PathBuf,
}

/// `[vddk]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VddkConfig {
    /// VDDK distribution directory (holding `lib64/libvixDiskLib.so.*`).
    pub libdir: PathBuf,
    /// VDDK configuration file for InitEx.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Transport modes, colon-separated.
    #[serde(default = "default_transports")]
    pub transports: String,
}

fn default_transports() -> String {
    "nbdssl".into()
}

/// `[repository]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// The repository directory (created with `vadp-agent repo init`).
    pub path: PathBuf,
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address to listen on (`127.0.0.1:8443`); empty for none.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A unix socket to listen on as well.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The bearer token file (mode 0600).
    pub token_file: PathBuf,
    /// Accept a `listen` address other hosts can reach although the API speaks plain HTTP
    /// (default `false`: give `tls_cert` and `tls_key`, or put a TLS proxy in front).
    #[serde(default)]
    pub allow_plaintext_remote: bool,
    /// PEM certificate chain (the server's certificate first): with `tls_key`, the TCP
    /// listener speaks HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (owner-only permissions).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:8443".into()
}

/// `[supervisor]`: where restores, and backups keeping a VM Service VM's
/// VirtualMachineGroup and VirtualMachineServices, find the Supervisor's Kubernetes API
/// (optional; by default vCenter's address with the vCenter SSO session as bearer token,
/// which is how the lab serves it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// The API address (`https://supervisor.example.com:6443`).
    #[serde(default)]
    pub url: Option<String>,
    /// SHA-1 thumbprint of its certificate.
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// A file holding the bearer token (owner-only permissions).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Whether backups read and keep each VM Service VM's VirtualMachineGroup and
    /// VirtualMachineServices (seed 001 §10.3–§10.4).
    #[serde(default = "default_keep_related")]
    pub keep_related: bool,
}

fn default_keep_related() -> bool {
    true
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            url: None,
            thumbprint: None,
            token_file: None,
            keep_related: default_keep_related(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Jobs running at once.
    #[serde(default = "default_concurrent_jobs")]
    pub concurrent_jobs: usize,
    /// Disks read at once in one job.
    #[serde(default = "default_disks_per_job")]
    pub disks_per_job: usize,
    /// Disks read at once on one ESXi host.
    #[serde(default = "default_disks_per_host")]
    pub disks_per_host: usize,
    /// Disks read at once from one datastore.
    #[serde(default = "default_disks_per_datastore")]
    pub disks_per_datastore: usize,
}

fn default_concurrent_jobs() -> usize {
    2
}
fn default_disks_per_job() -> usize {
    Limits::default().disks_per_job
}
fn default_disks_per_host() -> usize {
    Limits::default().disks_per_host
}
fn default_disks_per_datastore() -> usize {
    Limits::default().disks_per_datastore
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            concurrent_jobs: default_concurrent_jobs(),
            disks_per_job: default_disks_per_job(),
            disks_per_host: default_disks_per_host(),
            disks_per_datastore: default_disks_per_datastore(),
        }
    }
}

impl LimitsConfig {
    /// The engine's per-job limits.
    #[must_use]
    pub fn engine(&self) -> Limits {
        Limits {
            disks_per_job: self.disks_per_job,
            disks_per_host: self.disks_per_host,
            disks_per_datastore: self.disks_per_datastore,
        }
    }
}

/// `[maintenance]`: repository upkeep the daemon and `schedule run-due` do on their own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Collect garbage after restore points were removed (retention, `DELETE
    /// /v1/points/{id}`, `repo prune`), once no job is running (default true).
    #[serde(default = "default_true")]
    pub auto_gc: bool,
    /// Local time `HH:MM` of a daily verify of the repository; absent: none.
    #[serde(default)]
    pub verify_daily_at: Option<String>,
    /// Each daily verify re-reads one of this many subsets of the chunks in turn (`repo
    /// verify --subset N/T`), so every chunk is read once per this many days (default 7;
    /// 1: every chunk every day).
    #[serde(default = "default_verify_subsets")]
    pub verify_subsets: u32,
    /// The daily verify quarantines and records what it finds damaged, so that the next
    /// backups heal it (`repo verify --repair`; default true).
    #[serde(default = "default_true")]
    pub verify_repair: bool,
    /// Days a job that ended stays in the daemon's job list (`GET /v1/jobs`), with its
    /// events and idempotency key; older ones are forgotten (default 30, at least 1).
    #[serde(default = "default_job_history_days")]
    pub job_history_days: u32,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            auto_gc: true,
            verify_daily_at: None,
            verify_subsets: default_verify_subsets(),
            verify_repair: true,
            job_history_days: default_job_history_days(),
        }
    }
}

fn default_job_history_days() -> u32 {
    30
}

impl MaintenanceConfig {
    /// How long a job that ended is kept (`job_history_days`, at least a day).
    #[must_use]
    pub fn job_history(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.job_history_days.max(1)) * 86_400)
    }
}

fn default_true() -> bool {
    true
}

fn default_verify_subsets() -> u32 {
    7
}

impl MaintenanceConfig {
    /// The daily verify's schedule (no blackout windows, no initial run), if configured.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `maintenance.verify_daily_at`.
    pub fn verify_schedule(&self) -> Result<Option<crate::daemon::Schedule>, ConfigError> {
        self.verify_daily_at
            .as_deref()
            .map(|at| {
                Ok(crate::daemon::Schedule {
                    daily_at: crate::daemon::parse_hhmm(at)
                        .map_err(|e| invalid("maintenance.verify_daily_at", e))?,
                    blackout: Vec::new(),
                    initial_run: false,
                })
            })
            .transpose()
    }
}

/// `[policy.<name>.retention]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the N newest.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep one per day for N days.
    #[serde(default)]
    pub keep_daily: u32,
    /// Keep one per ISO week for N weeks.
    #[serde(default)]
    pub keep_weekly: u32,
    /// Keep one per month for N months.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Never remove a point younger than this (at least 3).
    #[serde(default = "default_min_age_days")]
    pub min_age_days: u32,
}

fn default_min_age_days() -> u32 {
    3
}

impl RetentionConfig {
    /// As the repository's retention policy.
    #[must_use]
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            min_age_secs: i64::from(self.min_age_days) * 86_400,
        }
    }
}

/// `[policy.<name>]`: a scheduled backup of a group of VMs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// VMs (`NAMESPACE/NAME` or morefs), snapshotted together.
    pub vms: Vec<String>,
    /// VMs to quiesce (as in `vms`).
    #[serde(default)]
    pub quiesce: Vec<String>,
    /// The VMs stand alone: one that cannot be backed up fails alone and the others are
    /// backed up (default false: they are a consistency group, and the run fails whole).
    #[serde(default)]
    pub independent: bool,
    /// Local time of the daily run, `HH:MM`.
    pub daily_at: String,
    /// Windows in which no run starts, `HH:MM-HH:MM` local time (may cross midnight).
    #[serde(default)]
    pub blackout: Vec<String>,
    /// Run once as soon as the policy is first seen (an initial on-demand backup).
    #[serde(default = "default_initial_run")]
    pub initial_run: bool,
    /// Queue priority of its jobs.
    #[serde(default)]
    pub priority: i32,
    /// Retention applied to its VMs after each successful run.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    /// Minutes after a failed run (a VMware Tools hiccup failing a quiesced snapshot, a
    /// vCenter restart) when the daemon runs it again, once; 0: never (the policy waits
    /// for its next daily run).
    #[serde(default = "default_retry_failed_after_minutes")]
    pub retry_failed_after_minutes: u32,
}

fn default_initial_run() -> bool {
    true
}

fn default_retry_failed_after_minutes() -> u32 {
    30
}

impl PolicyConfig {
    /// How long after a failed run it is run again, once (`None`: never).
    #[must_use]
    pub fn retry_failed_after(&self) -> Option<std::time::Duration> {
        (self.retry_failed_after_minutes > 0).then(|| {
            std::time::Duration::from_secs(u64::from(self.retry_failed_after_minutes) * 60)
        })
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// vCenter.
    pub vcenter: VcenterConfig,
    /// VDDK.
    pub vddk: VddkConfig,
    /// Repository.
    pub repository: RepositoryConfig,
    /// HTTP API.
    pub api: ApiConfig,
    /// The Supervisor, for restores and the VM Service VMs' group and services.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// Concurrency.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Repository upkeep.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// Scheduling policies by name.
    #[serde(default)]
    pub policy: std::collections::BTreeMap<String, PolicyConfig>,
}

/// A secret read from a file; `Debug` and `Display` never show it, and its memory is
/// zeroed when it is dropped.
#[derive(Clone)]
pub struct SecretText(String);

impl SecretText {
    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Reads the first line of a secret file, refusing one that others can read (any group or
/// world permission bit).
///
/// # Errors
/// [`ConfigError::SecretFile`].
pub fn read_secret_file(key: &'static str, path: &Path) -> Result<SecretText, ConfigError> {
    let err = |message: String| ConfigError::SecretFile {
        key,
        path: path.to_path_buf(),
        message,
    };
    check_owner_only(key, path)?;
    let mut text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let first = text.lines().next().unwrap_or_default().trim().to_owned();
    zeroize::Zeroize::zeroize(&mut text);
    if first.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(SecretText(first))
}

/// Refuses a secret file that others can read (any group or world permission bit), or
/// that another user owns (who could read or replace it), as ssh does for its keys.
///
/// # Errors
/// [`ConfigError::SecretFile`].
pub fn check_owner_only(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    check_owner_only_in(key, path, credentials.as_deref())
}

/// [`check_owner_only`], with systemd's credentials directory (`$CREDENTIALS_DIRECTORY`)
/// when there is one: a file in it is systemd's, readable by this service alone (root's,
/// mode 0400, with an ACL entry for the service's user, which shows as group bits), and is
/// taken as it is.
fn check_owner_only_in(
    key: &'static str,
    path: &Path,
    credentials: Option<&Path>,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let err = |message: String| ConfigError::SecretFile {
        key,
        path: path.to_path_buf(),
        message,
    };
    if let Some(dir) = credentials
        && let (Ok(dir), Ok(file)) = (dir.canonicalize(), path.canonicalize())
        && file.parent() == Some(dir.as_path())
    {
        return Ok(());
    }
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {mode:04o} lets others read it; chmod 0600 (owner only)"
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(err(format!(
            "it belongs to user {}, not to this user ({me}) or root: its owner could read or \
             replace it; chown it",
            meta.uid()
        )));
    }
    Ok(())
}

/// Refuses a URL carrying a user name or password: it would be printed wherever the URL
/// is (errors, logs, job records, `ps` for a command-line flag).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `key`, without the credentials.
pub fn refuse_credentials_in_url(key: &str, url: &url::Url) -> Result<(), ConfigError> {
    if url.username().is_empty() && url.password().is_none() {
        return Ok(());
    }
    Err(invalid(
        key,
        format!(
            "carries credentials (https://USER:PASSWORD@{}/…): remove them; the password goes in its own file",
            url.host_str().unwrap_or_default()
        ),
    ))
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl AgentConfig {
    /// Reads `path` and the `VADP_AGENT_<SECTION>__<KEY>` environment, then validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`AgentConfig::load`] with the given environment (tests).
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load_with_env(
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let load = |message: String| ConfigError::Load {
            path: path.to_path_buf(),
            message,
        };
        // Only nested keys (`SECTION__KEY`): the CLI's own `VADP_AGENT_*` variables
        // (VADP_AGENT_PASSWORD, VADP_AGENT_VCENTER, …) are not configuration keys.
        let vars: config::Map<String, String> = env
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix("VADP_AGENT_")?;
                rest.contains("__").then(|| (k.clone(), v))
            })
            .collect();
        let settings = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("VADP_AGENT")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(vars)),
            )
            .build()
            .map_err(|e| load(e.to_string()))?;
        let cfg: Self = settings
            .try_deserialize()
            .map_err(|e| load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value that serde cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.vcenter.url).map_err(|e| {
            invalid(
                "vcenter.url",
                format!("{:?}: {e}", without_userinfo(&self.vcenter.url)),
            )
        })?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(invalid(
                "vcenter.url",
                "must be https://HOST/sdk (plain http is refused)",
            ));
        }
        refuse_credentials_in_url("vcenter.url", &url)?;
        if let Some(u) = &self.supervisor.url {
            let parsed = url::Url::parse(u).map_err(|e| {
                invalid("supervisor.url", format!("{:?}: {e}", without_userinfo(u)))
            })?;
            if parsed.scheme() != "https" || parsed.host_str().is_none() {
                return Err(invalid("supervisor.url", "must be https://HOST[:PORT]"));
            }
            refuse_credentials_in_url("supervisor.url", &parsed)?;
        }
        if let Some(tp) = &self.supervisor.thumbprint
            && tp.parse::<crate::vsphere::Thumbprint>().is_err()
        {
            return Err(invalid(
                "supervisor.thumbprint",
                "expected a SHA-1 (20) or SHA-256 (32) digest, hex bytes separated by colons (AA:BB:…)",
            ));
        }
        if self.vcenter.user.trim().is_empty() {
            return Err(invalid("vcenter.user", "is empty"));
        }
        if let Some(tp) = &self.vcenter.thumbprint {
            // Handed to VDDK too, which knows SHA-1 only.
            crate::vsphere::Thumbprint::for_vddk(tp)
                .map_err(|e| invalid("vcenter.thumbprint", e))?;
        }
        crate::vddk::TransportMode::parse_list(&self.vddk.transports)
            .map_err(|e| invalid("vddk.transports", e))?;
        if !self.repository.path.is_absolute() {
            return Err(invalid("repository.path", "must be an absolute path"));
        }
        if !self.api.listen.is_empty() {
            let addr = self
                .api
                .listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("api.listen", format!("{:?}: {e}", self.api.listen)))?;
            let tls = match (&self.api.tls_cert, &self.api.tls_key) {
                (Some(_), Some(_)) => true,
                (None, None) => false,
                (Some(_), None) => {
                    return Err(invalid("api.tls_key", "api.tls_cert is given without it"));
                }
                (None, Some(_)) => {
                    return Err(invalid("api.tls_cert", "api.tls_key is given without it"));
                }
            };
            if !addr.ip().is_loopback() && !tls && !self.api.allow_plaintext_remote {
                return Err(invalid(
                    "api.listen",
                    format!(
                        "{addr} is reachable from other hosts, but the API speaks plain HTTP: \
                         its bearer token would cross the network in the clear. Give \
                         api.tls_cert and api.tls_key, listen on 127.0.0.1 behind a TLS \
                         proxy, or set api.allow_plaintext_remote = true"
                    ),
                ));
            }
        } else if self.api.socket.is_none() {
            return Err(invalid(
                "api.listen",
                "empty and no api.socket: the daemon would not listen at all",
            ));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.concurrent_jobs", l.concurrent_jobs),
            ("limits.disks_per_job", l.disks_per_job),
            ("limits.disks_per_host", l.disks_per_host),
            ("limits.disks_per_datastore", l.disks_per_datastore),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        self.maintenance.verify_schedule()?;
        crate::repo::VerifySubset::new(1, self.maintenance.verify_subsets)
            .map_err(|e| invalid("maintenance.verify_subsets", e))?;
        for (name, p) in &self.policy {
            p.schedule(name)?;
            p.selectors(name)?;
            if let Some(r) = &p.retention {
                r.policy()
                    .validate()
                    .map_err(|e| invalid(format!("policy.{name}.retention"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

impl PolicyConfig {
    /// The policy's VMs and which to quiesce.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `policy.<name>.vms` or `.quiesce`.
    pub fn selectors(&self, name: &str) -> Result<Vec<(VmSelector, bool)>, ConfigError> {
        if self.vms.is_empty() {
            return Err(invalid(format!("policy.{name}.vms"), "is empty"));
        }
        for q in &self.quiesce {
            if !self.vms.contains(q) {
                return Err(invalid(
                    format!("policy.{name}.quiesce"),
                    format!("{q:?} is not in vms"),
                ));
            }
        }
        self.vms
            .iter()
            .map(|v| {
                v.parse::<VmSelector>()
                    .map(|s| (s, self.quiesce.contains(v)))
                    .map_err(|e| invalid(format!("policy.{name}.vms"), e))
            })
            .collect()
    }

    /// The schedule part.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `policy.<name>.daily_at` or `.blackout`.
    pub fn schedule(&self, name: &str) -> Result<crate::daemon::Schedule, ConfigError> {
        let daily_at = crate::daemon::parse_hhmm(&self.daily_at)
            .map_err(|e| invalid(format!("policy.{name}.daily_at"), e))?;
        let blackout = self
            .blackout
            .iter()
            .map(|b| crate::daemon::Blackout::parse(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("policy.{name}.blackout"), e))?;
        Ok(crate::daemon::Schedule {
            daily_at,
            blackout,
            initial_run: self.initial_run,
        })
    }
}

/// `url` as text for an error message, without a user and password it may carry: a URL
/// that does not parse can still hold them, and its password can contain `/`, `?`, `#` or
/// `:`, so everything up to the last `@` is replaced by `***@` (and the scheme kept when
/// there is one).
fn without_userinfo(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    match url.split_once("://") {
        Some((scheme, _)) if scheme.len() < at => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => format!("***@{}", &url[at + 1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[vcenter]
url = "https://vc.example.com/sdk"
user = "backup@vsphere.local"
password_file = "/etc/vadp-agent/credentials"

[vddk]
libdir = "/opt/vmware-vix-disklib-distrib"

[repository]
path = "/var/lib/vadp-agent/repo"

[api]
token_file = "/etc/vadp-agent/token"

[policy.vcf-ops]
vms = ["ops/ops-1", "ops/ops-2"]
daily_at = "23:00"
blackout = ["01:45-02:30"]
retention = { keep_daily = 7 }
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        AgentConfig::load_with_env(
            &p,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn loads_with_defaults_and_env_overrides() {
        let c = load(
            GOOD,
            &[
                ("VADP_AGENT_LIMITS__CONCURRENT_JOBS", "4"),
                ("VADP_AGENT_API__LISTEN", "127.0.0.1:9000"),
                ("VADP_AGENT_PASSWORD", "not-a-key"),
                ("VADP_AGENT_VCENTER", "https://other/sdk"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.concurrent_jobs, 4);
        assert_eq!(c.api.listen, "127.0.0.1:9000");
        assert_eq!(c.vcenter.url, "https://vc.example.com/sdk");
        assert_eq!(c.policy["vcf-ops"].retention.unwrap().min_age_days, 3);
        assert!(c.policy["vcf-ops"].initial_run);
        assert!(c.maintenance.auto_gc);
        // Backups keep the VM Service VMs' group and services unless told not to, with or
        // without a [supervisor] section.
        assert!(c.supervisor.keep_related);
        let c = load(
            &format!("{GOOD}\n[supervisor]\nkeep_related = false\n"),
            &[],
        )
        .unwrap();
        assert!(!c.supervisor.keep_related);
        let c = load(
            &format!("{GOOD}\n[supervisor]\nurl = \"https://sv.example.com:6443\"\n"),
            &[],
        )
        .unwrap();
        assert!(c.supervisor.keep_related);
        let c = load(GOOD, &[("VADP_AGENT_MAINTENANCE__AUTO_GC", "false")]).unwrap();
        assert!(!c.maintenance.auto_gc);
        let c = load(
            &format!("{GOOD}\n[maintenance]\nverify_daily_at = \"04:30\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.maintenance.verify_subsets, 7);
        assert!(c.maintenance.verify_repair);
        assert!(c.maintenance.verify_schedule().unwrap().is_some());
        for (bad, key) in [
            ("verify_daily_at = \"4h\"", "maintenance.verify_daily_at"),
            ("verify_subsets = 0", "maintenance.verify_subsets"),
        ] {
            let e = load(&format!("{GOOD}\n[maintenance]\n{bad}\n"), &[]).unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
        let e = load(
            &format!("{GOOD}\n[maintenance]\nauto_gc = \"sometimes\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("auto_gc"), "{e}");
    }

    #[test]
    fn the_packaged_configuration_loads() {
        let c = load(include_str!("../../packaging/agent.toml"), &[]).unwrap();
        assert!(c.maintenance.auto_gc);
        assert!(
            c.policy.is_empty(),
            "the example policy stays commented out"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(&GOOD.replace("https://vc", "http://vc"), &[]).unwrap_err();
        assert!(e.to_string().contains("vcenter.url"), "{e}");
        let e = load(&GOOD.replace("23:00", "25:00"), &[]).unwrap_err();
        assert!(e.to_string().contains("policy.vcf-ops.daily_at"), "{e}");
        let e = load(&GOOD.replace("01:45-02:30", "01:45"), &[]).unwrap_err();
        assert!(e.to_string().contains("policy.vcf-ops.blackout"), "{e}");
        let e = load(
            &GOOD.replace("keep_daily = 7", "keep_daily = 7, min_age_days = 1"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("policy.vcf-ops.retention"), "{e}");
        let e = load(GOOD, &[("VADP_AGENT_LIMITS__CONCURRENT_JOBS", "0")]).unwrap_err();
        assert!(e.to_string().contains("limits.concurrent_jobs"), "{e}");
        let e = load(&GOOD.replace("[api]", "[api]\nlisten_addr = \"x\""), &[]).unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    /// Credentials in a URL would be printed wherever the URL is; a token served over plain
    /// HTTP to other hosts crosses the network in the clear.
    #[test]
    fn urls_with_credentials_and_plaintext_remote_listeners_are_refused() {
        let e = load(
            &GOOD.replace("https://vc", "https://backup:hunter2@vc"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("vcenter.url"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = load(
            GOOD,
            &[(
                "VADP_AGENT_SUPERVISOR__URL",
                "https://u:pw@sup.example.com:6443",
            )],
        )
        .unwrap_err();
        assert!(e.to_string().contains("supervisor.url"), "{e}");
        assert!(!e.to_string().contains("pw@"), "{e}");
        // A URL that does not parse (a bad port) is quoted without its password.
        for (url, env) in [
            (
                "https://backup:hunter2@vc:84x/sdk",
                "VADP_AGENT_VCENTER__URL",
            ),
            ("https://u:hunter2@sup:6x443", "VADP_AGENT_SUPERVISOR__URL"),
            // A password holding `#`, `/` or `?` ends the host part early for a parser.
            ("https://backup:hunter2#x@vc/sdk", "VADP_AGENT_VCENTER__URL"),
            ("https://backup:hunter2/x@vc/sdk", "VADP_AGENT_VCENTER__URL"),
            ("https://backup:hunter2?@vc/sdk", "VADP_AGENT_VCENTER__URL"),
            // No `://` at all.
            ("https:/u:hunter2@bad host/sdk", "VADP_AGENT_VCENTER__URL"),
        ] {
            let e = load(GOOD, &[(env, url)]).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(e.to_string().contains("***@"), "{e}");
        }
        for addr in ["0.0.0.0:8443", "192.0.2.10:8443", "[::]:8443"] {
            let e = load(GOOD, &[("VADP_AGENT_API__LISTEN", addr)]).unwrap_err();
            assert!(e.to_string().contains("api.allow_plaintext_remote"), "{e}");
            let c = load(
                GOOD,
                &[
                    ("VADP_AGENT_API__LISTEN", addr),
                    ("VADP_AGENT_API__ALLOW_PLAINTEXT_REMOTE", "true"),
                ],
            )
            .unwrap();
            assert!(c.api.allow_plaintext_remote);
            // Over HTTPS, any address; a certificate without its key (or the other way
            // round) is refused.
            let tls = [
                ("VADP_AGENT_API__LISTEN", addr),
                ("VADP_AGENT_API__TLS_CERT", "/etc/vadp-agent/api.crt"),
                ("VADP_AGENT_API__TLS_KEY", "/etc/vadp-agent/api.key"),
            ];
            load(GOOD, &tls).unwrap();
            let e = load(GOOD, &tls[..2]).unwrap_err();
            assert!(e.to_string().contains("api.tls_key"), "{e}");
            let e = load(GOOD, &[tls[0], tls[2]]).unwrap_err();
            assert!(e.to_string().contains("api.tls_cert"), "{e}");
        }
        for addr in ["127.0.0.1:8443", "[::1]:8443"] {
            load(GOOD, &[("VADP_AGENT_API__LISTEN", addr)]).unwrap();
        }
    }

    #[test]
    fn secret_files_must_be_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret-token\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret_file("api.token_file", &p).unwrap_err();
        assert!(e.to_string().contains("0644"), "{e}");
        assert!(!e.to_string().contains("s3cret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = read_secret_file("api.token_file", &p).unwrap();
        assert_eq!(s.expose(), "s3cret-token");
        assert_eq!(format!("{s:?}"), "***");
        // Owned by another user (only root can make one here): refused, naming the owner.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(65_534), None).unwrap();
            let e = read_secret_file("api.token_file", &p).unwrap_err();
            assert!(e.to_string().contains("belongs to user 65534"), "{e}");
        }
        // In systemd's credentials directory the file is systemd's (0440 as an ACL shows
        // it): taken as it is; the same file elsewhere is not.
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let c = creds.join("token");
        std::fs::write(&c, "t\n").unwrap();
        std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o440)).unwrap();
        check_owner_only_in("api.token_file", &c, Some(&creds)).unwrap();
        assert!(check_owner_only_in("api.token_file", &c, None).is_err());
        assert!(check_owner_only_in("api.token_file", &c, Some(dir.path())).is_err());
    }
}
