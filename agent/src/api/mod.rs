//! The HTTP server implementing the plugin-api contract (`vadp-agent serve`).
//!
//! - `routes.rs` is the whole route table; handlers parse, call the queue, the repository
//!   or the engine, and map errors to status codes, nothing else.
//! - `auth.rs`: bearer token on every route except `/v1/health` and `/v1/ready`; the token
//!   is compared in constant time and never logged.
//! - `metrics.rs`: the Prometheus text of `/v1/metrics`.
//! - `server.rs`: TCP and unix-socket listeners, graceful shutdown, sd-notify (READY,
//!   STATUS, WATCHDOG).
//! - `tls.rs`: HTTPS on the TCP listener when `api.tls_cert` and `api.tls_key` are given.
//!
//! Nothing blocking runs on the tokio workers: catalog calls are short `spawn_blocking`
//! calls to the `catalog` thread; verify and GC run on named threads.

mod auth;
mod metrics;
mod routes;
mod server;
mod tls;

pub use routes::{AppState, app};
pub use server::{Listeners, serve};
pub use tls::{HANDSHAKE_TIMEOUT, MAX_HANDSHAKES, TlsListener, server_config};
