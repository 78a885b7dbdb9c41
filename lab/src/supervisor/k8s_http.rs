//! The Supervisor's HTTP routes on the vCenter's server: the Kubernetes API (`/version`,
//! `/api`, `/api/v1/...`, `/apis/...`), the cis task list (`GET /api/cis/tasks`) and the
//! lab control routes `/lab/supervisor`. Handlers parse, call [`Supervisor`] on a
//! blocking thread, and map errors to `Status` (k8s) or vAPI error bodies.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};

use super::store::{KindInfo, SupervisorError, VMOP_GROUP, VMOP_VERSIONS};
use super::{KINDS, Supervisor, SupervisorSettings};
use crate::vcenter::Vcenter;
use crate::vcenter::http::{
    api_error, api_session, authorised, json as json_response, unauthenticated,
};

type AppState = Arc<Vcenter>;
type Params = HashMap<String, String>;

/// The routes.
pub(crate) fn routes() -> Router<AppState> {
    let vmop = "/apis/vmoperator.vmware.com/{version}";
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route(vmop, get(vmop_resources))
        .route("/api/v1/namespaces", any(core))
        .route("/api/v1/namespaces/{ns}", any(core))
        .route("/api/v1/{plural}", get(core))
        .route("/api/v1/namespaces/{ns}/{plural}", any(core))
        .route("/api/v1/namespaces/{ns}/{plural}/{name}", any(core))
        .route(&format!("{vmop}/{{plural}}"), get(vmop_objects))
        .route(
            &format!("{vmop}/namespaces/{{ns}}/{{plural}}"),
            any(vmop_objects),
        )
        .route(
            &format!("{vmop}/namespaces/{{ns}}/{{plural}}/{{name}}"),
            any(vmop_objects),
        )
        .route("/api/cis/tasks", get(cis_task_list))
        .route(
            "/lab/supervisor",
            get(lab_settings_get).put(lab_settings_put),
        )
        .route("/lab/supervisor/reconcile", post(lab_reconcile))
}

fn k8s_authorised(vc: &Vcenter, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    vc.api_user(bearer).is_some() || authorised(vc, headers)
}

fn status(e: &SupervisorError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.status())
}

fn unauthorised() -> Response {
    status(&SupervisorError::new(401, "Unauthorized", "Unauthorized"))
}

async fn version(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    if !k8s_authorised(&vc, &headers) {
        return unauthorised();
    }
    json_response(
        StatusCode::OK,
        &json!({"major": "1", "minor": "30", "gitVersion": "v1.30.1+vmware.1-lab",
                "gitCommit": "0000000", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.22.2", "compiler": "gc", "platform": "linux/amd64"}),
    )
}

async fn api_versions(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    if !k8s_authorised(&vc, &headers) {
        return unauthorised();
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
    )
}

async fn api_groups(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    if !k8s_authorised(&vc, &headers) {
        return unauthorised();
    }
    let versions: Vec<Value> = VMOP_VERSIONS
        .iter()
        .rev()
        .map(|v| json!({"groupVersion": format!("{VMOP_GROUP}/{v}"), "version": v}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": VMOP_GROUP, "versions": versions,
            "preferredVersion": {"groupVersion": format!("{VMOP_GROUP}/v1alpha5"), "version": "v1alpha5"}}]}),
    )
}

