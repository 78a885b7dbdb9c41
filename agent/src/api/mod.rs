//! The HTTP server implementing the plugin-api contract (`vadp-agent serve`). Filled by
//! `routes.rs` (the route table), `auth.rs` and `metrics.rs`.
