//! A typed async client of the `/v1` API: reqwest over rustls (ring), bearer token,
//! server-sent events for job events. Responses are parsed leniently (unknown fields
//! ignored).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::ApiError;
use crate::types::{
    BackupJobRequest, ErrorBody, GcResult, Health, Job, JobEnded, JobList, Point, PointDeleted,
    PointList, PruneRequest, PruneResult, Ready, ReconcileResult, RelatedList, RestoreJobRequest,
    VerifyJobRequest, VerifyRequest, VerifyResult,
};

/// The bearer token; never printed (`Debug` shows `***`).
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// Wrap a token (surrounding white space is removed).
    #[must_use]
    pub fn new(token: &str) -> Self {
        Self(Arc::from(token.trim()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// A client of one agent.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
}

/// One item of a job's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// An engine event (JSON with an `event` field: `disk_progress`, `vm_finished`, …).
    Progress(serde_json::Value),
    /// The last event: the job as it ended.
    End(Box<Job>),
}

/// The server-sent events of one job; read with [`EventStream::next`].
pub struct EventStream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    /// Bytes received and not yet parsed: a block is decoded only once whole, so that a
    /// character (or a `\r\n`) split between two reads arrives intact.
    buffer: Vec<u8>,
    path: String,
    ended: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("path", &self.path)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Where the first whole SSE block of `buf` ends (after its blank line, `\n\n` or
/// `\r\n\r\n`), if `buf` holds one.
fn block_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl EventStream {
    /// The next event; `None` after [`JobEvent::End`] or when the server closes the stream
    /// (at the daemon's stop, a queued job's stream closes without an `End`: the job stays
    /// queued for the next start, so `None` without `End` means ask for the job again).
    ///
    /// # Errors
    /// [`ApiError::Transport`] when the connection fails, [`ApiError::Decode`] for an event
    /// that is not JSON.
    pub async fn next(&mut self) -> Result<Option<JobEvent>, ApiError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if let Some(end) = block_end(&self.buffer) {
                let raw: Vec<u8> = self.buffer.drain(..end).collect();
                let block = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
                if let Some(event) = self.parse(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(ApiError::Transport {
                        method: "GET".into(),
                        path: self.path.clone(),
                        reason: e.to_string(),
                    });
                }
                None => return Ok(None),
            }
        }
    }

    /// One SSE block (`event:` and `data:` lines); comments and keep-alives give `None`.
    fn parse(&mut self, block: &str) -> Result<Option<JobEvent>, ApiError> {
        let mut name = "message";
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if data.is_empty() {
            return Ok(None);
        }
        let decode = |source| ApiError::Decode {
            method: "GET".into(),
            path: self.path.clone(),
            source,
        };
        if name == "end" {
            let ended: JobEnded = serde_json::from_str(&data).map_err(decode)?;
            self.ended = true;
            return Ok(Some(JobEvent::End(Box::new(ended.job))));
        }
        Ok(Some(JobEvent::Progress(
            serde_json::from_str(&data).map_err(decode)?,
        )))
    }
}

impl Client {
    /// A client of the agent at `base` (e.g. `http://127.0.0.1:8443`), authenticating with
    /// `token`. HTTPS uses the system's root certificates.
    ///
    /// # Errors
    /// [`ApiError::Setup`] for a base URL that is not http(s) or a TLS set-up failure.
    pub fn new(base: &str, token: Option<Token>) -> Result<Self, ApiError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs_or_empty() {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::with_tls(base, token, tls)
    }

