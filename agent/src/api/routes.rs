//! The route table of `/v1` (plugin-api's `openapi::ROUTES` documents the same list) and
//! its handlers.

// Repository errors name what failed and are large; they travel on cold paths only.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use plugin_api::types::{
    BackupJobRequest, ErrorBody, GcResult, Health, Job, JobEnded, JobKind, JobList, Point,
    PointDeleted, PointDisk, PointList, PruneDecision, PruneRequest, PruneResult, Ready,
    ReconcileResult, RelatedList, RestoreJobRequest, VerifyJobRequest, VerifyRequest, VerifyResult,
};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::{auth, metrics};
use crate::config::SecretText;
use crate::daemon::backup_job::{
    engine_request, restore_requests, verify_result, verify_selection,
};
use crate::daemon::queue::{QueueError, StreamItem};
use crate::daemon::{Queue, Submission, maintenance};
use crate::engine::{self, Environment, Limits};
use crate::ids::RestorePointId;
use crate::repo::catalog::PointRecord;
use crate::repo::{RepoError, RetentionPolicy, VerifyOptions};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The job queue.
    pub queue: Queue,
    /// vCenter, VDDK and the repository.
    pub env: Environment,
    /// The bearer token.
    pub token: SecretText,
    /// Engine limits for new jobs.
    pub limits: Limits,
    /// The scheduling policies' names: a backup's `group` may not be one (a policy's
    /// retention takes the points of its group's jobs for its own).
    pub policies: Vec<String>,
    /// Set once start-up is complete.
    pub ready: AtomicBool,
    /// Cancelled when the daemon stops: a synchronous verify stops then rather than hold
    /// the server's graceful stop until it ends.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// An error response: status + [`ErrorBody`].
#[derive(Debug)]
pub struct ApiFailure(StatusCode, ErrorBody);

impl ApiFailure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(
            status,
            ErrorBody {
                code: code.into(),
                message: message.into(),
            },
        )
    }
    pub(super) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} {id}"),
        )
    }
    fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut r = axum::Json(self.1).into_response();
        *r.status_mut() = self.0;
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

/// The application: every route, the authenticated ones behind the token check.
pub fn app(state: Arc<AppState>) -> Router {
    let authenticated = Router::new()
        .route("/v1/jobs/backup", post(post_backup))
        .route("/v1/jobs/restore", post(post_restore))
        .route("/v1/jobs/verify", post(post_verify_job))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/points", get(list_points))
        .route("/v1/points/{id}", get(get_point).delete(delete_point))
        .route("/v1/points/{id}/related", get(get_point_related))
        .route("/v1/repository/verify", post(verify))
        .route("/v1/repository/prune", post(prune))
        .route("/v1/repository/gc", post(gc))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/metrics", get(get_metrics))
        .route("/v1/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_token,
        ));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .merge(authenticated)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Every error answers with an [`ErrorBody`], also those axum makes itself (an unknown
/// path, a method a route does not take, a body over the 2 MB limit), which are empty or
/// plain text.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than the 2 MB the API takes".to_owned(),
        ),
        other => (
            "http_error",
            other
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned(),
        ),
    };
    let mut json = ApiFailure::new(status, code, message).into_response();
    // What axum set besides (`Allow` on a 405) stays.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// Strict JSON parsing with our error body (axum's rejection would be plain text).
fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiFailure::bad_request(e.to_string()))
}

async fn short<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiFailure::internal(e.to_string()))?
        .map_err(ApiFailure::internal)
}

/// Long repository work on its own named thread ([`crate::daemon::on_thread`]), its errors
/// as HTTP answers.
async fn long<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, RepoError> + Send + 'static,
) -> ApiResult<T> {
    match crate::daemon::on_thread(name, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(repo_failure(e)),
        Err(e) => Err(ApiFailure::internal(e)),
    }
}

