//! The Supervisor's Kubernetes API, through the `kube` crate: what a restore reads before
//! it changes anything (does the VirtualMachine exist, its backup-version annotation) and
//! what it verifies after registration (the VirtualMachine, PoweredOff, its `restored-*`
//! PVCs bound to the restored disks).
//!
//! The connection uses the agent's own TLS rules (system roots, a CA file, or a pinned
//! thumbprint — [`TlsVerification`]) through a hyper client handed to `kube`, and a bearer
//! token: a vCenter SSO session token (what `kubectl vsphere login` exchanges for the
//! Supervisor), which the lab's Supervisor accepts directly.
//!
//! A token can end while a job runs: vCenter ends a session left unused for 30 minutes (a
//! restore's disk copy lasts longer), and a token from `kubectl vsphere login` lasts
//! 10 hours. A call the Supervisor answers 401 asks the token's source for a new one
//! ([`RenewToken`]: the vAPI session, logged in again if vCenter ended it, or the token
//! file, read again) and is made once more with it. Callers that meet the 401 together
//! wait for one renewal.

use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;
use http::HeaderValue;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::client::ConfigExt as _;
use zeroize::Zeroizing;

use crate::vsphere::{TlsVerification, tls_client_config};

/// Errors talking to the Supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A bad URL or TLS set-up.
    #[error("supervisor api {url}: {reason}")]
    Config {
        /// The API address.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A request failed.
    #[error("supervisor api: {what}")]
    Api {
        /// What we asked for.
        what: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
}

impl SupervisorError {
    /// Whether the Supervisor could not be reached or would not take the session (no
    /// connection, TLS, a timeout, a 401), rather than refused one request: asking again
    /// in the same job would only wait for the same failure.
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Config { .. } => true,
            Self::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(e) => e.code == 401,
                _ => true,
            },
        }
    }
}

/// The API group of VM Operator's resources.
pub const VMOP_GROUP: &str = "vmoperator.vmware.com";

/// The longest one Supervisor API call may take, connection and TLS included.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a new bearer token comes from when the Supervisor refuses the one it has: given
/// the refused token, a new one, or `None` when there is nothing better to offer (the
/// source still gives the same token); an error says why none could be had.
/// The tokens are zeroed in memory when dropped.
pub type RenewToken = Arc<
    dyn Fn(Zeroizing<String>) -> BoxFuture<'static, Result<Option<Zeroizing<String>>, String>>
        + Send
        + Sync,
>;

/// The bearer token every request carries, and its renewal.
struct Token {
    /// `Bearer …`, marked sensitive (never shown by `Debug`).
    header: RwLock<HeaderValue>,
    renew: Option<RenewToken>,
    /// Held while renewing: callers that met the same 401 wait for one renewal.
    renewing: tokio::sync::Mutex<()>,
}