async fn vmop_resources(
    State(vc): State<AppState>,
    Path(version): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !k8s_authorised(&vc, &headers) {
        return unauthorised();
    }
    if !VMOP_VERSIONS.contains(&version.as_str()) {
        return status(&SupervisorError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.group == VMOP_GROUP)
        .map(|k| json!({"name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": true,
                        "kind": k.kind, "verbs": ["create", "delete", "get", "list", "patch", "update"]}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": format!("{VMOP_GROUP}/{version}"), "resources": resources}),
    )
}

async fn core(
    State(vc): State<AppState>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(vc, "v1", p, q, method, headers, body).await
}

async fn vmop_objects(
    State(vc): State<AppState>,
    Path(p): Path<Params>,
    Query(q): Query<Params>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let version = p.get("version").cloned().unwrap_or_default();
    handle(vc, &version, p, q, method, headers, body).await
}

/// What a URL names: the kind, the namespace (`""` for namespaces, `None` for a list
/// across namespaces) and maybe a name.
fn target(
    version: &str,
    p: &Params,
) -> Result<(KindInfo, Option<String>, Option<String>), SupervisorError> {
    let not_found = || {
        SupervisorError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let Some(plural) = p.get("plural") else {
        return Ok((
            super::kind("namespaces"),
            Some(String::new()),
            p.get("ns").cloned(),
        ));
    };
    let k = KindInfo::find(plural)
        .filter(|k| k.plural == plural && k.namespaced)
        .ok_or_else(not_found)?;
    let group_ok = if version == "v1" {
        k.group.is_empty()
    } else {
        k.group == VMOP_GROUP && VMOP_VERSIONS.contains(&version)
    };
    if !group_ok {
        return Err(not_found());
    }
    Ok((k, p.get("ns").cloned(), p.get("name").cloned()))
}

async fn handle(
    vc: AppState,
    version: &str,
    p: Params,
    q: Params,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !k8s_authorised(&vc, &headers) {
        return unauthorised();
    }
    let version = version.to_owned();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    // `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`: the
    // objects' metadata only, as kube's `get_metadata` and `list_metadata` ask for.
    let metadata_only = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let result = tokio::task::spawn_blocking(move || {
        let sup = vc.supervisor();
        let (k, ns, name) = target(&version, &p)?;
        if sup.settings().forbidden_kinds.iter().any(|f| f == k.kind) {
            return Err(SupervisorError::new(
                403,
                "Forbidden",
                format!("{} is forbidden: the user cannot {method} resource {:?} in API group {:?}", k.plural, k.plural, k.group),
            ));
        }
        let all_namespaces = ns.is_none();
        let ns = ns.unwrap_or_default();
        let api_version = k.api_version(&version);
        let parse = || -> Result<Value, SupervisorError> {
            serde_json::from_slice(&body).map_err(|e| SupervisorError::bad_request(format!("the body is not JSON: {e}")))
        };
        let out = match (&method, name) {
            (&Method::GET, None) => {
                let sel = q.get("labelSelector").map(String::as_str);
                let items = if all_namespaces {
                    super::lock(&sup.store).list(&k, None, sel)?
                } else {
                    lock_list(sup, &k, &ns, sel)?
                };
                let rv = super::lock(&sup.store).resource_version();
                if metadata_only {
                    let items: Vec<Value> = items.into_iter().map(partial_metadata).collect();
                    return Ok((StatusCode::OK, json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                                                      "metadata": {"resourceVersion": rv}, "items": items})));
                }
                let items: Vec<Value> = items.into_iter().map(|o| rewrite(o, &k, &api_version)).collect();
                return Ok((StatusCode::OK, json!({"kind": format!("{}List", k.kind), "apiVersion": api_version,
                                                  "metadata": {"resourceVersion": rv}, "items": items})));
            }
            (&Method::POST, None) if !all_namespaces => return Ok((StatusCode::CREATED, rewrite(sup.create(&k, &ns, parse()?)?, &k, &api_version))),
            (&Method::GET, Some(n)) => {
                let o = super::lock(&sup.store).get(&k, &ns, &n).ok_or_else(|| SupervisorError::not_found(&k, &n))?;
                if metadata_only {
                    return Ok((StatusCode::OK, partial_metadata(o)));
                }
                o
            }
            (&Method::PUT, Some(n)) => sup.replace(&k, &ns, &n, parse()?)?,
            (&Method::PATCH, Some(n)) => sup.patch(&k, &ns, &n, &content_type, &parse()?)?,
            (&Method::DELETE, Some(n)) => sup.delete_object(&k, &ns, &n)?,
            _ => return Err(SupervisorError::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
        };
        Ok((StatusCode::OK, rewrite(out, &k, &api_version)))
    })
    .await;
    match result {
        Ok(Ok((code, v))) => json_response(code, &v),
        Ok(Err(e)) => status(&e),
        Err(_) => status(&SupervisorError::new(
            500,
            "InternalError",
            "handler panicked",
        )),
    }
}

fn lock_list(
    sup: &Supervisor,
    k: &KindInfo,
    ns: &str,
    sel: Option<&str>,
) -> Result<Vec<Value>, SupervisorError> {
    let store = super::lock(&sup.store);
    if k.namespaced && store.get(&super::kind("namespaces"), "", ns).is_none() {
        return Ok(Vec::new());
    }
    store.list(k, if k.namespaced { Some(ns) } else { None }, sel)
}

/// An object as `PartialObjectMetadata`: its metadata, nothing of its spec, status or data.
fn partial_metadata(o: Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"].clone()})
}

/// Serves the stored object under the requested version.
fn rewrite(mut o: Value, k: &KindInfo, api_version: &str) -> Value {
    o["apiVersion"] = api_version.into();
    o["kind"] = k.kind.into();
    o
}

/// `GET /api/cis/tasks?targets=VirtualMachine:vm-N`.
async fn cis_task_list(
    State(vc): State<AppState>,
    Query(q): Query<Params>,
    headers: HeaderMap,
) -> Response {
    if api_session(&vc, &headers).is_none() {
        return unauthenticated();
    }
    let tasks = vc
        .supervisor()
        .tasks_for(q.get("targets").map(String::as_str));
    json_response(StatusCode::OK, &Value::Object(tasks))
}

fn lab_authorised(vc: &Vcenter, headers: &HeaderMap) -> bool {
    k8s_authorised(vc, headers) || api_session(vc, headers).is_some()
}

async fn lab_settings_get(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    if !lab_authorised(&vc, &headers) {
        return unauthenticated();
    }
    json_response(
        StatusCode::OK,
        &serde_json::to_value(vc.supervisor().settings()).unwrap_or_default(),
    )
}

async fn lab_settings_put(State(vc): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !lab_authorised(&vc, &headers) {
        return unauthenticated();
    }
    let s: SupervisorSettings = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &e.to_string()),
    };
    let r =
        tokio::task::spawn_blocking(move || vc.supervisor().set_settings(s.clone()).map(|()| s))
            .await;
    match r {
        Ok(Ok(s)) => json_response(StatusCode::OK, &serde_json::to_value(s).unwrap_or_default()),
        Ok(Err(e)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, "ERROR", &e.to_string()),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn lab_reconcile(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    if !lab_authorised(&vc, &headers) {
        return unauthenticated();
    }
    match tokio::task::spawn_blocking(move || vc.supervisor().reconcile_all()).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => status(&e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
