//! The vim25 SOAP transport: envelope writing, response reading, the session cookie,
//! transparent re-login on `NotAuthenticated`, and fault decoding (VSPHERE.md §A.1–A.3).
//!
//! [`SoapClient`] is cheap to clone (an `Arc`); every clone shares one session. The
//! session cookie and the password never appear in `Debug` output or logs.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE};
use url::Url;

use super::tls::{TlsError, TlsVerification, client_config};
use super::types::{MoRef, TaskMoref, VmMoref};
use super::xml::{Element, SOAPENV_NS, XmlError, XmlWriter};

/// Largest SOAP response read into memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// The cookie that carries the vim25 session (also accepted by datastore HTTP and VDDK).
pub const SESSION_COOKIE_NAME: &str = "vmware_soap_session";

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct SoapConfig {
    /// The SDK endpoint, e.g. `https://vc.example/sdk`.
    pub url: Url,
    /// How the server certificate is verified.
    pub tls: TlsVerification,
    /// Allow `http://` URLs (tests and the lab only).
    pub allow_plain_http: bool,
    /// Login credentials; without them only an attached session can be used.
    pub credentials: Option<Credentials>,
    /// The vim25 version sent in `SOAPAction` (`urn:vim25/<version>`).
    pub api_version: String,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl SoapConfig {
    /// A configuration for `url` with system-root verification, API version 8.0.3.0 and a
    /// 5-minute request timeout.
    #[must_use]
    pub fn new(url: Url) -> Self {
        Self {
            url,
            tls: TlsVerification::SystemRoots,
            allow_plain_http: false,
            credentials: None,
            api_version: "8.0.3.0".to_owned(),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// A user name and password. `Debug` redacts the password; its memory is zeroed when
/// dropped.
#[derive(Clone)]
pub struct Credentials {
    /// The vSphere user, e.g. `administrator@vsphere.local`.
    pub username: String,
    password: String,
}

impl Credentials {
    /// Credentials for `username`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The `vmware_soap_session` cookie value. `Debug` redacts it; its memory is zeroed when
/// dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCookie(String);

impl SessionCookie {
    /// Wraps a cookie value (without the `vmware_soap_session=` name).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the `Cookie` header or VDDK's `VIXDISKLIB_CRED_SESSIONID`.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `vmware_soap_session=<value>`, the `Cookie` header.
    #[must_use]
    pub fn header_value(&self) -> String {
        format!("{SESSION_COOKIE_NAME}={}", self.0)
    }
}

impl Drop for SessionCookie {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl std::fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCookie(<redacted>)")
    }
}

/// A vim25 client over one HTTP connection pool and one session.
#[derive(Clone, Debug)]
pub struct SoapClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    url: Url,
    soap_action: HeaderValue,
    credentials: Option<Credentials>,
    session: RwLock<Option<SessionCookie>>,
    /// Held while logging in again; keeps the last refused login (see `login_again`).
    relogin: tokio::sync::Mutex<Option<Refused>>,
    content: ServiceContent,
}

/// A refused `Login`: the method, object and fault its error names.
type Refused = RefusedLogin<SessionCookie, (&'static str, MoRef, SoapFault)>;

/// A login refused for the credentials (a changed password, a locked account): `fault`,
/// what the client needs to give the refusal again, and the session it was to replace.
/// Kept by the SOAP and the vAPI client while they log in again, to answer the callers
/// that found the same session ended instead of trying again: each try counts towards
/// SSO's lockout (by default 5 failures in 3 minutes locks the account), and a job's VMs
/// and disks find an ended session together.
#[derive(Debug)]
pub(crate) struct RefusedLogin<K, F> {
    at: std::time::Instant,
    ended: Option<K>,
    fault: F,
}

impl<K: PartialEq, F> RefusedLogin<K, F> {
    /// How long a refusal answers for a login.
    const HOLD: Duration = Duration::from_secs(60);

    /// `fault`, refused now for a caller that found the session `ended` ended.
    pub(crate) fn new(ended: Option<K>, fault: F) -> Self {
        Self {
            at: std::time::Instant::now(),
            ended,
            fault,
        }
    }

    /// The refusal, if it answers for a caller that found the session `ended` ended: the
    /// same session, within a minute.
    pub(crate) fn answer(&self, ended: Option<&K>) -> Option<&F> {
        (self.ended.as_ref() == ended && self.at.elapsed() < Self::HOLD).then_some(&self.fault)
    }
}

impl SoapClient {
    /// Connects: builds the HTTP client, reads the `ServiceContent` and, when credentials
    /// are configured, logs in.
    ///
    /// # Errors
    ///
    /// [`VsphereError::Config`] for a bad URL or TLS setup, otherwise whatever
    /// `RetrieveServiceContent` or `Login` fail with (`InvalidLogin` for bad credentials).
    pub async fn connect(config: SoapConfig) -> Result<Self, VsphereError> {
        let client = Self::connect_anonymous(config).await?;
        if client.inner.credentials.is_some() {
            client.login().await?;
        }
        Ok(client)
    }

    /// Connects with an existing session cookie (no login; no re-login either unless
    /// credentials are configured too).
    ///
    /// # Errors
    ///
    /// As [`SoapClient::connect`].
    pub async fn attach(config: SoapConfig, cookie: SessionCookie) -> Result<Self, VsphereError> {
        let client = Self::connect_anonymous(config).await?;
        client.set_session(Some(cookie));
        Ok(client)
    }

    async fn connect_anonymous(config: SoapConfig) -> Result<Self, VsphereError> {
        let http = build_http(
            &config.url,
            &config.tls,
            config.allow_plain_http,
            config.request_timeout,
        )?;
        let soap_action = HeaderValue::from_str(&format!("\"urn:vim25/{}\"", config.api_version))
            .map_err(|_| VsphereError::Config {
            reason: "api version is not a header value".into(),
        })?;
        let mut inner = Inner {
            http,
            url: config.url,
            soap_action,
            credentials: config.credentials,
            session: RwLock::new(None),
            relogin: tokio::sync::Mutex::new(None),
            content: ServiceContent::default(),
        };
        let this = MoRef::new("ServiceInstance", "ServiceInstance");
        let body = envelope("RetrieveServiceContent", &this, "");
        let response = send(&inner, "RetrieveServiceContent", &this, body).await?.0;
        let returnval = response
            .child("returnval")
            .ok_or_else(|| malformed("RetrieveServiceContent", "no returnval"))?;
        inner.content =
            ServiceContent::from_xml(returnval).map_err(|source| VsphereError::Xml {
                method: "RetrieveServiceContent",
                source,
            })?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The `ServiceContent` read at connect time.
    #[must_use]
    pub fn service_content(&self) -> &ServiceContent {
        &self.inner.content
    }

    /// The SDK URL this client talks to.
    #[must_use]
    pub fn url(&self) -> &Url {
        &self.inner.url
    }

    /// The current session cookie, if logged in.
    #[must_use]
    pub fn session_cookie(&self) -> Option<SessionCookie> {
        self.inner.session.read().map(|s| s.clone()).unwrap_or(None)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    fn set_session(&self, cookie: Option<SessionCookie>) {
        if let Ok(mut guard) = self.inner.session.write() {
            *guard = cookie;
        }
    }

    /// `SessionManager.Login` with the configured credentials; stores the session cookie.
    ///
    /// # Errors
    ///
    /// [`VsphereError::Config`] without credentials; `InvalidLogin` fault for bad ones.
    pub async fn login(&self) -> Result<UserSession, VsphereError> {
        let credentials = self
            .inner
            .credentials
            .as_ref()
            .ok_or_else(|| VsphereError::Config {
                reason: "no credentials configured".into(),
            })?;
        let this = self.inner.content.session_manager.clone();
        let mut w = XmlWriter::new();
        w.text("userName", &credentials.username)
            .text("password", &credentials.password);
        let body = envelope("Login", &this, &w.finish());
        // Always a fresh session: the old one is gone or unwanted, and a Login sent on an
        // authenticated session is refused by some servers (vcsim: InvalidLogin).
        let (response, cookie) = send_with(&self.inner, "Login", &this, body, false).await?;
        let cookie = cookie.ok_or_else(|| malformed("Login", "no session cookie in the answer"))?;
        self.set_session(Some(cookie));
        let returnval = response
            .child("returnval")
            .ok_or_else(|| malformed("Login", "no returnval"))?;
        Ok(UserSession {
            key: returnval.child_text("key").unwrap_or_default().to_owned(),
            user_name: returnval
                .child_text("userName")
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// `SessionManager.Logout`; forgets the cookie either way.
    ///
    /// # Errors
    ///
    /// The fault or transport error of the call.
    pub async fn logout(&self) -> Result<(), VsphereError> {
        // After a login again in progress, not before: the session it makes is the one to
        // end (as the vAPI client's logout, whose test shows the race).
        let _no_login = self.inner.relogin.lock().await;
        let this = self.inner.content.session_manager.clone();
        let body = envelope("Logout", &this, "");
        let result = send(&self.inner, "Logout", &this, body).await.map(|_| ());
        self.set_session(None);
        result
    }

    /// `SessionManager.TerminateSession` for other sessions' keys.
    ///
    /// # Errors
    ///
    /// `NotFound` for an unknown key, `InvalidArgument` for our own.
    pub async fn terminate_sessions(&self, keys: &[String]) -> Result<(), VsphereError> {
        let mut w = XmlWriter::new();
        for key in keys {
            w.text("sessionId", key);
        }
        let this = self.inner.content.session_manager.clone();
        self.invoke("TerminateSession", &this, &w.finish())
            .await
            .map(|_| ())
    }

    /// `ServiceInstance.CurrentTime`, the cheap keep-alive; returns the server's time text.
    ///
    /// # Errors
    ///
    /// The fault or transport error of the call.
    pub async fn current_time(&self) -> Result<String, VsphereError> {
        let this = MoRef::new("ServiceInstance", "ServiceInstance");
        let response = self.invoke("CurrentTime", &this, "").await?;
        Ok(response
            .child_text("returnval")
            .unwrap_or_default()
            .to_owned())
    }

    /// Calls `method` on `this` with `params` (already-serialised child elements in WSDL
    /// order) and returns the `<methodResponse>` element. On `NotAuthenticated` with
    /// credentials configured, logs in again once and retries.
    ///
    /// # Errors
    ///
    /// [`VsphereError::Fault`] for a SOAP fault, transport/HTTP/XML errors otherwise.
    pub async fn invoke(
        &self,
        method: &'static str,
        this: &MoRef,
        params: &str,
    ) -> Result<Element, VsphereError> {
        let body = envelope(method, this, params);
        let before = self.session_cookie();
        match send(&self.inner, method, this, body.clone()).await {
            Err(VsphereError::Fault { fault, .. })
                if fault.kind == FaultKind::NotAuthenticated
                    && self.inner.credentials.is_some() =>
            {
                self.login_again(before, method).await?;
                send(&self.inner, method, this, body).await.map(|(e, _)| e)
            }
            other => other.map(|(e, _)| e),
        }
    }

    /// Whether the client logs in by itself (it has credentials).
    pub(crate) fn can_log_in(&self) -> bool {
        self.inner.credentials.is_some()
    }

    /// Logs in again after vCenter ended the session `before` (a restart, an idle timeout),
    /// once for all the tasks that found it ended: a task that waited while another logged
    /// in finds the cookie changed and does nothing.
    async fn login_again(
        &self,
        before: Option<SessionCookie>,
        what: &str,
    ) -> Result<(), VsphereError> {
        let mut refused = self.inner.relogin.lock().await;
        if self.session_cookie() != before {
            return Ok(());
        }
        if let Some((method, object, fault)) =
            refused.as_ref().and_then(|r| r.answer(before.as_ref()))
        {
            return Err(VsphereError::Fault {
                method,
                object: object.clone(),
                fault: Box::new(fault.clone()),
            });
        }
        tracing::info!(what, "vsphere session expired; logging in again");
        match self.login().await {
            Ok(_) => {
                *refused = None;
                Ok(())
            }
            Err(e) => {
                if let VsphereError::Fault {
                    method,
                    object,
                    fault,
                } = &e
                    && fault.kind == FaultKind::InvalidLogin
                {
                    tracing::error!(what, error = %e, "logging in again was refused; the callers waiting for it get the same answer for a minute");
                    *refused = Some(RefusedLogin::new(
                        before,
                        (*method, object.clone(), (**fault).clone()),
                    ));
                }
                Err(e)
            }
        }
    }
}

fn build_http(
    url: &Url,
    tls: &TlsVerification,
    allow_plain_http: bool,
    timeout: Duration,
) -> Result<reqwest::Client, VsphereError> {
    match url.scheme() {
        "https" => {}
        "http" if allow_plain_http => {}
        other => {
            return Err(VsphereError::Config {
                reason: format!("url scheme {other:?} not allowed (https required)"),
            });
        }
    }
    http_builder(tls, timeout)?
        .https_only(!allow_plain_http)
        .build()
        .map_err(|e| VsphereError::Config {
            reason: format!("http client: {e}"),
        })
}

/// What every HTTP client to vCenter shares: `tls`'s verification, HTTP/1.1, the timeouts,
/// and no redirects. A redirect to another host would carry what reqwest does not know to
/// strip (the vAPI session header, a re-sent `Login` body with the password), and the
/// certificate read for VDDK's thumbprint would be the last host's, not vCenter's. Neither
/// vCenter's SDK, its REST API nor its `/folder` file access redirects, so a 3xx is an
/// error naming its status.
fn http_builder(
    tls: &TlsVerification,
    timeout: Duration,
) -> Result<reqwest::ClientBuilder, VsphereError> {
    let tls = client_config(tls).map_err(VsphereError::Tls)?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(30)))
}

/// The SHA-1 thumbprint of the certificate `url`'s server presents, read over a connection
/// verified by `tls` (a CA file or the system's roots): what VDDK, which checks servers by
/// SHA-1 thumbprint only, is then given, so that it trusts exactly the certificate the
/// agent's own verification accepted.
///
/// # Errors
/// TLS set-up or verification failures, an unreachable server, no certificate seen.
pub async fn verified_server_thumbprint(
    url: &Url,
    tls: &TlsVerification,
) -> Result<crate::vsphere::Thumbprint, VsphereError> {
    let http = http_builder(tls, Duration::from_secs(60))?
        .tls_info(true)
        .https_only(true)
        .build()
        .map_err(|e| VsphereError::Config {
            reason: format!("http client: {e}"),
        })?;
    let mut base = url.clone();
    base.set_path("/");
    base.set_query(None);
    let response = http
        .get(base.clone())
        .send()
        .await
        .map_err(|e| VsphereError::Config {
            reason: format!(
                "reading the certificate of {}: {e}",
                base.host_str().unwrap_or_default()
            ),
        })?;
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(reqwest::tls::TlsInfo::peer_certificate)
        .map(crate::vsphere::Thumbprint::sha1_of)
        .ok_or_else(|| VsphereError::Config {
            reason: format!(
                "{} presented no certificate to take VDDK's thumbprint from",
                base.host_str().unwrap_or_default()
            ),
        })
}

/// Builds the HTTP client used by sibling modules (datastore) with the same TLS rules.
pub(crate) fn http_client_for(
    url: &Url,
    tls: &TlsVerification,
    allow_plain_http: bool,
    timeout: Duration,
) -> Result<reqwest::Client, VsphereError> {
    build_http(url, tls, allow_plain_http, timeout)
}

/// The full envelope for one call.
fn envelope(method: &str, this: &MoRef, params: &str) -> String {
    let mut w = XmlWriter::new();
    w.moref("_this", this);
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<soapenv:Body><{m} xmlns="urn:vim25">{this}{params}</{m}></soapenv:Body></soapenv:Envelope>"#
        ),
        m = method,
        this = w.finish(),
        params = params
    )
}

async fn send(
    inner: &Inner,
    method: &'static str,
    this: &MoRef,
    body: String,
) -> Result<(Element, Option<SessionCookie>), VsphereError> {
    send_with(inner, method, this, body, true).await
}

async fn send_with(
    inner: &Inner,
    method: &'static str,
    this: &MoRef,
    body: String,
    with_session: bool,
) -> Result<(Element, Option<SessionCookie>), VsphereError> {
    let mut request = inner
        .http
        .post(inner.url.clone())
        .header(CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
        .header("SOAPAction", inner.soap_action.clone())
        .body(body);
    let cookie = inner.session.read().map(|s| s.clone()).unwrap_or(None);
    if let Some(cookie) = cookie.filter(|_| with_session) {
        let mut value = HeaderValue::from_str(&cookie.header_value())
            .map_err(|_| malformed(method, "session cookie is not a header value"))?;
        value.set_sensitive(true);
        request = request.header(COOKIE, value);
    }
    let response = request
        .send()
        .await
        .map_err(|source| VsphereError::Transport { method, source })?;
    let status = response.status();
    let cookie = session_cookie_from(response.headers());
    let bytes = read_limited(response, method).await?;
    if !status.is_success() && status.as_u16() != 500 {
        return Err(VsphereError::Http {
            method,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        });
    }
    let element = parse_response(method, this, &bytes).map_err(|e| match e {
        // A 500 whose body is not a SOAP fault is an HTTP error, not a parse error.
        VsphereError::Xml { .. } | VsphereError::Malformed { .. } if !status.is_success() => {
            VsphereError::Http {
                method,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }
        }
        other => other,
    })?;
    Ok((element, cookie))
}

async fn read_limited(
    response: reqwest::Response,
    method: &'static str,
) -> Result<Vec<u8>, VsphereError> {
    read_capped(response, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| match e {
            Capped::Transport(source) => VsphereError::Transport { method, source },
            Capped::TooLarge => malformed(method, "response larger than 64 MiB"),
        })
}

/// Why [`read_capped`] gave up.
pub(crate) enum Capped {
    /// Reading failed.
    Transport(reqwest::Error),
    /// The body passed the cap.
    TooLarge,
}

/// The body of `response`, refused once it passes `max` bytes (a server's answer is never
/// read whole into memory on trust).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, Capped> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Capped::Transport)? {
        if bytes.len().saturating_add(chunk.len()) > max {
            return Err(Capped::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn session_cookie_from(headers: &reqwest::header::HeaderMap) -> Option<SessionCookie> {
    headers.get_all(SET_COOKIE).iter().find_map(|value| {
        let value = value.to_str().ok()?;
        let pair = value.split(';').next()?.trim();
        let (name, value) = pair.split_once('=')?;
        (name.trim() == SESSION_COOKIE_NAME).then(|| SessionCookie::new(value.trim()))
    })
}

/// Reads a response document: returns the method's response element, or the decoded
/// fault as [`VsphereError::Fault`]. Never panics, whatever the bytes.
///
/// # Errors
///
/// [`VsphereError::Fault`], [`VsphereError::Xml`] or [`VsphereError::Malformed`].
pub fn parse_response(
    method: &'static str,
    this: &MoRef,
    bytes: &[u8],
) -> Result<Element, VsphereError> {
    let root = Element::parse(bytes).map_err(|source| VsphereError::Xml { method, source })?;
    if root.name != "Envelope" || root.ns.as_deref() != Some(SOAPENV_NS) {
        return Err(malformed(method, "not a SOAP envelope"));
    }
    let body = root
        .children
        .iter()
        .find(|c| c.name == "Body" && c.ns.as_deref() == Some(SOAPENV_NS))
        .ok_or_else(|| malformed(method, "no SOAP body"))?;
    let first = body
        .children
        .first()
        .ok_or_else(|| malformed(method, "empty SOAP body"))?;
    if first.name == "Fault" && first.ns.as_deref() == Some(SOAPENV_NS) {
        return Err(VsphereError::Fault {
            method,
            object: this.clone(),
            fault: Box::new(SoapFault::from_fault_element(first)),
        });
    }
    Ok(first.clone())
}

fn malformed(method: &'static str, reason: &str) -> VsphereError {
    VsphereError::Malformed {
        method,
        reason: reason.to_owned(),
    }
}

/// The parts of `ServiceContent` the agent uses (VSPHERE.md §A.2).
#[derive(Clone, Debug, Default)]
pub struct ServiceContent {
    /// The inventory root folder.
    pub root_folder: MoRef,
    /// The PropertyCollector.
    pub property_collector: MoRef,
    /// The ViewManager (container views).
    pub view_manager: MoRef,
    /// The SessionManager.
    pub session_manager: MoRef,
    /// The SearchIndex.
    pub search_index: Option<MoRef>,
    /// The FileManager.
    pub file_manager: Option<MoRef>,
    /// The VirtualDiskManager.
    pub virtual_disk_manager: Option<MoRef>,
    /// Product information.
    pub about: AboutInfo,
}

impl ServiceContent {
    pub(super) fn from_xml(e: &Element) -> Result<Self, XmlError> {
        let req = |name: &str| -> Result<MoRef, XmlError> {
            e.child(name)
                .ok_or_else(|| XmlError::Value {
                    element: name.to_owned(),
                    value: "missing".into(),
                })?
                .moref()
        };
        let opt = |name: &str| e.child(name).map(Element::moref).transpose();
        let about = e.child("about").cloned().unwrap_or_default();
        let text = |n: &str| about.child_text(n).unwrap_or_default().to_owned();
        Ok(Self {
            root_folder: req("rootFolder")?,
            property_collector: req("propertyCollector")?,
            view_manager: req("viewManager")?,
            session_manager: req("sessionManager")?,
            search_index: opt("searchIndex")?,
            file_manager: opt("fileManager")?,
            virtual_disk_manager: opt("virtualDiskManager")?,
            about: AboutInfo {
                full_name: text("fullName"),
                version: text("version"),
                build: text("build"),
                api_type: text("apiType"),
                api_version: text("apiVersion"),
                instance_uuid: text("instanceUuid"),
            },
        })
    }
}

/// `ServiceContent.about`.
#[derive(Clone, Debug, Default)]
pub struct AboutInfo {
    /// e.g. `VMware vCenter Server 8.0.3 build-…`.
    pub full_name: String,
    /// Product version.
    pub version: String,
    /// Build number.
    pub build: String,
    /// `VirtualCenter` or `HostAgent`.
    pub api_type: String,
    /// The highest vim25 version the server speaks.
    pub api_version: String,
    /// The vCenter instance UUID (VM Operator's `manager-id`).
    pub instance_uuid: String,
}

/// The answer of `Login`.
#[derive(Clone, Debug)]
pub struct UserSession {
    /// The session key (for `TerminateSession`; not the cookie).
    pub key: String,
    /// The logged-in user.
    pub user_name: String,
}

/// The fault classes the agent tells apart (VSPHERE.md §A.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The session is missing or expired.
    NotAuthenticated,
    /// Wrong user name or password.
    InvalidLogin,
    /// The user lacks a privilege.
    NoPermission,
    /// The referenced object does not exist.
    ManagedObjectNotFound,
    /// An argument is invalid.
    InvalidArgument,
    /// A property path is invalid.
    InvalidProperty,
    /// The object is in the wrong state for the operation.
    InvalidState,
    /// The VM's power state forbids the operation.
    InvalidPowerState,
    /// Another task holds the object.
    TaskInProgress,
    /// A datastore file problem (also CBT "changes from before enabling").
    FileFault,
    /// A file does not exist.
    FileNotFound,
    /// A file already exists.
    FileAlreadyExists,
    /// Something named does not exist (wrong deviceKey, session key, …).
    NotFound,
    /// An object with that name exists.
    DuplicateName,
    /// The object already exists.
    AlreadyExists,
    /// The method is disabled on the entity.
    MethodDisabled,
    /// The method was already disabled by another source.
    MethodAlreadyDisabled,
    /// The operation is not supported here.
    NotSupported,
    /// The server does not implement the method.
    NotImplemented,
    /// The server timed out.
    Timedout,
    /// Host communication failure.
    HostCommunication,
    /// Any other fault; see [`SoapFault::name`].
    Other,
}

impl FaultKind {
    /// Maps a vim25 fault type name.
    #[must_use]
    pub fn from_name(name: &str) -> Self {
        match name {
            "NotAuthenticated" => Self::NotAuthenticated,
            "InvalidLogin" => Self::InvalidLogin,
            "NoPermission" => Self::NoPermission,
            "ManagedObjectNotFound" => Self::ManagedObjectNotFound,
            "InvalidArgument" => Self::InvalidArgument,
            "InvalidProperty" => Self::InvalidProperty,
            "InvalidState" => Self::InvalidState,
            "InvalidPowerState" => Self::InvalidPowerState,
            "TaskInProgress" => Self::TaskInProgress,
            "FileFault" => Self::FileFault,
            "FileNotFound" => Self::FileNotFound,
            "FileAlreadyExists" => Self::FileAlreadyExists,
            "NotFound" => Self::NotFound,
            "DuplicateName" => Self::DuplicateName,
            "AlreadyExists" => Self::AlreadyExists,
            "MethodDisabled" => Self::MethodDisabled,
            "MethodAlreadyDisabledFault" => Self::MethodAlreadyDisabled,
            "NotSupported" => Self::NotSupported,
            "NotImplemented" | "MethodNotFound" => Self::NotImplemented,
            "Timedout" => Self::Timedout,
            "HostCommunication" | "HostNotConnected" | "HostNotReachable" => {
                Self::HostCommunication
            }
            _ => Self::Other,
        }
    }

    /// Whether trying again later may succeed: session expiry (a new attempt logs in
    /// again), busy objects and transient host/server trouble. Everything else —
    /// credentials, permissions, missing objects, bad arguments — is permanent.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::NotAuthenticated
                | Self::TaskInProgress
                | Self::InvalidState
                | Self::Timedout
                | Self::HostCommunication
        )
    }
}

/// A decoded SOAP fault or task error (`LocalizedMethodFault`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoapFault {
    /// The class.
    pub kind: FaultKind,
    /// The vim25 fault type name, e.g. `InvalidPowerState`.
    pub name: String,
    /// `faultstring` or `localizedMessage`.
    pub message: String,
    /// For `ManagedObjectNotFound`: the missing object.
    pub object: Option<MoRef>,
}

impl std::fmt::Display for SoapFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}: {}", self.name, self.message)
        }
    }
}

