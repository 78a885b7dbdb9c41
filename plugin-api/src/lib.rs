//! The vendor-facing contract of vadp-agent: the HTTP/JSON API under `/v1`.
//!
//! - [`types`]: the request and response types (serde). **Requests are strict**
//!   (`deny_unknown_fields`: a misspelt option is an error, never silently ignored);
//!   **responses are tolerant** (unknown fields are ignored and unknown states decode as
//!   `unknown`, so a newer agent does not break an older client).
//! - [`openapi`]: the OpenAPI 3.1 document generated from the types and the route table
//!   ([`openapi::ROUTES`]). It is committed as `plugin-api/openapi.json`; a test fails when
//!   the generated document differs (regenerate with
//!   `UPDATE_OPENAPI=1 cargo test -p plugin-api --test openapi`).
//! - `client` (feature `client`): a typed async client (reqwest, rustls, bearer token,
//!   server-sent events for job events).
//!
//! No runtime, no I/O outside the client.

#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod client;
pub mod error;
pub mod openapi;
pub mod types;

pub use error::ApiError;