impl Token {
    fn current(&self) -> HeaderValue {
        self.header
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After the Supervisor refused `refused` (401): whether another token is in place
    /// now, renewed by this call or by another caller meanwhile.
    async fn renew(&self, refused: &HeaderValue) -> bool {
        let Some(renew) = &self.renew else {
            return false;
        };
        let _one = self.renewing.lock().await;
        if self.current() != *refused {
            return true;
        }
        let old = Zeroizing::new(
            refused
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned(),
        );
        match renew(old).await {
            Ok(Some(token)) => match bearer(&token) {
                Ok(header) => {
                    tracing::info!("the Supervisor refused its token; going on with a new one");
                    *self
                        .header
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = header;
                    true
                }
                Err(reason) => {
                    tracing::warn!(reason, "the new Supervisor token is unusable");
                    false
                }
            },
            Ok(None) => {
                tracing::warn!(
                    "the Supervisor refused its token, and its source has no other (vCenter \
                     still takes the session, or the token file holds the same token)"
                );
                false
            }
            Err(reason) => {
                tracing::warn!(
                    reason,
                    "the Supervisor refused its token, and no new one could be had"
                );
                false
            }
        }
    }
}

/// The `Authorization` value of `token`, marked sensitive.
fn bearer(token: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&Zeroizing::new(format!("Bearer {token}")))
        .map_err(|_| "the token is not a header value".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// A client of one Supervisor.
#[derive(Clone)]
pub struct Supervisor {
    client: kube::Client,
    url: String,
    token: Arc<Token>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("url", &self.url)
            .finish()
    }
}

impl Supervisor {
    /// A client for the API at `url` (`https://host:port`), verified with `tls`,
    /// authenticated with the bearer `token` (never logged), renewed by `renew` when the
    /// Supervisor refuses it (see the module's doc).
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Config`] for a bad URL, TLS set-up or token.
    pub fn connect(
        url: &str,
        tls: &TlsVerification,
        token: &str,
        renew: Option<RenewToken>,
    ) -> Result<Self, SupervisorError> {
        let config_err = |reason: String| SupervisorError::Config {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| config_err(format!("{e}")))?;
        // The bearer token never crosses the network in the clear.
        if uri.scheme_str() != Some("https") {
            return Err(config_err(
                "the Supervisor is reached over https only (its bearer token must not travel \
                 in the clear)"
                    .into(),
            ));
        }
        let config = kube::Config::new(uri);
        let token = Arc::new(Token {
            header: RwLock::new(bearer(token).map_err(config_err)?),
            renew,
            renewing: tokio::sync::Mutex::new(()),
        });
        let mut tls = tls_client_config(tls).map_err(|e| config_err(e.to_string()))?;
        // hyper-rustls sets ALPN itself (HTTP/1.1 here).
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        let sent = Arc::clone(&token);
        let service = tower::ServiceBuilder::new()
            // Every call is a short read or write: a Supervisor (or load balancer) that
            // accepts and never answers fails it instead of holding a restore for ever.
            .layer(tower::timeout::TimeoutLayer::new(CALL_TIMEOUT))
            .layer(config.base_uri_layer())
            // The token in place when the request leaves (see `Token::renew`).
            .map_request(move |mut request: http::Request<kube::client::Body>| {
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, sent.current());
                request
            })
            .map_err(|e: hyper_util::client::legacy::Error| -> tower::BoxError { e.into() })
            .service(http);
        Ok(Self {
            client: kube::Client::new(service, "default"),
            url: url.to_owned(),
            token,
        })
    }

    /// `op` with the client; once more after a 401 if the token could be renewed.
    async fn call<T, Fut>(&self, op: impl Fn(kube::Client) -> Fut) -> Result<T, kube::Error>
    where
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let sent = self.token.current();
        match op(self.client.clone()).await {
            Err(kube::Error::Api(e)) if e.code == 401 && self.token.renew(&sent).await => {
                op(self.client.clone()).await
            }
            result => result,
        }
    }
}

/// VM Operator's `kind` in `namespace`, at API `version`.
fn vmop_api(
    client: kube::Client,
    namespace: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(VMOP_GROUP, version, kind);
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&gvk))
}

impl Supervisor {
    /// The VirtualMachine `name` in `namespace`, read at API `version` (`v1alpha3`), or
    /// `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`].
    pub async fn virtual_machine(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<DynamicObject>, SupervisorError> {
        self.call(|c| async move {
            vmop_api(c, namespace, version, "VirtualMachine")
                .get_opt(name)
                .await
        })
        .await
        .map_err(|source| SupervisorError::Api {
            what: format!("get VirtualMachine {namespace}/{name}"),
            source: Box::new(source),
        })
    }

    /// Annotation `key` of Supervisor namespace `namespace` (`vmware-system-resource-pool`,
    /// say: where WCP keeps the namespace's vSphere objects, VSPHERE.md §A.11); `None` when
    /// the namespace or the annotation is not there.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`] (an account that may not read namespaces gets a 403).
    pub async fn namespace_annotation(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<String>, SupervisorError> {
        self.call(|c| async move { Api::<Namespace>::all(c).get_opt(namespace).await })
            .await
            .map(|ns| {
                ns.and_then(|n| n.metadata.annotations)
                    .and_then(|mut a| a.remove(key))
            })
            .map_err(|source| SupervisorError::Api {
                what: format!("get Namespace {namespace}"),
                source: Box::new(source),
            })
    }

    /// The PersistentVolumeClaims of `namespace`.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`].
    pub async fn pvcs(
        &self,
        namespace: &str,
    ) -> Result<Vec<PersistentVolumeClaim>, SupervisorError> {
        self.call(|c| async move {
            Api::<PersistentVolumeClaim>::namespaced(c, namespace)
                .list(&ListParams::default())
                .await
        })
        .await
        .map(|l| l.items)
        .map_err(|source| SupervisorError::Api {
            what: format!("list PersistentVolumeClaims of {namespace}"),
            source: Box::new(source),
        })
    }

    /// The objects of VM Operator's `kind` (`VirtualMachineService`, `VirtualMachineGroup`)
    /// in `namespace`, read at API `version`; `None` when the Supervisor does not serve
    /// that kind at that version (404: VirtualMachineGroup is younger than v1alpha3, say).
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`].
    async fn vmop_objects(
        &self,
        namespace: &str,
        kind: &str,
        version: &str,
    ) -> Result<Option<Vec<DynamicObject>>, SupervisorError> {
        match self
            .call(|c| async move {
                vmop_api(c, namespace, version, kind)
                    .list(&ListParams::default())
                    .await
            })
            .await
        {
            Ok(l) => Ok(Some(l.items)),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(source) => Err(SupervisorError::Api {
                what: format!("list {kind}s of {namespace}"),
                source: Box::new(source),
            }),
        }
    }

    /// Creates VM Operator object `obj` (a kept VirtualMachineGroup or
    /// VirtualMachineService, see [`crate::vmservice::related`]) in `namespace`, at the
    /// API version its `apiVersion` names. An object of that kind and name already there is
    /// left as it is ([`Created::AlreadyThere`]): the user's object wins over the backup's.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`] (permission refused, invalid object …);
    /// [`SupervisorError::Config`] for an object without kind, name or version.
    pub async fn create_vmop_object(
        &self,
        namespace: &str,
        obj: &serde_json::Value,
    ) -> Result<Created, SupervisorError> {
        use crate::vmservice::related::{describe, kind_of, name_of, version_of};
        let what = describe(obj);
        let (Some(kind), Some(_), Some(version)) = (kind_of(obj), name_of(obj), version_of(obj))
        else {
            return Err(SupervisorError::Config {
                url: self.url.clone(),
                reason: format!("{what} has no kind, name or apiVersion"),
            });
        };
        let mut obj = obj.clone();
        obj["metadata"]["namespace"] = namespace.into();
        let object: DynamicObject =
            serde_json::from_value(obj).map_err(|e| SupervisorError::Config {
                url: self.url.clone(),
                reason: format!("{what}: {e}"),
            })?;
        let object = &object;
        match self
            .call(|c| async move {
                vmop_api(c, namespace, version, kind)
                    .create(&kube::api::PostParams::default(), object)
                    .await
            })
            .await
        {
            Ok(_) => Ok(Created::Created),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Created::AlreadyThere),
            // A 404 names either the resource (kind or version not served) or the
            // namespace (`namespaces "x" not found`), which is an error of its own.
            Err(kube::Error::Api(e)) if e.code == 404 && !e.message.starts_with("namespaces ") => {
                Ok(Created::NotServed)
            }
            Err(source) => Err(SupervisorError::Api {
                what: format!("create {what} in {namespace}"),
                source: Box::new(source),
            }),
        }
    }

    /// The objects of VM Operator's `kind` in `namespace`, read at API `version` if the
    /// Supervisor serves the kind there, else at the newest version of
    /// [`crate::vmservice::SUPPORTED_API_VERSIONS`] that it serves (VirtualMachineGroup is
    /// younger than a VM's v1alpha3, say). Each item gets the `apiVersion` it was read at
    /// when the list leaves it out. `None` when no version serves the kind.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`].
    pub async fn vmop_objects_served(
        &self,
        namespace: &str,
        kind: &str,
        version: &str,
    ) -> Result<Option<Vec<serde_json::Value>>, SupervisorError> {
        let others = crate::vmservice::SUPPORTED_API_VERSIONS
            .iter()
            .rev()
            .filter(|v| **v != version);
        for v in std::iter::once(version).chain(others.copied()) {
            if let Some(items) = self.vmop_objects(namespace, kind, v).await? {
                let api_version = format!("{VMOP_GROUP}/{v}");
                return Ok(Some(
                    items
                        .into_iter()
                        .filter_map(|o| serde_json::to_value(o).ok())
                        .map(|mut o| {
                            if o.get("apiVersion").is_none_or(serde_json::Value::is_null) {
                                o["apiVersion"] = api_version.clone().into();
                            }
                            o
                        })
                        .collect(),
                ));
            }
        }
        Ok(None)
    }

    /// The VirtualMachines of `namespace`, read at API `version`.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`].
    pub async fn virtual_machines(
        &self,
        namespace: &str,
        version: &str,
    ) -> Result<Vec<DynamicObject>, SupervisorError> {
        self.call(|c| async move {
            vmop_api(c, namespace, version, "VirtualMachine")
                .list(&ListParams::default())
                .await
        })
        .await
        .map(|l| l.items)
        .map_err(|source| SupervisorError::Api {
            what: format!("list VirtualMachines of {namespace}"),
            source: Box::new(source),
        })
    }

    /// Whether the Secret (`kind` `"Secret"`) or ConfigMap (`"ConfigMap"`) `name` exists
    /// in `namespace`, read as metadata only (`PartialObjectMetadata`, one `get`): neither
    /// its data nor any other object is asked for.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Api`]; [`SupervisorError::Config`] for another kind.
    pub async fn bootstrap_exists(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<bool, SupervisorError> {
        let api_error = |source| SupervisorError::Api {
            what: format!("get {kind} {namespace}/{name}"),
            source: Box::new(source),
        };
        match kind {
            "Secret" => self
                .call(|c| async move {
                    Api::<Secret>::namespaced(c, namespace)
                        .get_metadata_opt(name)
                        .await
                })
                .await
                .map(|o| o.is_some())
                .map_err(api_error),
            "ConfigMap" => self
                .call(|c| async move {
                    Api::<ConfigMap>::namespaced(c, namespace)
                        .get_metadata_opt(name)
                        .await
                })
                .await
                .map(|o| o.is_some())
                .map_err(api_error),
            other => Err(SupervisorError::Config {
                url: self.url.clone(),
                reason: format!("{other} is not a bootstrap resource kind"),
            }),
        }
    }
}

/// What [`Supervisor::create_vmop_object`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was created.
    Created,
    /// An object of its kind and name was there already, and was left as it is.
    AlreadyThere,
    /// The Supervisor does not serve its kind at its API version (404).
    NotServed,
}

#[cfg(test)]
mod tests {
    use super::Supervisor;
    use crate::vsphere::TlsVerification;

    /// The bearer token never goes over plain HTTP.
    #[test]
    fn a_plain_http_supervisor_is_refused() {
        let Err(e) = Supervisor::connect(
            "http://supervisor.example.com:6443",
            &TlsVerification::SystemRoots,
            "token",
            None,
        ) else {
            panic!("connected over plain http");
        };
        assert!(e.to_string().contains("https only"), "{e}");
    }
}