/// A repository error as an HTTP answer: 409 for what another holder or a restore stands
/// in the way of (retry later), 400 for a bad prune, 404 for an unknown point, 500 for the
/// rest (a lock file that cannot be opened is the machine's problem, not a conflict).
fn repo_failure(e: RepoError) -> ApiFailure {
    use crate::repo::ChunkStoreError;
    match e {
        RepoError::Lock(e @ ChunkStoreError::Busy { .. }) => {
            ApiFailure::new(StatusCode::CONFLICT, "conflict", engine::error_chain(&e))
        }
        RepoError::Prune(e) => ApiFailure::bad_request(e.to_string()),
        RepoError::PointNotFound(id) => ApiFailure::not_found("restore point", &id.to_string()),
        e @ RepoError::PointInUse(_) => {
            ApiFailure::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        e => ApiFailure::internal(engine::error_chain(&e)),
    }
}

async fn post_backup(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let request: BackupJobRequest = parse(&body)?;
    engine_request(&request, s.limits).map_err(ApiFailure::bad_request)?;
    if let Some(group) = &request.group
        && s.policies.iter().any(|p| p == group)
    {
        return Err(ApiFailure::bad_request(format!(
            "group: {group:?} is the name of scheduling policy {group}, whose retention would \
             remove this backup's points as its own; give the group another name"
        )));
    }
    let value = serde_json::to_value(&request).map_err(|e| ApiFailure::internal(e.to_string()))?;
    submit(
        &s,
        JobKind::Backup,
        request.idempotency_key,
        request.priority,
        value,
    )
    .await
}

async fn post_verify_job(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let request: VerifyJobRequest = parse(&body)?;
    verify_selection(request.subset.as_deref(), &request.points)
        .map_err(ApiFailure::bad_request)?;
    let value = serde_json::to_value(&request).map_err(|e| ApiFailure::internal(e.to_string()))?;
    submit(
        &s,
        JobKind::Verify,
        request.idempotency_key,
        request.priority,
        value,
    )
    .await
}

async fn post_restore(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let request: RestoreJobRequest = parse(&body)?;
    let points: Vec<_> = restore_requests(&request, s.limits)
        .map_err(ApiFailure::bad_request)?
        .iter()
        .map(|r| r.point)
        .collect();
    // An unknown point is the caller's mistake, answered now rather than by a failed job;
    // unless the request is a retry (its key known), answered with its job even when the
    // point has gone since (retention, DELETE), or 409 when it is another request.
    let retry = request
        .idempotency_key
        .as_deref()
        .is_some_and(|k| s.queue.knows_key(k));
    let catalog = s.env.repo.catalog().clone();
    let missing = short(move || {
        if retry {
            return Ok(None);
        }
        for point in points {
            if catalog
                .get_point(point)
                .map_err(|e| engine::error_chain(&e))?
                .is_none()
            {
                return Ok(Some(point));
            }
        }
        Ok(None)
    })
    .await?;
    if let Some(point) = missing {
        return Err(ApiFailure::not_found("restore point", &point.to_string()));
    }
    let value = serde_json::to_value(&request).map_err(|e| ApiFailure::internal(e.to_string()))?;
    submit(
        &s,
        JobKind::Restore,
        request.idempotency_key,
        request.priority,
        value,
    )
    .await
}

/// Queues a validated request: 202 with the new job, or 200 with the job an earlier
/// request of the same idempotency key created.
async fn submit(
    s: &AppState,
    kind: JobKind,
    idempotency_key: Option<String>,
    priority: i32,
    request: serde_json::Value,
) -> ApiResult<Response> {
    let submission = Submission {
        kind,
        idempotency_key,
        priority,
        request,
        origin: "api".into(),
    };
    let (job, new) = s.queue.submit(submission).await.map_err(|e| match e {
        QueueError::KeyReused { .. } => {
            ApiFailure::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        e => ApiFailure::internal(engine::error_chain(&e)),
    })?;
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(job)).into_response())
}

async fn list_jobs(State(s): State<Arc<AppState>>) -> axum::Json<JobList> {
    axum::Json(JobList {
        jobs: s.queue.list(),
    })
}

