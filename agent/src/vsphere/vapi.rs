//! The vAPI REST client (VSPHERE.md §B): session (`POST /api/session`, header
//! `vmware-api-session-id`), cis tasks (`GET /api/cis/tasks/{id}`) and the namespaces
//! `registervm` call used by restores.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;
use url::Url;

use super::soap::{Credentials, RefusedLogin, http_client_for};
use super::tls::TlsVerification;
use super::types::VmMoref;

/// The session header of `/api`.
const SESSION_HEADER: &str = "vmware-api-session-id";
/// Poll interval of cis tasks (govmomi polls every 10 s; registervm milestones are
/// seconds apart).
const CIS_POLL: Duration = Duration::from_secs(1);
/// How long task polling goes on through consecutive retryable errors (as the SOAP
/// client's task polling does).
const POLL_OUTAGE: Duration = Duration::from_secs(120);

/// A vAPI session on one vCenter.
#[derive(Debug)]
pub struct VapiClient {
    http: reqwest::Client,
    base: Url,
    credentials: Credentials,
    session: RwLock<Option<ApiToken>>,
    /// Held while logging in again, so that callers finding the session ended together make
    /// one new session, not one each (vCenter limits sessions per user); keeps the last
    /// login refused for the credentials, given to the callers that found the same session
    /// ended instead of trying again (see [`RefusedLogin`]).
    relogin: tokio::sync::Mutex<Option<Refused>>,
}

/// A login refused for the credentials (401 or 403 to `POST /api/session`): its status,
/// error type and message.
type Refused = RefusedLogin<ApiToken, (u16, String, String)>;

