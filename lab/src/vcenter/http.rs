//! The HTTP side: the axum route table (`/sdk`, `/folder`, `/api`, `/lab`) and the
//! accept loop (TLS with rustls on the ring provider, or plain HTTP).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::TryStreamExt as _;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use super::lab_api;
use super::server::Vcenter;
use super::soap::cookie_value;

type AppState = Arc<Vcenter>;

/// The route table.
pub(crate) fn app(vc: Arc<Vcenter>) -> Router {
    Router::new()
        .route("/sdk", post(sdk))
        .route("/folder/{*path}", get(folder_get).put(folder_put))
        .route(
            "/api/session",
            post(api_login).get(api_session_get).delete(api_logout),
        )
        .route("/api/cis/tasks/{task}", get(cis_task))
        .route(
            "/api/vcenter/namespaces/instances/{ns}/registervm",
            post(registervm),
        )
        .merge(lab_api::routes())
        .merge(crate::supervisor::k8s_http::routes())
        .with_state(vc)
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers.get(header::COOKIE).and_then(|v| v.to_str().ok()))
}

/// (user, password) from `Authorization: Basic`.
pub(crate) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Whether the request carries a live SOAP session or the lab credentials.
pub(crate) fn authorised(vc: &Vcenter, headers: &HeaderMap) -> bool {
    if vc.session(cookie(headers).as_deref()).is_some() {
        return true;
    }
    basic_auth(headers).is_some_and(|(u, p)| vc.check_credentials(&u, &p).is_ok())
}

