//! The vendor-facing contract of vadp-agent: request and response types under `/v1`,
//! the OpenAPI document and a typed client. The contract itself is built by the daemon
//! issue (#7); until then this crate only reserves its place in the workspace layout.