impl SoapFault {
    /// Decodes `<soapenv:Fault>`: the fault type is the `xsi:type` of the detail's
    /// element, else its name without the `Fault` suffix.
    #[must_use]
    pub fn from_fault_element(fault: &Element) -> Self {
        let message = fault
            .child_text("faultstring")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let detail = fault.child("detail").and_then(|d| d.children.first());
        let name = match detail {
            Some(d) => d
                .xsi_type
                .clone()
                .unwrap_or_else(|| d.name.strip_suffix("Fault").unwrap_or(&d.name).to_owned()),
            None => fault
                .child_text("faultcode")
                .unwrap_or("Unknown")
                .trim()
                .to_owned(),
        };
        let object = detail
            .and_then(|d| d.child("obj"))
            .and_then(|o| o.moref().ok());
        Self {
            kind: FaultKind::from_name(&name),
            name,
            message,
            object,
        }
    }

    /// Decodes a task's `LocalizedMethodFault` {fault (xsi:type), localizedMessage}.
    #[must_use]
    pub fn from_localized(e: &Element) -> Self {
        let fault = e.child("fault");
        let name = fault
            .and_then(|f| f.xsi_type.clone())
            .unwrap_or_else(|| "Unknown".to_owned());
        let object = fault
            .and_then(|f| f.child("obj"))
            .and_then(|o| o.moref().ok());
        let message = e
            .child_text("localizedMessage")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Self {
            kind: FaultKind::from_name(&name),
            name,
            message,
            object,
        }
    }

