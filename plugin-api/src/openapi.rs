//! The OpenAPI 3.1 document of the `/v1` API, generated from [`crate::types`] and
//! [`ROUTES`] (the route table the server implements, `agent/src/api/routes.rs`).
//!
//! The document is committed as `plugin-api/openapi.json` and served at
//! `GET /v1/openapi.json`; `tests/openapi.rs` fails when they differ. Regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p plugin-api --test openapi`.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::ObjectBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem,
    PathsBuilder, Ref, ResponseBuilder, Type,
};

use crate::types;

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path with `{param}` placeholders.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Schema name of the JSON request body, if any.
    pub request: Option<&'static str>,
    /// Success status.
    pub status: u16,
    /// Schema name of the success body; `None` for a non-JSON body (see `media`).
    pub response: Option<&'static str>,
    /// Media type of the success body.
    pub media: &'static str,
    /// Whether the bearer token is required.
    pub authenticated: bool,
}

/// HTTP methods used by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// DELETE
    Delete,
}

const JSON: &str = "application/json";

const fn route(
    method: Method,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    status: u16,
    response: Option<&'static str>,
) -> Route {
    Route {
        method,
        path,
        summary,
        request,
        status,
        response,
        media: JSON,
        authenticated: true,
    }
}

/// Every route of `/v1`, in the order the document lists them.
pub const ROUTES: &[Route] = &[
    route(
        Method::Post,
        "/v1/jobs/backup",
        "Queue a backup of a group of VMs (idempotent with idempotency_key)",
        Some("BackupJobRequest"),
        202,
        Some("Job"),
    ),
    route(
        Method::Post,
        "/v1/jobs/restore",
        "Queue a restore of a point",
        Some("RestoreJobRequest"),
        202,
        Some("Job"),
    ),
    route(
        Method::Post,
        "/v1/jobs/verify",
        "Queue a verify of the repository (progress events, cancellable; optionally a subset, repair)",
        Some("VerifyJobRequest"),
        202,
        Some("Job"),
    ),
    route(
        Method::Get,
        "/v1/jobs",
        "List jobs, newest first",
        None,
        200,
        Some("JobList"),
    ),
    route(
        Method::Get,
        "/v1/jobs/{id}",
        "A job: state, progress, result",
        None,
        200,
        Some("Job"),
    ),
    route(
        Method::Post,
        "/v1/jobs/{id}/cancel",
        "Cancel a queued or running job",
        None,
        200,
        Some("Job"),
    ),
    Route {
        media: "text/event-stream",
        ..route(
            Method::Get,
            "/v1/jobs/{id}/events",
            "The job's events as server-sent events, ending with `end` (JobEnded)",
            None,
            200,
            None,
        )
    },
    route(
        Method::Get,
        "/v1/points",
        "List restore points",
        None,
        200,
        Some("PointList"),
    ),
    route(
        Method::Get,
        "/v1/points/{id}",
        "A restore point",
        None,
        200,
        Some("Point"),
    ),
    route(
        Method::Delete,
        "/v1/points/{id}",
        "Remove a restore point (chunks go at the next GC)",
        None,
        200,
        Some("PointDeleted"),
    ),
    route(
        Method::Post,
        "/v1/repository/verify",
        "Re-read every chunk and check its digest; optionally repair",
        Some("VerifyRequest"),
        200,
        Some("VerifyResult"),
    ),
    route(
        Method::Post,
        "/v1/repository/prune",
        "Apply a retention policy",
        Some("PruneRequest"),
        200,
        Some("PruneResult"),
    ),
    route(
        Method::Post,
        "/v1/repository/gc",
        "Remove chunks no point references",
        None,
        200,
        Some("GcResult"),
    ),
    route(
        Method::Post,
        "/v1/reconcile",
        "Undo what interrupted jobs left in vSphere",
        None,
        200,
        Some("ReconcileResult"),
    ),
    Route {
        authenticated: false,
        ..route(
            Method::Get,
            "/v1/health",
            "The process is up",
            None,
            200,
            Some("Health"),
        )
    },
    Route {
        authenticated: false,
        ..route(
            Method::Get,
            "/v1/ready",
            "The daemon accepts jobs",
            None,
            200,
            Some("Ready"),
        )
    },
    Route {
        media: "text/plain; version=0.0.4",
        ..route(
            Method::Get,
            "/v1/metrics",
            "Prometheus metrics",
            None,
            200,
            None,
        )
    },
    route(
        Method::Get,
        "/v1/openapi.json",
        "This document",
        None,
        200,
        None,
    ),
];

