//! The OpenAPI 3.1 document of the `/v1` API, generated from [`crate::types`] and
//! [`ROUTES`] (the route table the server implements, `agent/src/api/routes.rs`).
//!
//! The document is committed as `plugin-api/openapi.json` and served at
//! `GET /v1/openapi.json`; `tests/openapi.rs` fails when they differ, and when [`ROUTES`]
//! disagrees with the server's route table and handlers (paths, methods, authentication,
//! status codes, error codes, request bodies). Regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p plugin-api --test openapi`.

use utoipa::openapi::header::HeaderBuilder;
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
    /// Whether the request body must be given (`false`: no body is `{}`).
    pub request_required: bool,
    /// Success status.
    pub status: u16,
    /// Schema name of the success body; `None` for a non-JSON body (see `media`).
    pub response: Option<&'static str>,
    /// Media type of the success body.
    pub media: &'static str,
    /// Whether the bearer token is required (a missing or wrong one is a 401).
    pub authenticated: bool,
    /// Every other answer of the route (JSON), besides the 401 of an authenticated one.
    pub answers: &'static [Answer],
}

/// An answer of a route other than its success status (and the 401 of authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Schema name of the JSON body (`ErrorBody` for an error).
    pub schema: &'static str,
    /// When it is answered; for an error, the `code`s its [`types::ErrorBody`] may carry.
    pub description: &'static str,
    /// The `code`s of an [`types::ErrorBody`] answer (empty for another schema).
    pub codes: &'static [&'static str],
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

/// Every `code` an [`types::ErrorBody`] of the server can carry, with its status (`None`:
/// any status the HTTP layer answers itself) and meaning.
pub const ERROR_CODES: &[(&str, Option<u16>, &str)] = &[
    (
        "bad_request",
        Some(400),
        "a body that is not JSON of the request type (an unknown field is refused) or an invalid value",
    ),
    ("unauthorized", Some(401), "missing or wrong bearer token"),
    (
        "not_found",
        Some(404),
        "no such job, restore point or route",
    ),
    (
        "method_not_allowed",
        Some(405),
        "the path does not take that method",
    ),
    (
        "conflict",
        Some(409),
        "an idempotency key reused for another request, the repository lock busy, a point a restore is using",
    ),
    (
        "clock_untrusted",
        Some(409),
        "a prune while this machine's clock and vCenter's disagree, or before they were compared",
    ),
    ("payload_too_large", Some(413), "a body over 2 MB"),
    (
        "stopping",
        Some(503),
        "the agent is stopping: a synchronous verify was stopped, nothing repaired",
    ),
    (
        "internal",
        Some(500),
        "the agent failed; the message says what",
    ),
    (
        "http_error",
        None,
        "another error of the HTTP layer, e.g. a body that could not be read or a path parameter that is not UTF-8",
    ),
];

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
        request_required: request.is_some(),
        status,
        response,
        media: JSON,
        authenticated: true,
        answers: &[],
    }
}

const fn error(status: u16, codes: &'static [&'static str], description: &'static str) -> Answer {
    Answer {
        status,
        schema: "ErrorBody",
        description,
        codes,
    }
}

const RESUBMITTED: Answer = Answer {
    status: 200,
    schema: "Job",
    description: "The job an earlier request with the same idempotency_key and the same request \
                  created (a retry): nothing new is queued",
    codes: &[],
};
const BAD_BODY: Answer = error(
    400,
    &["bad_request", "http_error"],
    "bad_request: the body is not JSON of the request type (an unknown field is refused) or a \
     value is invalid; http_error: the body could not be read",
);
const BAD_ID: Answer = error(
    400,
    &["http_error"],
    "http_error: the id is not UTF-8 once percent-decoded",
);
const TOO_LARGE: Answer = error(
    413,
    &["payload_too_large"],
    "payload_too_large: the body is over 2 MB",
);
const KEY_REUSED: Answer = error(
    409,
    &["conflict"],
    "conflict: the idempotency_key names a job made from another request",
);
const INTERNAL: Answer = error(
    500,
    &["internal"],
    "internal: the agent failed (catalog, repository); the message says what",
);
const NO_JOB: Answer = error(404, &["not_found"], "not_found: no job of that id");
const NO_POINT: Answer = error(
    404,
    &["not_found"],
    "not_found: no restore point of that id (also an id that is not a restore point id)",
);