async fn sdk(State(vc): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let c = cookie(&headers);
    let reply = match tokio::task::spawn_blocking(move || vc.soap(c.as_deref(), &body)).await {
        Ok(r) => r,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    if let Some(set) = reply
        .set_cookie
        .and_then(|s| HeaderValue::from_str(&s).ok())
    {
        resp.headers_mut().insert(header::SET_COOKIE, set);
    }
    resp
}

#[derive(Debug, serde::Deserialize)]
struct FolderQuery {
    #[serde(rename = "dcPath")]
    dc_path: Option<String>,
    #[serde(rename = "dsName")]
    ds_name: Option<String>,
}

/// The host file behind `/folder/<path>?dcPath&dsName`, or the status to answer.
fn folder_file(
    vc: &Vcenter,
    headers: &HeaderMap,
    path: &str,
    q: &FolderQuery,
) -> Result<std::path::PathBuf, StatusCode> {
    if vc.session(cookie(headers).as_deref()).is_none() {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let inv = vc.inventory();
    if q.dc_path.as_deref().map(|d| d.trim_matches('/')) != Some(inv.datacenter_name.as_str()) {
        return Err(StatusCode::NOT_FOUND);
    }
    let ds = q.ds_name.as_deref().ok_or(StatusCode::NOT_FOUND)?;
    if inv.datastore_by_name(ds).is_none() {
        return Err(StatusCode::NOT_FOUND);
    }
    let mut file = crate::datastore::datastore_dir(vc.lab.root(), ds);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg == ".." || seg == "." {
            return Err(StatusCode::BAD_REQUEST);
        }
        file.push(seg);
    }
    Ok(file)
}

async fn folder_get(
    State(vc): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<FolderQuery>,
    headers: HeaderMap,
) -> Response {
    let file = match folder_file(&vc, &headers, &path, &q) {
        Ok(f) => f,
        Err(s) => return s.into_response(),
    };
    match tokio::fs::File::open(&file).await {
        Ok(f) if file.is_file() => {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            let stream = tokio_util::io::ReaderStream::new(f);
            let mut resp = Response::new(Body::from_stream(stream));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn folder_put(
    State(vc): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<FolderQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let file = match folder_file(&vc, &headers, &path, &q) {
        Ok(f) => f,
        Err(s) => return s.into_response(),
    };
    let existed = file.exists();
    // As vCenter, no directory is made: the client makes it first (MakeDirectory).
    if file.parent().is_none_or(|dir| !dir.is_dir()) {
        return (
            StatusCode::NOT_FOUND,
            "the directory of the file does not exist",
        )
            .into_response();
    }
    let tmp = file.with_extension("vadp-upload");
    let result = async {
        let mut out = tokio::fs::File::create(&tmp).await?;
        let mut stream = body.into_data_stream().map_err(std::io::Error::other);
        while let Some(chunk) = stream.try_next().await? {
            out.write_all(&chunk).await?;
        }
        out.sync_all().await?;
        tokio::fs::rename(&tmp, &file).await
    }
    .await;
    match result {
        Ok(()) if existed => StatusCode::OK.into_response(),
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(_) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A vAPI error body.
pub(crate) fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "error_type": error_type,
        "messages": [{"id": format!("vapi.lab.{}", error_type.to_lowercase()), "default_message": message, "args": []}],
    });
    json(status, &body)
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

const API_SESSION_HEADER: &str = "vmware-api-session-id";

fn api_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(API_SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The user of the request's vAPI session.
pub(crate) fn api_session(vc: &Vcenter, headers: &HeaderMap) -> Option<String> {
    vc.api_user(api_token(headers).as_deref())
}

/// The 401 of a vAPI call without a valid session.
pub(crate) fn unauthenticated() -> Response {
    api_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "no valid session",
    )
}

async fn api_login(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    let Some((u, p)) = basic_auth(&headers) else {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "basic authentication required",
        );
    };
    match vc.api_login(&u, &p) {
        Ok(token) => json(StatusCode::CREATED, &serde_json::Value::String(token)),
        Err(_) => api_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "invalid user name or password",
        ),
    }
}

/// `GET /api/session`: the session's `Info` (here its user only), or 401 when the token
/// names no live session; what a client asks to learn whether its session still stands.
async fn api_session_get(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    match api_session(&vc, &headers) {
        Some(user) => json(StatusCode::OK, &serde_json::json!({ "user": user })),
        None => unauthenticated(),
    }
}

async fn api_logout(State(vc): State<AppState>, headers: HeaderMap) -> Response {
    match api_token(&headers) {
        Some(t) if vc.api_logout(&t) => StatusCode::NO_CONTENT.into_response(),
        _ => unauthenticated(),
    }
}

/// `GET /api/cis/tasks/{task}`: the vim25 tasks seen through cis `Info`.
async fn cis_task(
    State(vc): State<AppState>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Response {
    if api_session(&vc, &headers).is_none() {
        return unauthenticated();
    }
    let key = task.split(':').next().unwrap_or_default();
    let Some(t) = vc.tasks.get(key) else {
        return api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("task {task} not found"),
        );
    };
    json(StatusCode::OK, &super::tasks_cis::cis_info(&t))
}

/// `POST /api/vcenter/namespaces/instances/{ns}/registervm`: a strict `RegisterVMSpec`;
/// answers the cis task id (the Supervisor runs the task).
async fn registervm(
    State(vc): State<AppState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    vc.take_registervm_session_end();
    let Some(user) = api_session(&vc, &headers) else {
        return unauthenticated();
    };
    let spec: crate::supervisor::RegisterVmSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!("RegisterVMSpec: {e}"),
            );
        }
    };
    let r =
        tokio::task::spawn_blocking(move || vc.supervisor().register_vm(&ns, spec, &user)).await;
    match r {
        Ok(Ok(task)) => json(StatusCode::OK, &serde_json::Value::String(task)),
        Ok(Err(e)) => api_error(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.error_type,
            &e.message,
        ),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves `app` on `listener` until the process ends; TLS when `tls` is set.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => serve_conn(stream, app, peer).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "lab vcenter: tls handshake failed")
                    }
                },
                None => serve_conn(tcp, app, peer).await,
            }
        });
    }
}

async fn serve_conn<S>(stream: S, app: Router, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper_util::service::TowerToHyperService::new(app);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(%peer, error = %e, "lab vcenter: connection ended with an error");
    }
}