fn schema_ref(name: &str) -> Ref {
    Ref::from_schema_name(name)
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            JSON,
            ContentBuilder::new()
                .schema(Some(schema_ref("ErrorBody")))
                .build(),
        )
        .build()
}

/// The OpenAPI document of the API.
#[must_use]
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for r in ROUTES {
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .operation_id(Some(operation_id(r)));
        if r.path.contains("{id}") {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(utoipa::openapi::Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some(req) = r.request {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        JSON,
                        ContentBuilder::new().schema(Some(schema_ref(req))).build(),
                    )
                    .required(Some(utoipa::openapi::Required::True))
                    .build(),
            ));
        }
        let content = match r.response {
            Some(name) => ContentBuilder::new().schema(Some(schema_ref(name))).build(),
            None if r.path.ends_with("openapi.json") => ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                .build(),
            None => ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        };
        op = op.response(
            r.status.to_string(),
            ResponseBuilder::new()
                .description("success")
                .content(r.media, content)
                .build(),
        );
        if r.request.is_some() {
            op = op.response("400", error_response("invalid request"));
        }
        if r.path.contains("{id}") {
            op = op.response("404", error_response("no such object"));
        }
        if r.authenticated {
            op = op
                .response("401", error_response("missing or wrong bearer token"))
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        if r.path.starts_with("/v1/jobs/") && !r.path.contains("{id}") {
            op = op.response(
                "409",
                error_response("idempotency key already used for another request"),
            );
        }
        if r.path == "/v1/jobs/restore" {
            op = op
                .response("404", error_response("no such restore point"))
                .response("501", error_response("restore not wired in this build"));
        }
        if r.path == "/v1/repository/verify" {
            op = op.response("404", error_response("no such restore point"));
        }
        let method = match r.method {
            Method::Get => HttpMethod::Get,
            Method::Post => HttpMethod::Post,
            Method::Delete => HttpMethod::Delete,
        };
        paths = paths.path(r.path, PathItem::new(method, op.build()));
    }
    let components = ComponentsBuilder::new()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token in the daemon's token file (mode 0600), as `Authorization: Bearer <token>`",
                    ))
                    .build(),
            ),
        )
        .schema_from::<types::VmSpec>()
        .schema_from::<types::BackupJobRequest>()
        .schema_from::<types::RestoreMode>()
        .schema_from::<types::SubnetMapping>()
        .schema_from::<types::RestoreJobRequest>()
        .schema_from::<types::JobKind>()
        .schema_from::<types::JobState>()
        .schema_from::<types::Progress>()
        .schema_from::<types::Job>()
        .schema_from::<types::JobList>()
        .schema_from::<types::JobEnded>()
        .schema_from::<types::PointDisk>()
        .schema_from::<types::Point>()
        .schema_from::<types::PointList>()
        .schema_from::<types::PointDeleted>()
        .schema_from::<types::VerifyRequest>()
        .schema_from::<types::VerifyJobRequest>()
        .schema_from::<types::VerifyResult>()
        .schema_from::<types::PruneRequest>()
        .schema_from::<types::PruneDecision>()
        .schema_from::<types::PruneResult>()
        .schema_from::<types::GcResult>()
        .schema_from::<types::ReconcileResult>()
        .schema_from::<types::Health>()
        .schema_from::<types::Ready>()
        .schema_from::<types::ErrorBody>()
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("vadp-agent")
                .version("1")
                .description(Some(
                    "The vendor-facing API of vadp-agent: backup and restore jobs, restore points, \
                     repository maintenance. Requests are strict (unknown fields are refused); \
                     responses may grow fields.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

fn operation_id(r: &Route) -> String {
    let method = match r.method {
        Method::Get => "get",
        Method::Post => "post",
        Method::Delete => "delete",
    };
    let path: String = r
        .path
        .trim_start_matches("/v1/")
        .replace(['/', '.'], "_")
        .replace(['{', '}'], "");
    format!("{method}_{path}")
}

/// The document as pretty JSON with a trailing newline, exactly as committed.
///
/// # Panics
/// Never: the document is plain data.
#[must_use]
pub fn document_json() -> String {
    let mut s = serde_json::to_string_pretty(&document()).expect("an OpenAPI document serializes");
    s.push('\n');
    s
}