/// Every route of `/v1`, in the order the document lists them.
pub const ROUTES: &[Route] = &[
    Route {
        answers: &[RESUBMITTED, BAD_BODY, KEY_REUSED, TOO_LARGE, INTERNAL],
        ..route(
            Method::Post,
            "/v1/jobs/backup",
            "Queue a backup of a group of VMs (idempotent with idempotency_key: 202 new job, 200 the earlier one)",
            Some("BackupJobRequest"),
            202,
            Some("Job"),
        )
    },
    Route {
        answers: &[
            RESUBMITTED,
            BAD_BODY,
            error(
                404,
                &["not_found"],
                "not_found: no restore point of that id",
            ),
            KEY_REUSED,
            TOO_LARGE,
            INTERNAL,
        ],
        ..route(
            Method::Post,
            "/v1/jobs/restore",
            "Queue a restore of a point (idempotent with idempotency_key: 202 new job, 200 the earlier one)",
            Some("RestoreJobRequest"),
            202,
            Some("Job"),
        )
    },
    Route {
        answers: &[RESUBMITTED, BAD_BODY, KEY_REUSED, TOO_LARGE, INTERNAL],
        ..route(
            Method::Post,
            "/v1/jobs/verify",
            "Queue a verify of the repository (progress events, cancellable; optionally a subset, repair; \
             idempotent with idempotency_key: 202 new job, 200 the earlier one)",
            Some("VerifyJobRequest"),
            202,
            Some("Job"),
        )
    },
    route(
        Method::Get,
        "/v1/jobs",
        "List jobs, newest first",
        None,
        200,
        Some("JobList"),
    ),
    Route {
        answers: &[BAD_ID, NO_JOB],
        ..route(
            Method::Get,
            "/v1/jobs/{id}",
            "A job: state, progress, result",
            None,
            200,
            Some("Job"),
        )
    },
    Route {
        answers: &[BAD_ID, NO_JOB, INTERNAL],
        ..route(
            Method::Post,
            "/v1/jobs/{id}/cancel",
            "Cancel a queued or running job",
            None,
            200,
            Some("Job"),
        )
    },
    Route {
        media: "text/event-stream",
        answers: &[BAD_ID, NO_JOB],
        ..route(
            Method::Get,
            "/v1/jobs/{id}/events",
            "The job's events as server-sent events, ending with `end` (JobEnded); at the \
             daemon's stop, a queued job's stream closes without it (the job stays queued and \
             runs after the next start: GET it, or follow it again)",
            None,
            200,
            None,
        )
    },
    Route {
        answers: &[INTERNAL],
        ..route(
            Method::Get,
            "/v1/points",
            "List restore points",
            None,
            200,
            Some("PointList"),
        )
    },
    Route {
        answers: &[BAD_ID, NO_POINT, INTERNAL],
        ..route(
            Method::Get,
            "/v1/points/{id}",
            "A restore point",
            None,
            200,
            Some("Point"),
        )
    },
    Route {
        answers: &[BAD_ID, NO_POINT, INTERNAL],
        ..route(
            Method::Get,
            "/v1/points/{id}/related",
            "The VirtualMachineGroup and VirtualMachineServices the point kept, as a List for kubectl",
            None,
            200,
            Some("RelatedList"),
        )
    },
    Route {
        answers: &[
            BAD_ID,
            NO_POINT,
            error(
                409,
                &["conflict"],
                "conflict: a restore is using the point (a running GC is waited for, not \
                 answered with 409)",
            ),
            INTERNAL,
        ],
        ..route(
            Method::Delete,
            "/v1/points/{id}",
            "Remove a restore point (chunks go at the next GC)",
            None,
            200,
            Some("PointDeleted"),
        )
    },
    Route {
        request_required: false,
        answers: &[
            BAD_BODY,
            error(
                404,
                &["not_found"],
                "not_found: a restore point of `points` does not exist",
            ),
            error(
                409,
                &["conflict"],
                "conflict: a repository lock was busy (not expected: a running GC is waited for)",
            ),
            error(
                503,
                &["stopping"],
                "stopping: the agent is stopping; the verify was stopped between chunks and \
                 repaired nothing (a client that goes away stops it too)",
            ),
            TOO_LARGE,
            INTERNAL,
        ],
        ..route(
            Method::Post,
            "/v1/repository/verify",
            "Re-read every chunk and check its digest; optionally repair (no body is `{}`; a \
             running GC is waited for)",
            Some("VerifyRequest"),
            200,
            Some("VerifyResult"),
        )
    },
    Route {
        answers: &[
            BAD_BODY,
            error(
                409,
                &["clock_untrusted"],
                "clock_untrusted: not a dry run while this machine's clock and vCenter's \
                 disagree, or before they were first compared (nothing removed); a running GC \
                 is waited for",
            ),
            TOO_LARGE,
            INTERNAL,
        ],
        ..route(
            Method::Post,
            "/v1/repository/prune",
            "Apply a retention policy",
            Some("PruneRequest"),
            200,
            Some("PruneResult"),
        )
    },
    Route {
        answers: &[
            error(
                409,
                &["conflict"],
                "conflict: the repository is in use (a backup, restore, verify, prune or \
                 removal holds its lock)",
            ),
            INTERNAL,
        ],
        ..route(
            Method::Post,
            "/v1/repository/gc",
            "Remove chunks no point references",
            None,
            200,
            Some("GcResult"),
        )
    },
    Route {
        answers: &[INTERNAL],
        ..route(
            Method::Post,
            "/v1/reconcile",
            "Undo what interrupted jobs left in vSphere",
            None,
            200,
            Some("ReconcileResult"),
        )
    },
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
        answers: &[Answer {
            status: 503,
            schema: "Ready",
            description: "Not ready yet (starting): `ready` is false and `reason` says why",
            codes: &[],
        }],
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
        answers: &[INTERNAL],
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

fn json_response(description: &str, schema: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            JSON,
            ContentBuilder::new()
                .schema(Some(schema_ref(schema)))
                .build(),
        )
        .build()
}

fn unauthorized() -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description("unauthorized: missing or wrong bearer token")
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("`Bearer`"))
                .build(),
        )
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
            let required = if r.request_required {
                utoipa::openapi::Required::True
            } else {
                utoipa::openapi::Required::False
            };
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        JSON,
                        ContentBuilder::new().schema(Some(schema_ref(req))).build(),
                    )
                    .required(Some(required))
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
        for a in r.answers {
            op = op.response(a.status.to_string(), json_response(a.description, a.schema));
        }
        if r.authenticated {
            op = op
                .response("401", unauthorized())
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()));
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
        .schema_from::<types::RelatedList>()
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
                     responses may grow fields. Every error answers with an ErrorBody (the 503 \
                     of /v1/ready with a Ready), also those of the HTTP layer: an unknown path \
                     is a 404 (not_found), a method a path does not take a 405 \
                     (method_not_allowed, with Allow), a body over 2 MB a 413 \
                     (payload_too_large).",
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
