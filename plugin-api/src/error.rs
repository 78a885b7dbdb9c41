//! Errors of the typed client.

/// What a call through the client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The agent answered with an error status; `code` and `message` come from its body.
    #[error("{method} {path}: HTTP {status} {code}: {message}")]
    Status {
        /// HTTP method.
        method: String,
        /// Path called.
        path: String,
        /// HTTP status.
        status: u16,
        /// The error code from the body (`unauthorized`, `not_found`, …).
        code: String,
        /// The message from the body.
        message: String,
    },
    /// The request could not be sent or the response not read.
    #[error("{method} {path}: {reason}")]
    Transport {
        /// HTTP method.
        method: String,
        /// Path called.
        path: String,
        /// What failed (the token is never part of it).
        reason: String,
    },
    /// The response body is not what the contract says.
    #[error("{method} {path}: unexpected response body")]
    Decode {
        /// HTTP method.
        method: String,
        /// Path called.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The client could not be built (bad base URL, TLS set-up).
    #[error("client set-up: {0}")]
    Setup(String),
}

impl ApiError {
    /// The HTTP status of an error response, if this is one.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `code` of an error response's body (`conflict`, `clock_untrusted`, …; see
    /// [`crate::openapi::ERROR_CODES`]), if this is one.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}