    /// As [`Client::new`] with a TLS configuration of the caller's (a private CA, pinning).
    ///
    /// # Errors
    /// [`ApiError::Setup`].
    pub fn with_tls(
        base: &str,
        token: Option<Token>,
        tls: rustls::ClientConfig,
    ) -> Result<Self, ApiError> {
        let base = Url::parse(base).map_err(|e| ApiError::Setup(format!("base url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ApiError::Setup(format!(
                "base url scheme {:?} (http or https)",
                base.scheme()
            )));
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ApiError::Setup(e.to_string()))?;
        Ok(Self { http, base, token })
    }

    fn url(&self, path: &str) -> Result<Url, ApiError> {
        self.base
            .join(path)
            .map_err(|e| ApiError::Setup(format!("path {path}: {e}")))
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ApiError> {
        let mut rb = self.http.request(method, self.url(path)?);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(&t.0);
        }
        Ok(rb)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, ApiError> {
        let m = method.to_string();
        let mut rb = self.request(method, path)?;
        if let Some(body) = body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = rb.send().await.map_err(|e| ApiError::Transport {
            method: m.clone(),
            path: path.to_owned(),
            reason: e.without_url().to_string(),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let body: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
            code: status.canonical_reason().unwrap_or("error").to_lowercase(),
            message: text,
        });
        Err(ApiError::Status {
            method: m,
            path: path.to_owned(),
            status: status.as_u16(),
            code: body.code,
            message: body.message,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiError> {
        let m = method.to_string();
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|source| ApiError::Decode {
                method: m.clone(),
                path: path.to_owned(),
                source,
            })?;
        let resp = self.send(method, path, body).await?;
        let bytes = resp.bytes().await.map_err(|e| ApiError::Transport {
            method: m.clone(),
            path: path.to_owned(),
            reason: e.without_url().to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ApiError::Decode {
            method: m,
            path: path.to_owned(),
            source,
        })
    }

    /// `POST /v1/jobs/backup`: the new job (202), or with an `idempotency_key` already
    /// used for the same request the job that request created (200).
    ///
    /// # Errors
    /// [`ApiError`]; 400 for an invalid request, 409 (`conflict`) for an
    /// `idempotency_key` used for another request.
    pub async fn backup(&self, request: &BackupJobRequest) -> Result<Job, ApiError> {
        self.call(reqwest::Method::POST, "/v1/jobs/backup", Some(request))
            .await
    }

    /// `POST /v1/jobs/verify`: the new job (202), or with an `idempotency_key` already
    /// used for the same request the job that request created (200).
    ///
    /// # Errors
    /// [`ApiError`]; 400 for a malformed `subset` or point id, 409 (`conflict`) for an
    /// `idempotency_key` used for another request.
    pub async fn verify_job(&self, request: &VerifyJobRequest) -> Result<Job, ApiError> {
        self.call(reqwest::Method::POST, "/v1/jobs/verify", Some(request))
            .await
    }

    /// `POST /v1/jobs/restore`: the new job (202), or with an `idempotency_key` already
    /// used for the same request the job that request created (200).
    ///
    /// # Errors
    /// [`ApiError`]; 400 for an invalid request, 404 for an unknown point, 409
    /// (`conflict`) for an `idempotency_key` used for another request.
    pub async fn restore(&self, request: &RestoreJobRequest) -> Result<Job, ApiError> {
        self.call(reqwest::Method::POST, "/v1/jobs/restore", Some(request))
            .await
    }

    /// `GET /v1/jobs`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn jobs(&self) -> Result<JobList, ApiError> {
        self.call(reqwest::Method::GET, "/v1/jobs", None::<&()>)
            .await
    }

    /// `GET /v1/jobs/{id}`.
    ///
    /// # Errors
    /// [`ApiError`]; 404 for an unknown job.
    pub async fn job(&self, id: &str) -> Result<Job, ApiError> {
        self.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None::<&()>)
            .await
    }

    /// `POST /v1/jobs/{id}/cancel`.
    ///
    /// # Errors
    /// [`ApiError`]; 404 for an unknown job.
    pub async fn cancel(&self, id: &str) -> Result<Job, ApiError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/jobs/{id}/events`: the job's events from its start, ending with
    /// [`JobEvent::End`].
    ///
    /// # Errors
    /// [`ApiError`]; 404 for an unknown job.
    pub async fn events(&self, id: &str) -> Result<EventStream, ApiError> {
        let path = format!("/v1/jobs/{id}/events");
        let resp = self.send(reqwest::Method::GET, &path, None).await?;
        Ok(EventStream {
            body: resp.bytes_stream().boxed(),
            buffer: Vec::new(),
            path,
            ended: false,
        })
    }

    /// `GET /v1/points`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn points(&self) -> Result<PointList, ApiError> {
        self.call(reqwest::Method::GET, "/v1/points", None::<&()>)
            .await
    }

    /// `GET /v1/points/{id}`.
    ///
    /// # Errors
    /// [`ApiError`]; 404 for an unknown point.
    pub async fn point(&self, id: &str) -> Result<Point, ApiError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/points/{id}"),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/points/{id}/related`.
    ///
    /// # Errors
    /// [`ApiError`]; 404 for an unknown point.
    pub async fn point_related(&self, id: &str) -> Result<RelatedList, ApiError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/points/{id}/related"),
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/points/{id}`.
    ///
    /// # Errors
    /// [`ApiError`]; 404 for an unknown point, 409 (`conflict`) while a restore uses it or
    /// the repository lock cannot be taken.
    pub async fn delete_point(&self, id: &str) -> Result<PointDeleted, ApiError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/points/{id}"),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/repository/verify` (no body).
    ///
    /// # Errors
    /// [`ApiError`]; 409 (`conflict`) when the repository lock cannot be taken.
    pub async fn verify(&self) -> Result<VerifyResult, ApiError> {
        self.call(reqwest::Method::POST, "/v1/repository/verify", None::<&()>)
            .await
    }

    /// `POST /v1/repository/verify` with `{"repair": true}`.
    ///
    /// # Errors
    /// [`ApiError`]; 409 (`conflict`) when the repository lock cannot be taken.
    pub async fn verify_and_repair(&self) -> Result<VerifyResult, ApiError> {
        self.call(
            reqwest::Method::POST,
            "/v1/repository/verify",
            Some(&VerifyRequest {
                repair: true,
                ..VerifyRequest::default()
            }),
        )
        .await
    }

    /// `POST /v1/repository/verify` with any options (`repair`, `subset`, `points`).
    ///
    /// # Errors
    /// [`ApiError`]; 400 for a malformed `subset` or point id, 404 for an unknown point,
    /// 409 (`conflict`) when the repository lock cannot be taken.
    pub async fn verify_with(&self, request: &VerifyRequest) -> Result<VerifyResult, ApiError> {
        self.call(
            reqwest::Method::POST,
            "/v1/repository/verify",
            Some(request),
        )
        .await
    }

    /// `POST /v1/repository/prune`.
    ///
    /// # Errors
    /// [`ApiError`]; 400 for a policy that keeps nothing or a minimum age under 3 days;
    /// 409 with code `clock_untrusted` (see [`ApiError::code`]) when not a dry run while
    /// this machine's clock and vCenter's disagree (nothing removed), `conflict` when the
    /// repository lock cannot be taken.
    pub async fn prune(&self, request: &PruneRequest) -> Result<PruneResult, ApiError> {
        self.call(reqwest::Method::POST, "/v1/repository/prune", Some(request))
            .await
    }

    /// `POST /v1/repository/gc`.
    ///
    /// # Errors
    /// [`ApiError`]; 409 (`conflict`) while the repository is in use (a backup, restore,
    /// verify, prune or removal holds its lock).
    pub async fn gc(&self) -> Result<GcResult, ApiError> {
        self.call(reqwest::Method::POST, "/v1/repository/gc", None::<&()>)
            .await
    }

    /// `POST /v1/reconcile`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn reconcile(&self) -> Result<ReconcileResult, ApiError> {
        self.call(reqwest::Method::POST, "/v1/reconcile", None::<&()>)
            .await
    }

    /// `GET /v1/health` (no token needed).
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn health(&self) -> Result<Health, ApiError> {
        self.call(reqwest::Method::GET, "/v1/health", None::<&()>)
            .await
    }

    /// `GET /v1/ready` (no token needed).
    ///
    /// # Errors
    /// [`ApiError`]; 503 while not ready (the server's body is then a [`Ready`], not an
    /// [`ErrorBody`]: it is the error's message, as JSON).
    pub async fn ready(&self) -> Result<Ready, ApiError> {
        self.call(reqwest::Method::GET, "/v1/ready", None::<&()>)
            .await
    }

    /// `GET /v1/metrics`: Prometheus text.
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let resp = self.send(reqwest::Method::GET, "/v1/metrics", None).await?;
        resp.text().await.map_err(|e| ApiError::Transport {
            method: "GET".into(),
            path: "/v1/metrics".into(),
            reason: e.to_string(),
        })
    }

    /// `GET /v1/openapi.json`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub async fn openapi(&self) -> Result<serde_json::Value, ApiError> {
        self.call(reqwest::Method::GET, "/v1/openapi.json", None::<&()>)
            .await
    }
}