#[derive(Clone, PartialEq, Eq)]
struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl Drop for ApiToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl VapiClient {
    /// A client for `base` (`https://vc.example/`) with the same TLS rules as the SOAP
    /// client. Does not log in yet.
    ///
    /// # Errors
    ///
    /// [`VapiError::Config`] for a bad URL scheme or TLS setup.
    pub fn new(
        base: Url,
        tls: &TlsVerification,
        allow_plain_http: bool,
        credentials: Credentials,
    ) -> Result<Self, VapiError> {
        let http = http_client_for(&base, tls, allow_plain_http, Duration::from_secs(120))
            .map_err(|e| VapiError::Config {
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            base,
            credentials,
            session: RwLock::new(None),
            relogin: tokio::sync::Mutex::new(None),
        })
    }

    /// `POST /api/session` with basic auth; keeps the token.
    ///
    /// # Errors
    ///
    /// [`VapiError::Api`] with `UNAUTHENTICATED` for bad credentials.
    pub async fn login(&self) -> Result<(), VapiError> {
        let url = self.url("api/session")?;
        let response = self
            .http
            .post(url)
            .basic_auth(
                &self.credentials.username,
                Some(self.credentials.password()),
            )
            .send()
            .await
            .map_err(|source| VapiError::Transport {
                op: "login",
                source,
            })?;
        let token: String = read_json("login", response).await?;
        if let Ok(mut guard) = self.session.write() {
            *guard = Some(ApiToken(token));
        }
        Ok(())
    }

    /// Whether a session is open (a login succeeded and no logout followed).
    #[must_use]
    pub fn has_session(&self) -> bool {
        self.token().is_some()
    }

    /// `DELETE /api/session`.
    ///
    /// # Errors
    ///
    /// Transport or API errors.
    pub async fn logout(&self) -> Result<(), VapiError> {
        // After a login in progress, not before: the session it makes is the one to end
        // (else it would be stored after this and stay open on vCenter).
        let _no_login = self.relogin.lock().await;
        let token = self.token();
        let result = self
            .call_raw(
                "logout",
                Method::DELETE,
                "api/session",
                None,
                token.as_ref(),
            )
            .await
            .map(|_| ());
        if let Ok(mut guard) = self.session.write() {
            *guard = None;
        }
        result
    }

    /// `POST /api/vcenter/namespaces/instances/{namespace}/registervm` `{"vm": …}`;
    /// returns the cis task id. Not idempotent: do not blindly retry (§B).
    ///
    /// # Errors
    ///
    /// [`VapiError::Api`] (`NOT_FOUND`, `ALREADY_EXISTS`, `INVALID_ARGUMENT`, …).
    pub async fn register_vm(&self, namespace: &str, vm: &VmMoref) -> Result<String, VapiError> {
        self.register_vm_with(namespace, vm, &[]).await
    }

    /// `registervm` with a network override (VCF 9+, NSX-VPC; seed 001 §9.3): each
    /// mapping replaces a subnet (or, with an empty current name, the default SubnetSet).
    ///
    /// # Errors
    ///
    /// As [`VapiClient::register_vm`]; `UNSUPPORTED` where overrides are not allowed.
    pub async fn register_vm_with(
        &self,
        namespace: &str,
        vm: &VmMoref,
        subnet_mappings: &[SubnetMapping],
    ) -> Result<String, VapiError> {
        let path = format!(
            "api/vcenter/namespaces/instances/{}/registervm",
            encode_segment(namespace)
        );
        let mut body = serde_json::json!({ "vm": vm.as_str() });
        if !subnet_mappings.is_empty() {
            body["network_config_override"] =
                serde_json::json!({ "subnet_mappings": subnet_mappings });
        }
        let response = self
            .call("registervm", Method::POST, &path, Some(body))
            .await?;
        read_json("registervm", response).await
    }

    /// `GET /api/cis/tasks/{task}`.
    ///
    /// # Errors
    ///
    /// [`VapiError::Api`] (`NOT_FOUND` for an unknown task).
    pub async fn task(&self, task: &str) -> Result<CisTaskInfo, VapiError> {
        let path = format!("api/cis/tasks/{}", encode_segment(task));
        let response = self.call("get task", Method::GET, &path, None).await?;
        read_json("get task", response).await
    }

    /// The cis tasks whose target is `vm` (`GET /api/cis/tasks?targets=VirtualMachine:vm`),
    /// by id: how the agent finds a registration WCP started by itself.
    ///
    /// # Errors
    ///
    /// Transport or API errors.
    pub async fn tasks_of_vm(
        &self,
        vm: &VmMoref,
    ) -> Result<std::collections::BTreeMap<String, CisTaskInfo>, VapiError> {
        let path = format!(
            "api/cis/tasks?targets={}",
            encode_segment(&format!("VirtualMachine:{}", vm.as_str()))
        );
        let response = self.call("list tasks", Method::GET, &path, None).await?;
        read_json("list tasks", response).await
    }

    /// The session token, for services that accept vCenter SSO sessions as bearer
    /// tokens (the Supervisor's API in the lab). Logs in first when needed.
    ///
    /// # Errors
    ///
    /// Login errors.
    pub(crate) async fn bearer_token(&self) -> Result<String, VapiError> {
        Ok(self.session_token(None).await?.0.clone())
    }

    /// A bearer token to use instead of `refused`, which a service that accepts vCenter
    /// sessions (the Supervisor) refused: the session's token if it is another already
    /// (another caller renewed it), else vCenter is asked whether the session still stands
    /// (`GET /api/session`, logging in again when it does not: vCenter ends sessions left
    /// unused for 30 minutes). `None` when vCenter still takes `refused`: the service
    /// refused a live session, and a new one would fare no better.
    ///
    /// # Errors
    ///
    /// Login errors, and those of asking vCenter.
    pub(crate) async fn renewed_bearer_token(
        &self,
        refused: &str,
    ) -> Result<Option<String>, VapiError> {
        if let Some(current) = self.token().filter(|t| t.0 != refused) {
            return Ok(Some(current.0.clone()));
        }
        let response = self
            .call("get session", Method::GET, "api/session", None)
            .await?;
        let _: serde_json::Value = read_json("get session", response).await?;
        Ok(self.token().map(|t| t.0.clone()).filter(|t| t != refused))
    }

    /// Polls `task` until it is SUCCEEDED or FAILED (PENDING, RUNNING and BLOCKED, which
    /// is a task waiting for resources, are not final); reports progress (completed of
    /// total). Returns the final info when SUCCEEDED.
    ///
    /// # Errors
    ///
    /// [`VapiError::TaskFailed`] with the task's error, [`VapiError::TaskTimeout`].
    pub async fn wait_for_task(
        &self,
        task: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(&CisProgress) + Send,
    ) -> Result<CisTaskInfo, VapiError> {
        let started = Instant::now();
        let mut poll = Duration::from_millis(20);
        // Since when polls have failed for a passing reason (vCenter restarting, a load
        // balancer dropping requests): the task runs on meanwhile, and a restore whose
        // registration is running must not be reported unfinished for a blip.
        let mut failing_since: Option<Instant> = None;
        loop {
            let info = match self.task(task).await {
                Ok(info) => {
                    failing_since = None;
                    info
                }
                Err(e)
                    if e.is_retryable()
                        && failing_since.is_none_or(|t| t.elapsed() < POLL_OUTAGE)
                        && started.elapsed() < timeout =>
                {
                    tracing::warn!(task, error = %e, "reading the task failed; reading it again");
                    failing_since.get_or_insert_with(Instant::now);
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(CIS_POLL);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(p) = &info.progress {
                on_progress(p);
            }
            match info.status {
                CisTaskStatus::Succeeded => return Ok(info),
                CisTaskStatus::Failed => {
                    return Err(VapiError::TaskFailed {
                        task: task.to_owned(),
                        status: info.status,
                        error: info.error.unwrap_or_default(),
                    });
                }
                CisTaskStatus::Pending | CisTaskStatus::Running | CisTaskStatus::Blocked => {}
            }
            if started.elapsed() >= timeout {
                return Err(VapiError::TaskTimeout {
                    task: task.to_owned(),
                    waited_secs: started.elapsed().as_secs(),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(CIS_POLL);
        }
    }

    fn url(&self, path: &str) -> Result<Url, VapiError> {
        self.base.join(path).map_err(|e| VapiError::Config {
            reason: format!("url {path}: {e}"),
        })
    }

    fn token(&self) -> Option<ApiToken> {
        self.session.read().map(|s| s.clone()).unwrap_or(None)
    }

    /// The session's token; logs in first when there is none, or when it is still
    /// `ended` (a token vCenter refused). Callers that find the session ended together wait
    /// for one login: one that waited while another logged in finds the token changed and
    /// takes the new one.
    async fn session_token(&self, ended: Option<&ApiToken>) -> Result<ApiToken, VapiError> {
        let usable = |t: &Option<ApiToken>| t.is_some() && t.as_ref() != ended;
        let current = self.token();
        if usable(&current) {
            return Ok(current.expect("checked"));
        }
        let mut refused = self.relogin.lock().await;
        let current = self.token();
        if !usable(&current) {
            if let Some((status, error_type, message)) =
                refused.as_ref().and_then(|r| r.answer(ended))
            {
                return Err(VapiError::Api {
                    op: "login",
                    status: *status,
                    error_type: error_type.clone(),
                    message: message.clone(),
                });
            }
            if ended.is_some() {
                tracing::info!("vAPI session ended; logging in again");
            }
            match self.login().await {
                Ok(()) => *refused = None,
                Err(e) => {
                    if let VapiError::Api {
                        status: status @ (401 | 403),
                        error_type,
                        message,
                        ..
                    } = &e
                    {
                        tracing::error!(error = %e, "vAPI login refused; the callers waiting for it get the same answer for a minute");
                        *refused = Some(RefusedLogin::new(
                            ended.cloned(),
                            (*status, error_type.clone(), message.clone()),
                        ));
                    }
                    return Err(e);
                }
            }
        }
        self.token().ok_or_else(|| VapiError::Config {
            reason: "no vAPI session after login".into(),
        })
    }

    /// A call with the session header; logs in first if needed and once more on 401.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, VapiError> {
        let token = self.session_token(None).await?;
        let response = self
            .call_raw(op, method.clone(), path, body.clone(), Some(&token))
            .await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            let fresh = self.session_token(Some(&token)).await?;
            return self.call_raw(op, method, path, body, Some(&fresh)).await;
        }
        Ok(response)
    }

    async fn call_raw(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&ApiToken>,
    ) -> Result<reqwest::Response, VapiError> {
        let mut request = self.http.request(method, self.url(path)?);
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&token.0).map_err(|_| {
                VapiError::Config {
                    reason: "session token is not a header value".into(),
                }
            })?;
            value.set_sensitive(true);
            request = request.header(SESSION_HEADER, value);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        request
            .send()
            .await
            .map_err(|source| VapiError::Transport { op, source })
    }
}

fn encode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The largest vAPI response body read (task lists and registrations are kilobytes).
const MAX_BODY_BYTES: usize = 16 << 20;

/// The body of `response`, refused once it passes `max` bytes.
async fn read_at_most(
    op: &'static str,
    response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, VapiError> {
    super::soap::read_capped(response, max)
        .await
        .map_err(|e| match e {
            super::soap::Capped::Transport(source) => VapiError::Transport { op, source },
            super::soap::Capped::TooLarge => VapiError::Json {
                op,
                reason: format!("the response is larger than {max} bytes"),
            },
        })
}

async fn read_json<T: serde::de::DeserializeOwned>(
    op: &'static str,
    response: reqwest::Response,
) -> Result<T, VapiError> {
    let status = response.status();
    let bytes = read_at_most(op, response, MAX_BODY_BYTES).await?;
    if !status.is_success() {
        let error: ApiErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(VapiError::Api {
            op,
            status: status.as_u16(),
            error_type: error.error_type,
            message: error
                .messages
                .into_iter()
                .map(|m| m.default_message)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| VapiError::Json {
        op,
        reason: e.to_string(),
    })
}

#[derive(Deserialize, Default)]
struct ApiErrorBody {
    #[serde(default)]
    error_type: String,
    #[serde(default)]
    messages: Vec<ApiMessage>,
}

#[derive(Deserialize, Default)]
struct ApiMessage {
    #[serde(default)]
    default_message: String,
}

/// One subnet mapping of a registervm network override (seed 001 §9.3).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct SubnetMapping {
    /// The subnet the backup's VM uses.
    pub current_subnet: SubnetRef,
    /// The subnet to use instead.
    pub new_subnet: SubnetRef,
}

/// A subnet or subnet set by name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct SubnetRef {
    /// `SUBNET` or `SUBNETSET`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its name (empty: the namespace's default SubnetSet).
    pub name: String,
}

/// `cis.tasks.Info` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CisTaskStatus {
    /// Not started.
    Pending,
    /// Running.
    Running,
    /// Waiting on something.
    Blocked,
    /// Done.
    Succeeded,
    /// Failed.
    Failed,
}

/// `cis.tasks.Info`, the parts the agent reads.
#[derive(Clone, Debug, Deserialize)]
pub struct CisTaskInfo {
    /// Status.
    pub status: CisTaskStatus,
    /// Progress, when the service reports it.
    #[serde(default)]
    pub progress: Option<CisProgress>,
    /// The error, when failed (kept as JSON).
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    /// The operation, e.g. `registervm`.
    #[serde(default)]
    pub operation: Option<String>,
}

/// `cis.task.Progress`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CisProgress {
    /// Total work units.
    pub total: u64,
    /// Completed units.
    pub completed: u64,
    /// Message, when given.
    #[serde(default)]
    pub message: Option<serde_json::Value>,
}

/// Errors of the vAPI REST client.
#[derive(Debug, thiserror::Error)]
pub enum VapiError {
    /// Bad configuration.
    #[error("vapi configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The request did not complete.
    #[error("vapi {op}: transport failure")]
    Transport {
        /// The operation.
        op: &'static str,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A non-2xx answer.
    #[error("vapi {op}: http {status} {error_type}: {message}")]
    Api {
        /// The operation.
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// vAPI error type, e.g. `NOT_FOUND`.
        error_type: String,
        /// Default messages joined.
        message: String,
    },
    /// A 2xx answer that is not the expected JSON.
    #[error("vapi {op}: unexpected json: {reason}")]
    Json {
        /// The operation.
        op: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A cis task failed.
    #[error("cis task {task} {status:?}: {error}")]
    TaskFailed {
        /// The task id.
        task: String,
        /// Its final status.
        status: CisTaskStatus,
        /// Its error (`{"error_type", "messages": [{"id", "default_message"}]}`).
        error: serde_json::Value,
    },
    /// A cis task did not finish in time.
    #[error("cis task {task} not finished after {waited_secs} s")]
    TaskTimeout {
        /// The task id.
        task: String,
        /// How long we waited.
        waited_secs: u64,
    },
}

impl VapiError {
    /// Transport failures, 5xx, `SERVICE_UNAVAILABLE` and `RESOURCE_BUSY` are retryable
    /// (never for registervm itself, which is not idempotent — the caller decides).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            // Not a certificate that fails verification: the same answer every time.
            Self::Transport { source, .. } => super::soap::certificate_failure(source).is_none(),
            Self::Api {
                status, error_type, ..
            } => {
                *status >= 500
                    || error_type == "SERVICE_UNAVAILABLE"
                    || error_type == "RESOURCE_BUSY"
            }
            Self::Config { .. }
            | Self::Json { .. }
            | Self::TaskFailed { .. }
            | Self::TaskTimeout { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_info_json() {
        let info: CisTaskInfo = serde_json::from_str(
            r#"{"status":"RUNNING","progress":{"total":100,"completed":40,"message":{"id":"x","default_message":"restore"}},"operation":"registervm","cancelable":false}"#,
        )
        .unwrap();
        assert_eq!(info.status, CisTaskStatus::Running);
        assert_eq!(info.progress.unwrap().completed, 40);
        let done: CisTaskInfo = serde_json::from_str(r#"{"status":"SUCCEEDED"}"#).unwrap();
        assert_eq!(done.status, CisTaskStatus::Succeeded);
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode_segment("ns-1"), "ns-1");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn token_is_redacted() {
        assert!(!format!("{:?}", ApiToken("secret-token".into())).contains("secret"));
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::super::soap::Credentials;

    struct Request {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A minimal HTTP/1.1 server speaking just enough of vAPI for the client.
    async fn mock(handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let header_end = loop {
                        let n = stream.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap().split(' ');
                    let method = first.next().unwrap().to_owned();
                    let path = first.next().unwrap().to_owned();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    while buf.len() < header_end + len {
                        let n = stream.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body =
                        String::from_utf8_lossy(&buf[header_end..header_end + len]).into_owned();
                    let (status, reply) = handler(&Request {
                        method,
                        path,
                        headers,
                        body,
                    });
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    stream.write_all(response.as_bytes()).await.unwrap();
                });
            }
        });
        format!("http://{addr}/").parse().unwrap()
    }

    /// A client of the mock at `base` (plain HTTP, user `user`, password `pass`).
    fn client_of(base: Url) -> VapiClient {
        VapiClient::new(
            base,
            &TlsVerification::SystemRoots,
            true,
            Credentials::new("user", "pass"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn registervm_and_task_polling_with_relogin() {
        let logins = Arc::new(AtomicU32::new(0));
        let polls = Arc::new(AtomicU32::new(0));
        let (l, p) = (logins.clone(), polls.clone());
        let base = mock(move |r| {
            let token = format!("token-{}", l.load(Ordering::SeqCst));
            match (r.method.as_str(), r.path.as_str()) {
                ("POST", "/api/session") => {
                    // "user:pass" in base64
                    assert_eq!(r.header("authorization"), Some("Basic dXNlcjpwYXNz"));
                    let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                    (201, format!("\"token-{n}\""))
                }
                _ if r.header(SESSION_HEADER) != Some(token.as_str()) || token == "token-1" => {
                    // The first session "expires" at once: the client must log in again.
                    (401, r#"{"error_type":"UNAUTHENTICATED","messages":[]}"#.into())
                }
                ("POST", "/api/vcenter/namespaces/instances/ns%201/registervm") => {
                    assert_eq!(r.header("content-type"), Some("application/json"));
                    assert_eq!(r.body, r#"{"vm":"vm-42"}"#);
                    (200, "\"task-7:com.vmware.wcp\"".into())
                }
                ("POST", _) => (
                    404,
                    r#"{"error_type":"NOT_FOUND","messages":[{"id":"VCenterWcpWorkloadRegisterVMVMNotFound","default_message":"vm not found","args":[]}]}"#.into(),
                ),
                ("GET", "/api/cis/tasks/task-7%3Acom.vmware.wcp") => {
                    match p.fetch_add(1, Ordering::SeqCst) {
                        0 => (200, r#"{"status":"RUNNING","progress":{"total":100,"completed":40}}"#.into()),
                        // vCenter busy for a moment: read again, not the end of the wait.
                        1 => (503, r#"{"error_type":"SERVICE_UNAVAILABLE","messages":[]}"#.into()),
                        // Waiting for resources: not an end.
                        2 => (200, r#"{"status":"BLOCKED","progress":{"total":100,"completed":60}}"#.into()),
                        _ => (200, r#"{"status":"SUCCEEDED","progress":{"total":100,"completed":100}}"#.into()),
                    }
                }
                _ => (500, String::new()),
            }
        })
        .await;
        let client = client_of(base);
        let task = client
            .register_vm("ns 1", &VmMoref::from("vm-42"))
            .await
            .unwrap();
        assert_eq!(task, "task-7:com.vmware.wcp");
        assert_eq!(
            logins.load(Ordering::SeqCst),
            2,
            "logged in again after the 401"
        );
        let mut seen = Vec::new();
        let info = client
            .wait_for_task(&task, Duration::from_secs(30), |p| seen.push(p.completed))
            .await
            .unwrap();
        assert_eq!(info.status, CisTaskStatus::Succeeded);
        assert_eq!(seen, [40, 60, 100]);

        let err = client
            .register_vm("other", &VmMoref::from("vm-1"))
            .await
            .unwrap_err();
        match &err {
            VapiError::Api {
                status: 404,
                error_type,
                message,
                ..
            } => {
                assert_eq!(error_type, "NOT_FOUND");
                assert_eq!(message, "vm not found");
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.is_retryable());
    }

    /// Eight reads of the same task by `client`, at once.
    async fn eight_task_reads_at_once(client: VapiClient) -> Vec<Result<CisTaskInfo, VapiError>> {
        let client = Arc::new(client);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let client = client.clone();
            calls.spawn(async move { client.task("task-1").await });
        }
        calls.join_all().await
    }

    /// Callers that start together, and then find the session ended together, make one
    /// A logout while another caller logs in ends the session that login makes, rather
    /// than ending nothing and leaving that session open on vCenter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logout_during_a_login_ends_the_new_session() {
        let ended = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let e = ended.clone();
        let base = mock(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/session") => {
                std::thread::sleep(std::time::Duration::from_millis(300));
                (201, "\"token-1\"".into())
            }
            ("DELETE", "/api/session") => {
                e.lock()
                    .unwrap()
                    .push(r.header(SESSION_HEADER).unwrap_or("none").to_owned());
                (204, String::new())
            }
            _ => (200, r#"{"status":"SUCCEEDED"}"#.into()),
        })
        .await;
        let client = Arc::new(client_of(base));
        let reader = {
            let client = client.clone();
            tokio::spawn(async move { client.task("task-1").await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        client.logout().await.unwrap();
        reader.await.unwrap().unwrap();
        assert!(!client.has_session(), "the new session stayed");
        assert_eq!(*ended.lock().unwrap(), ["token-1"]);
    }

    /// session each time between them, not one each: vCenter limits a user's sessions.
    #[tokio::test]
    async fn concurrent_callers_share_one_login() {
        let logins = Arc::new(AtomicU32::new(0));
        let l = logins.clone();
        let base = mock(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/session") => {
                let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                (201, format!("\"token-{n}\""))
            }
            // The first session ends at once.
            _ if r.header(SESSION_HEADER).is_none_or(|t| t == "token-1") => (
                401,
                r#"{"error_type":"UNAUTHENTICATED","messages":[]}"#.into(),
            ),
            _ => (200, r#"{"status":"SUCCEEDED"}"#.into()),
        })
        .await;
        for read in eight_task_reads_at_once(client_of(base)).await {
            assert_eq!(read.unwrap().status, CisTaskStatus::Succeeded);
        }
        assert_eq!(
            logins.load(Ordering::SeqCst),
            2,
            "one login at the start and one after the session ended"
        );
    }

    /// A refused login is tried once for the callers that find the session ended
    /// together, not once each (each try counts towards SSO's lockout).
    #[tokio::test]
    async fn a_refused_login_is_tried_once_for_all_waiting_callers() {
        let logins = Arc::new(AtomicU32::new(0));
        let l = logins.clone();
        let base = mock(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/session") => {
                l.fetch_add(1, Ordering::SeqCst);
                (
                    401,
                    r#"{"error_type":"UNAUTHENTICATED","messages":[]}"#.into(),
                )
            }
            _ => (
                401,
                r#"{"error_type":"UNAUTHENTICATED","messages":[]}"#.into(),
            ),
        })
        .await;
        for read in eight_task_reads_at_once(client_of(base)).await {
            let err = read.unwrap_err();
            assert!(
                matches!(&err, VapiError::Api { status: 401, .. }),
                "{err:?}"
            );
        }
        assert_eq!(logins.load(Ordering::SeqCst), 1);
    }

    /// A response body past the cap is refused, not read whole into memory.
    #[tokio::test]
    async fn an_oversized_response_is_refused() {
        let base = mock(|r| match r.path.as_str() {
            "/api/session" => (201, "\"token-1\"".into()),
            _ => (
                200,
                format!(
                    "{{\"status\":\"RUNNING\",\"pad\":\"{}\"}}",
                    "x".repeat(MAX_BODY_BYTES)
                ),
            ),
        })
        .await;
        let client = client_of(base);
        let err = client
            .wait_for_task("task-1", Duration::from_secs(30), |_| {})
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("larger than") || format!("{err:?}").contains("larger than"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn plain_http_needs_opt_in() {
        let base: Url = "http://127.0.0.1:1/".parse().unwrap();
        let creds = Credentials::new("u", "p");
        assert!(VapiClient::new(base, &TlsVerification::SystemRoots, false, creds).is_err());
    }
}