    /// See [`FaultKind::is_retryable`].
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// Errors of the vim25 client (every SOAP-speaking module of `agent::vsphere` uses this
/// one enum; datastore HTTP and vAPI have their own).
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    /// Bad configuration (URL scheme, TLS, missing credentials).
    #[error("vsphere client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// TLS configuration could not be built.
    #[error("vsphere tls")]
    Tls(#[source] TlsError),
    /// The request did not complete (connect, TLS handshake, reset, timeout).
    #[error("{method}: transport failure")]
    Transport {
        /// The vim25 method.
        method: &'static str,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP status without a SOAP fault.
    #[error("{method}: http status {status}: {body}")]
    Http {
        /// The vim25 method.
        method: &'static str,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The server answered with a SOAP fault.
    #[error("{method} on {object}: {fault}")]
    Fault {
        /// The vim25 method.
        method: &'static str,
        /// The `_this` of the call.
        object: MoRef,
        /// The decoded fault.
        fault: Box<SoapFault>,
    },
    /// The response is not well-formed XML.
    #[error("{method}: unreadable response")]
    Xml {
        /// The vim25 method.
        method: &'static str,
        /// The parser's error.
        #[source]
        source: XmlError,
    },
    /// The response is XML but not the expected shape.
    #[error("{method}: unexpected response: {reason}")]
    Malformed {
        /// The vim25 method.
        method: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A task ended in error.
    #[error("task {task} ({operation} on {object}): {fault}")]
    TaskFailed {
        /// The task.
        task: TaskMoref,
        /// The method that started it, e.g. `CreateSnapshot_Task`.
        operation: &'static str,
        /// The object it ran on.
        object: MoRef,
        /// The task's error.
        fault: Box<SoapFault>,
    },
    /// A task did not finish in time (it may still be running).
    #[error("task {task} ({operation} on {object}) not finished after {waited_secs} s")]
    TaskTimeout {
        /// The task.
        task: TaskMoref,
        /// The method that started it.
        operation: &'static str,
        /// The object it ran on.
        object: MoRef,
        /// How long we waited.
        waited_secs: u64,
    },
    /// vCenter no longer knows a task it started (it restarted, or failed over, while we
    /// polled): whether the task did its work is unknown, so nothing may be taken for
    /// done, or for gone.
    #[error(
        "task {task} ({operation} on {object}) is no longer known to vCenter (restarted \
         while it ran?): whether it did its work is unknown"
    )]
    TaskLost {
        /// The task.
        task: TaskMoref,
        /// The method that started it.
        operation: &'static str,
        /// The object it ran on.
        object: MoRef,
    },
    /// A looked-up object does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `VM "web-1" in folder group-v3`.
        what: String,
    },
    /// A lookup matched several objects.
    #[error("{what} is ambiguous: {candidates:?}")]
    Ambiguous {
        /// What was looked for.
        what: String,
        /// The matches.
        candidates: Vec<MoRef>,
    },
    /// QueryChangedDiskAreas stopped making progress before covering the disk, or answered
    /// for a range that starts after the offset asked for.
    #[error(
        "QueryChangedDiskAreas on {vm} disk {disk}: the reply for offset {offset_bytes} does \
         not cover it (no progress, or a gap)"
    )]
    CbtNoProgress {
        /// The VM.
        vm: VmMoref,
        /// The disk.
        disk: super::types::DiskKey,
        /// Where the server returned length 0.
        offset_bytes: u64,
    },
}