fn rustls_native_certs_or_empty() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_never_printed() {
        let t = Token::new(" s3cret\n");
        assert_eq!(&*t.0, "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        let c = Client::new("http://127.0.0.1:1", Some(t)).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(Client::new("ftp://x", None).is_err());
    }

    /// A character, and a `\r\n`, split between two reads arrive intact.
    #[test]
    fn an_event_split_inside_a_character_is_decoded_whole() {
        let text = "event: vm_finished\r\ndata: {\"name\":\"Größe\"}\r\n\r\nevent: x\ndata: {}\n\n";
        let bytes = text.as_bytes();
        let cut = text.find('ö').unwrap() + 1;
        let crlf = text.find("\r\n").unwrap() + 1;
        let pieces: Vec<reqwest::Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::copy_from_slice(&bytes[..crlf])),
            Ok(bytes::Bytes::copy_from_slice(&bytes[crlf..cut])),
            Ok(bytes::Bytes::copy_from_slice(&bytes[cut..])),
        ];
        let mut stream = EventStream {
            body: futures_util::stream::iter(pieces).boxed(),
            buffer: Vec::new(),
            path: "/v1/jobs/j/events".into(),
            ended: false,
        };
        // Every piece is there at once: each `next` is ready when first polled.
        use futures_util::FutureExt as _;
        let first = stream.next().now_or_never().unwrap().unwrap().unwrap();
        match first {
            JobEvent::Progress(v) => assert_eq!(v["name"], "Größe", "{v}"),
            JobEvent::End(_) => panic!("not the end"),
        }
        assert!(matches!(
            stream.next().now_or_never().unwrap().unwrap(),
            Some(JobEvent::Progress(_))
        ));
        assert!(stream.next().now_or_never().unwrap().unwrap().is_none());
    }
}