async fn get_job(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Job>> {
    s.queue
        .get(&id)
        .map(axum::Json)
        .ok_or_else(|| ApiFailure::not_found("job", &id))
}

async fn cancel_job(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Job>> {
    s.queue
        .cancel(&id)
        .await
        .map_err(|e| ApiFailure::internal(engine::error_chain(&e)))?
        .map(axum::Json)
        .ok_or_else(|| ApiFailure::not_found("job", &id))
}

/// The state of one SSE stream: replay the history, then follow live until the end.
struct Follow {
    history: VecDeque<Arc<serde_json::Value>>,
    ended: Option<Job>,
    rx: broadcast::Receiver<StreamItem>,
    done: bool,
}

fn progress_event(v: &serde_json::Value) -> Event {
    let name = v.get("event").and_then(|e| e.as_str()).unwrap_or("message");
    Event::default().event(name).data(v.to_string())
}

fn end_event(job: Job) -> Event {
    let data = serde_json::to_string(&JobEnded { job }).unwrap_or_default();
    Event::default().event("end").data(data)
}

async fn job_events(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let (history, ended, rx) = s
        .queue
        .subscribe(&id)
        .ok_or_else(|| ApiFailure::not_found("job", &id))?;
    let follow = Follow {
        history: history.into(),
        ended,
        rx,
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        if let Some(v) = f.history.pop_front() {
            return Some((Ok(progress_event(&v)), f));
        }
        if let Some(job) = f.ended.take() {
            f.done = true;
            return Some((Ok(end_event(job)), f));
        }
        loop {
            match f.rx.recv().await {
                Ok(StreamItem::Event(v)) => return Some((Ok(progress_event(&v)), f)),
                Ok(StreamItem::End(job)) => {
                    f.done = true;
                    return Some((Ok(end_event(*job)), f));
                }
                // A slow client missed some progress events; the next ones still come.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The API's view of points, with their job and the VMs that failed in it (read once per
/// job). On a blocking thread: it asks the catalog.
fn point_views(
    catalog: &crate::repo::CatalogHandle,
    points: Vec<PointRecord>,
) -> Result<Vec<Point>, String> {
    let mut failed_in: std::collections::HashMap<crate::ids::JobId, Vec<String>> =
        std::collections::HashMap::new();
    let chain = |e: crate::repo::CatalogError| engine::error_chain(&e);
    points
        .into_iter()
        .map(|p| {
            let job = p.job();
            let group_failed = match job {
                Some(job) => match failed_in.get(&job) {
                    Some(f) => f.clone(),
                    None => {
                        let f = catalog
                            .job_stats(job)
                            .map_err(chain)?
                            .map(|s| engine::failed_members(&s))
                            .unwrap_or_default();
                        failed_in.insert(job, f.clone());
                        f
                    }
                },
                None => Vec::new(),
            };
            Ok(Point {
                job: job.map(|j| j.to_string()),
                group_failed,
                ..point_view(p)
            })
        })
        .collect()
}

fn point_view(p: PointRecord) -> Point {
    Point {
        job: None,
        group_failed: Vec::new(),
        id: p.id.to_string(),
        vm: p.vm.moref.to_string(),
        name: p.vm.name,
        namespace: p.vm.namespace,
        created_at: p.created_at,
        kind: serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        reason: p.reason,
        parent: p.parent.map(|x| x.to_string()),
        disks: p
            .disks
            .into_iter()
            .map(|d| PointDisk {
                key: d.key.0,
                label: d.label,
                capacity_bytes: d.capacity_bytes,
                bytes_changed: d.bytes_changed,
                bytes_stored: d.bytes_stored,
            })
            .collect(),
        stats: p.stats,
    }
}

fn point_id(id: &str) -> ApiResult<RestorePointId> {
    id.parse()
        .map_err(|_| ApiFailure::not_found("restore point", id))
}

async fn list_points(State(s): State<Arc<AppState>>) -> ApiResult<axum::Json<PointList>> {
    let catalog = s.env.repo.catalog().clone();
    let points = short(move || {
        let points = catalog.list_points().map_err(|e| engine::error_chain(&e))?;
        point_views(&catalog, points)
    })
    .await?;
    Ok(axum::Json(PointList { points }))
}

async fn get_point(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Point>> {
    let pid = point_id(&id)?;
    let catalog = s.env.repo.catalog().clone();
    short(move || {
        let point = catalog
            .get_point(pid)
            .map_err(|e| engine::error_chain(&e))?;
        point_views(&catalog, point.into_iter().collect())
    })
    .await?
    .pop()
    .map(axum::Json)
    .ok_or_else(|| ApiFailure::not_found("restore point", &id))
}

/// The objects the point kept besides its disks, read from its config file (a missing or
/// damaged one is a 500 naming the file).
async fn get_point_related(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<RelatedList>> {
    let pid = point_id(&id)?;
    let repo = Arc::clone(&s.env.repo);
    let config = short(move || repo.point_config(pid).map_err(|e| engine::error_chain(&e)))
        .await?
        .ok_or_else(|| ApiFailure::not_found("restore point", &id))?;
    Ok(axum::Json(RelatedList {
        api_version: "v1".into(),
        kind: "List".into(),
        items: config.related,
    }))
}

async fn delete_point(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<PointDeleted>> {
    let pid = point_id(&id)?;
    let repo = Arc::clone(&s.env.repo);
    // Waits while GC runs (the shared lock), so a thread of its own.
    if !long("delete-point", move || repo.delete_point(pid)).await? {
        return Err(ApiFailure::not_found("restore point", &id));
    }
    // Unreferenced chunks go at the next GC (the daemon's own when `maintenance.auto_gc`).
    Ok(axum::Json(PointDeleted { id }))
}

async fn verify(
    State(s): State<Arc<AppState>>,
    body: Bytes,
) -> ApiResult<axum::Json<VerifyResult>> {
    // No body (the original form of this call) is `{}`.
    let request: VerifyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest::default()
    } else {
        parse(&body)?
    };
    let (subset, points) = verify_selection(request.subset.as_deref(), &request.points)
        .map_err(ApiFailure::bad_request)?;
    let repo = Arc::clone(&s.env.repo);
    let repair = request.repair;
    // Stopped between chunks when the client goes away (the handler's future is dropped,
    // and the guard with it: a client's retry does not stack full verifies) or when the
    // daemon stops; nothing is repaired then.
    let abandoned = s.shutdown.child_token();
    let _client_gone = abandoned.clone().drop_guard();
    let stopping = s.shutdown.clone();
    let (report, repaired) = long("verify", move || {
        engine::pause_point_blocking("api-verify-started");
        let stop = || abandoned.is_cancelled();
        let options = VerifyOptions {
            subset,
            repair,
            stop: Some(&stop),
            points,
        };
        repo.verify_with(&options, &mut |_, _| {})
    })
    .await
    .map_err(|e| {
        if stopping.is_cancelled() {
            ApiFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the agent is stopping: the verify was stopped (nothing repaired); run it \
                 again once the agent is back, or as a verify job",
            )
        } else {
            e
        }
    })?;
    Ok(axum::Json(verify_result(&report, repaired.as_ref())))
}

async fn prune(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult<axum::Json<PruneResult>> {
    let r: PruneRequest = parse(&body)?;
    let policy = RetentionPolicy {
        keep_last: r.keep_last,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        min_age_secs: i64::from(r.min_age_days) * 86_400,
    };
    policy
        .validate()
        .map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    let dry_run = r.dry_run;
    // Ages by a clock days off would remove points younger than the minimum age, as the
    // policies' retention knows (`daemon::clock`): a removal waits until the clocks agree.
    if !dry_run && let Some(why) = crate::daemon::clock::untrusted_because() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "clock_untrusted",
            format!(
                "{why}: a prune now could judge the points' ages wrongly; nothing removed \
                 (try again once the clocks agree, or use dry_run to see what it would \
                 remove)"
            ),
        ));
    }
    let repo = Arc::clone(&s.env.repo);
    let now = jiff::Timestamp::now().as_second();
    let decisions = long("prune", move || {
        repo.prune(&policy, now, &jiff::tz::TimeZone::system(), dry_run)
    })
    .await?;
    Ok(axum::Json(PruneResult {
        dry_run,
        decisions: decisions
            .into_iter()
            .map(|d| PruneDecision {
                id: d.id.to_string(),
                created_at: d.created_at,
                keep: d.keep,
                reasons: d.reasons.iter().map(|r| (*r).to_owned()).collect(),
            })
            .collect(),
    }))
}

async fn gc(State(s): State<Arc<AppState>>) -> ApiResult<axum::Json<GcResult>> {
    let repo = Arc::clone(&s.env.repo);
    let r = long("gc", move || repo.gc()).await?;
    Ok(axum::Json(GcResult {
        chunks_marked: r.chunks_marked as u64,
        chunks_removed: r.chunks_removed as u64,
        bytes_removed: r.bytes_removed,
    }))
}

async fn reconcile(State(s): State<Arc<AppState>>) -> ApiResult<axum::Json<ReconcileResult>> {
    let r = engine::reconcile(&s.env, &[], false)
        .await
        .map_err(|e| ApiFailure::internal(engine::error_chain(&e)))?;
    Ok(axum::Json(ReconcileResult {
        snapshots_removed: r
            .snapshots_removed
            .iter()
            .map(|(vm, snap)| format!("{vm}:{snap}"))
            .collect(),
        access_ended: r.access_ended.iter().map(ToString::to_string).collect(),
        transport_cleaned: r.transport_cleaned,
        jobs_interrupted: r.jobs_interrupted.iter().map(ToString::to_string).collect(),
        half_created_vms: r
            .half_created_vms
            .iter()
            .map(|(vm, d)| format!("{vm}: {d}"))
            .collect(),
        skipped_running: u32::try_from(r.skipped_running).unwrap_or(u32::MAX),
        other_vcenter: r.other_vcenter,
        errors: r.errors,
    }))
}

async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let (queued, running) = s.queue.figures();
    let is_ready = s.ready.load(Ordering::SeqCst);
    let body = Ready {
        ready: is_ready,
        reason: (!is_ready).then(|| "starting".to_owned()),
        queued: queued as u64,
        running: running as u64,
    };
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn get_metrics(State(s): State<Arc<AppState>>) -> ApiResult<Response> {
    let repo = Arc::clone(&s.env.repo);
    let (journal, upkeep) = short(move || {
        let err = |e: RepoError| engine::error_chain(&e);
        let journal = repo
            .catalog()
            .journal_open_entries()
            .map_err(|e| engine::error_chain(&e))?;
        let upkeep = metrics::Upkeep {
            gc_pending: repo.gc_pending_since().map_err(err)?.is_some(),
            verify: maintenance::last_verify_summary(&repo).map_err(err)?,
        };
        Ok((journal, upkeep))
    })
    .await?;
    let text = metrics::render(
        &s.queue,
        &journal,
        &upkeep,
        jiff::Timestamp::now().as_second(),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        plugin_api::openapi::document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::repo_failure;
    use crate::ids::RestorePointId;
    use crate::repo::{ChunkStoreError, RepoError};

    /// Another holder of the repository lock is a conflict to retry; a lock file that
    /// cannot be opened (permissions, a full or read-only disk) is not.
    #[test]
    fn only_a_held_lock_is_a_conflict() {
        let busy = RepoError::Lock(ChunkStoreError::Busy {
            path: "locks/repo.lock".into(),
        });
        assert_eq!(repo_failure(busy).0, StatusCode::CONFLICT);
        let unopenable = RepoError::Lock(ChunkStoreError::Lock {
            path: "locks/repo.lock".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        });
        let f = repo_failure(unopenable);
        assert_eq!(f.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(f.1.message.contains("locks/repo.lock"), "{}", f.1.message);
        let id = RestorePointId::new_random();
        assert_eq!(
            repo_failure(RepoError::PointNotFound(id)).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            repo_failure(RepoError::PointInUse(id)).0,
            StatusCode::CONFLICT
        );
    }
}