/// The rustls error behind a transport failure when the server's certificate failed
/// verification (an untrusted or changed certificate, or the pin's mismatch, which the
/// agent's own verifier reports as `General`).
pub(crate) fn certificate_failure<'a>(
    source: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>()
            && matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::General(_)
            )
        {
            return Some(r);
        }
        // An I/O error's `source` skips the error it wraps (itself an I/O error, or
        // rustls's): go through that one.
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|w| w as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

impl VsphereError {
    /// Whether the operation may succeed if tried again: transport failures (but a
    /// server certificate that fails verification), HTTP 5xx without a fault, and
    /// retryable faults (see [`FaultKind::is_retryable`]).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => !self.is_certificate_failure(),
            Self::Http { status, .. } => *status >= 500,
            Self::Fault { fault, .. } | Self::TaskFailed { fault, .. } => fault.is_retryable(),
            Self::Config { .. }
            | Self::Tls(_)
            | Self::Xml { .. }
            | Self::Malformed { .. }
            | Self::TaskTimeout { .. }
            | Self::TaskLost { .. }
            | Self::NotFound { .. }
            | Self::Ambiguous { .. }
            | Self::CbtNoProgress { .. } => false,
        }
    }

    /// Whether this is the server's certificate failing verification: not the pinned
    /// thumbprint (a certificate renewed or replaced), or not trusted by the CA file or the
    /// system's roots. Trying again gives the same answer; someone must look.
    #[must_use]
    pub fn is_certificate_failure(&self) -> bool {
        match self {
            Self::Transport { source, .. } => certificate_failure(source).is_some(),
            _ => false,
        }
    }

    /// Whether this certificate failure may be this machine's clock's (the certificate
    /// expired, or not valid yet): a proxy VM booted with a wrong clock sees it until
    /// NTP corrects the clock.
    #[must_use]
    pub fn is_certificate_time_failure(&self) -> bool {
        use rustls::CertificateError as C;
        match self {
            Self::Transport { source, .. } => matches!(
                certificate_failure(source),
                Some(rustls::Error::InvalidCertificate(
                    C::Expired
                        | C::NotValidYet
                        | C::ExpiredContext { .. }
                        | C::NotValidYetContext { .. }
                ))
            ),
            _ => false,
        }
    }

    /// The fault, if this error is one (call or task).
    #[must_use]
    pub fn fault(&self) -> Option<&SoapFault> {
        match self {
            Self::Fault { fault, .. } | Self::TaskFailed { fault, .. } => Some(fault.as_ref()),
            _ => None,
        }
    }

    /// The fault class, if this error is a fault.
    #[must_use]
    pub fn fault_kind(&self) -> Option<FaultKind> {
        self.fault().map(|f| f.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVALID_LOGIN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

    fn sm() -> MoRef {
        MoRef::new("SessionManager", "SessionManager")
    }

    #[test]
    fn decodes_fault_from_detail_type() {
        let err = parse_response("Login", &sm(), INVALID_LOGIN.as_bytes()).unwrap_err();
        let fault = err.fault().unwrap();
        assert_eq!(fault.kind, FaultKind::InvalidLogin);
        assert_eq!(fault.message, "Login failure");
        assert!(!err.is_retryable());
    }

    #[test]
    fn decodes_fault_without_xsi_type_and_with_object() {
        let doc = r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault><faultcode>ServerFaultCode</faultcode><faultstring>gone</faultstring><detail><ManagedObjectNotFoundFault xmlns="urn:vim25"><obj type="VirtualMachine">vm-9</obj></ManagedObjectNotFoundFault></detail></e:Fault></e:Body></e:Envelope>"#;
        let err = parse_response("X", &sm(), doc.as_bytes()).unwrap_err();
        let fault = err.fault().unwrap();
        assert_eq!(fault.kind, FaultKind::ManagedObjectNotFound);
        assert_eq!(fault.object, Some(MoRef::new("VirtualMachine", "vm-9")));
    }

    #[test]
    fn retryable_classes() {
        assert!(FaultKind::TaskInProgress.is_retryable());
        assert!(FaultKind::NotAuthenticated.is_retryable());
        assert!(!FaultKind::InvalidPowerState.is_retryable());
        assert!(!FaultKind::ManagedObjectNotFound.is_retryable());
        assert_eq!(
            FaultKind::from_name("MethodAlreadyDisabledFault"),
            FaultKind::MethodAlreadyDisabled
        );
    }

    #[test]
    fn envelope_shape() {
        let e = envelope(
            "CurrentTime",
            &MoRef::new("ServiceInstance", "ServiceInstance"),
            "",
        );
        let root = Element::parse(e.as_bytes()).unwrap();
        let call = &root.children[0].children[0];
        assert_eq!(call.name, "CurrentTime");
        assert_eq!(call.ns.as_deref(), Some("urn:vim25"));
        assert_eq!(call.children[0].name, "_this");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut config = SoapConfig::new("https://vc.example/sdk".parse().unwrap());
        config.credentials = Some(Credentials::new("admin", "hunter2-secret"));
        let cookie = SessionCookie::new("\"52c0ffee-secret\"");
        let shown = format!("{config:?} {cookie:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("c0ffee"), "{shown}");
        assert!(shown.contains("admin"));
    }

    #[test]
    fn cookie_from_set_cookie() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append(SET_COOKIE, HeaderValue::from_static("other=1; Path=/"));
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("vmware_soap_session=\"abc\"; Path=/; HttpOnly; Secure;"),
        );
        assert_eq!(session_cookie_from(&headers).unwrap().expose(), "\"abc\"");
    }

    #[test]
    fn plain_http_refused_unless_allowed() {
        let url: Url = "http://127.0.0.1:1/sdk".parse().unwrap();
        let tls = TlsVerification::SystemRoots;
        let err = build_http(&url, &tls, false, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, VsphereError::Config { .. }));
    }

    const FIXTURES: [&str; 5] = [
        include_str!("../../tests/fixtures/vsphere/vcsim-vm-properties.xml"),
        include_str!("../../tests/fixtures/vsphere/vcsim-service-content.xml"),
        include_str!("../../tests/fixtures/vsphere/vcsim-not-found-fault.xml"),
        include_str!("../../tests/fixtures/vsphere/vcsim-poweron-task.xml"),
        INVALID_LOGIN,
    ];

    /// Runs every decoder the client has over a response, the way the client would.
    fn decode_all(bytes: &[u8]) {
        let this = MoRef::new("PropertyCollector", "propertyCollector");
        let Ok(response) = parse_response("RetrievePropertiesEx", &this, bytes) else {
            return;
        };
        let _ = ServiceContent::from_xml(response.child("returnval").unwrap_or(&response));
        let mut stack = vec![&response];
        while let Some(e) = stack.pop() {
            let _ = e.moref();
            let _ = e.bool_text();
            let _ = super::super::task::TaskInfo::from_xml(e);
            let _ = super::super::cbt::DiskChangeInfo::from_xml(e);
            let _ = SoapFault::from_localized(e);
            let _ = SoapFault::from_fault_element(e);
            if let Ok(content) = super::super::property::ObjectContent::from_xml(e) {
                let vm = super::super::types::VmMoref::from("vm-1");
                let _ = super::super::vm::VmInfo::from_content(&vm, &content);
            }
            stack.extend(e.children.iter());
        }
    }

    #[test]
    fn vcsim_fixtures_decode() {
        let this = MoRef::new("PropertyCollector", "propertyCollector");
        let vm_props =
            parse_response("RetrievePropertiesEx", &this, FIXTURES[0].as_bytes()).unwrap();
        let objects = vm_props
            .child("returnval")
            .unwrap()
            .child("objects")
            .unwrap();
        let content = super::super::property::ObjectContent::from_xml(objects).unwrap();
        let vm = super::super::types::VmMoref::from("vm-57");
        let info = super::super::vm::VmInfo::from_content(&vm, &content).unwrap();
        assert_eq!(info.name, "DC0_H0_VM0");
        assert_eq!(info.disks.len(), 1);
        assert!(info.disks[0].file_name.ends_with(".vmdk"));
        assert!(info.bios_uuid.is_some() && info.parent.is_some() && !info.datastores.is_empty());
        assert_eq!(info.all_snapshots().len(), 1);
        assert!(info.current_snapshot.is_some());

        let sc = parse_response("RetrieveServiceContent", &this, FIXTURES[1].as_bytes()).unwrap();
        let sc = ServiceContent::from_xml(sc.child("returnval").unwrap()).unwrap();
        assert_eq!(sc.root_folder, MoRef::new("Folder", "group-d1"));
        assert_eq!(sc.about.api_type, "VirtualCenter");

        let err =
            parse_response("RetrievePropertiesEx", &this, FIXTURES[2].as_bytes()).unwrap_err();
        assert_eq!(err.fault_kind(), Some(FaultKind::ManagedObjectNotFound));
        assert_eq!(
            err.fault().unwrap().object,
            Some(MoRef::new("VirtualMachine", "vm-9999"))
        );

        for fixture in FIXTURES {
            decode_all(fixture.as_bytes());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            decode_all(&bytes);
        }

        #[test]
        fn mutated_responses_never_panic(
            which in 0..FIXTURES.len(),
            edits in proptest::collection::vec((0usize..10_000, 0usize..64, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)), 1..6),
            cut in proptest::option::of(0usize..10_000),
        ) {
            let mut bytes = FIXTURES[which].as_bytes().to_vec();
            for (at, remove, insert) in edits {
                let at = at % (bytes.len() + 1);
                let end = (at + remove).min(bytes.len());
                bytes.splice(at..end, insert);
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            decode_all(&bytes);
        }

        #[test]
        fn structural_mutations_never_panic(
            which in 0..FIXTURES.len(),
            token in proptest::sample::select(vec![
                "<", ">", "</", "/>", "&", "&#x0;", "&#xFFFFFFFF;", "]]>", "<![CDATA[", "xmlns:x=\"\"",
                "XMLSchema-instance:type=\"\"", "xsi:type=\"a:b:c\"", "type=", "\"", "<returnval>",
                "</soapenv:Body>", "<soapenv:Fault>", "\u{0}", "\u{FEFF}",
            ]),
            at in 0usize..10_000,
        ) {
            let mut text = FIXTURES[which].to_owned();
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert_str(at, token);
            decode_all(text.as_bytes());
        }
    }

    /// A 307 from the SDK endpoint is an error naming it, and nothing follows it: a
    /// redirect would re-send a `Login` body (the password) to wherever it points.
    #[tokio::test]
    async fn a_redirect_is_an_error_and_is_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_addr = elsewhere.local_addr().unwrap();
        let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/sdk", redirecting.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = redirecting.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let _ = conn.read(&mut request).await.unwrap();
            let reply = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{elsewhere_addr}/sdk\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(reply.as_bytes()).await.unwrap();
            conn.shutdown().await.unwrap();
        });
        let mut config = SoapConfig::new(url);
        config.allow_plain_http = true;
        config.request_timeout = Duration::from_secs(10);
        let err = SoapClient::connect(config).await.unwrap_err();
        assert!(
            matches!(err, VsphereError::Http { status: 307, .. }),
            "{err:?}"
        );
        server.await.unwrap();
        let followed = tokio::time::timeout(Duration::from_millis(200), elsewhere.accept()).await;
        assert!(followed.is_err(), "the redirect was followed");
    }

    /// A server that is not there (vCenter restarting) is a passing failure, unlike a
    /// certificate that does not verify (the conformance suite's TLS case).
    #[tokio::test]
    async fn a_refused_connection_is_worth_trying_again() {
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("https://{}/sdk", gone.local_addr().unwrap())).unwrap();
        drop(gone);
        let mut config = SoapConfig::new(url);
        config.request_timeout = Duration::from_secs(10);
        let err = SoapClient::connect(config).await.unwrap_err();
        assert!(matches!(err, VsphereError::Transport { .. }), "{err:?}");
        assert!(
            err.is_retryable() && !err.is_certificate_failure(),
            "{err:?}"
        );
    }
}
