//! Datastore file transfer over HTTPS (VSPHERE.md §A.11):
//! `GET|PUT /folder/<path>?dcPath=<datacenter>&dsName=<datastore>` with the vim25 session
//! cookie. Bodies are streamed in both directions — a file is never held in memory.

use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use url::Url;

use super::soap::SoapClient;

impl SoapClient {
    /// Streams the datastore file `path` into `sink`; returns the bytes written.
    ///
    /// # Errors
    ///
    /// [`DatastoreError::Http`] (404 for a missing file), transport or write errors.
    pub async fn download(
        &self,
        path: &DatastorePath,
        sink: &mut (impl AsyncWrite + Unpin + Send),
    ) -> Result<u64, DatastoreError> {
        self.download_at_most(path, sink, u64::MAX).await
    }

    /// The datastore file `path` in memory, refused once it passes `max_bytes` (a VMX:
    /// a file that should be small is not trusted to be).
    ///
    /// # Errors
    ///
    /// As [`Self::download`]; [`DatastoreError::TooLarge`].
    pub async fn download_small(
        &self,
        path: &DatastorePath,
        max_bytes: u64,
    ) -> Result<Vec<u8>, DatastoreError> {
        let mut bytes = Vec::new();
        self.download_at_most(path, &mut bytes, max_bytes).await?;
        Ok(bytes)
    }

    async fn download_at_most(
        &self,
        path: &DatastorePath,
        sink: &mut (impl AsyncWrite + Unpin + Send),
        max_bytes: u64,
    ) -> Result<u64, DatastoreError> {
        let url = self.folder_url(path)?;
        let get = || async {
            self.http()
                .get(url.clone())
                .header(COOKIE, self.cookie_header(path)?)
                .send()
                .await
                .map_err(|source| DatastoreError::Transport {
                    op: "GET",
                    path: path.to_string(),
                    source,
                })
        };
        let before = self.session_cookie();
        let mut response = get().await?;
        // vCenter ended the session (restarted, idle timeout)? A SOAP call finds out and
        // logs in again if so; then the file is asked for again (nothing was written to
        // `sink` yet). A 401 with the session alive (a missing privilege) stays a 401,
        // and makes no new session.
        if response.status() == reqwest::StatusCode::UNAUTHORIZED && self.can_log_in() {
            self.renew_session(path).await?;
            if self.session_cookie() != before {
                response = get().await?;
            }
        }
        check_status("GET", path, response.status())?;
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| DatastoreError::Transport {
                op: "GET",
                path: path.to_string(),
                source,
            })?;
            if written.saturating_add(chunk.len() as u64) > max_bytes {
                return Err(DatastoreError::TooLarge {
                    path: path.to_string(),
                    max_bytes,
                });
            }
            sink.write_all(&chunk)
                .await
                .map_err(|source| DatastoreError::Local { path: None, source })?;
            written += chunk.len() as u64;
        }
        sink.flush()
            .await
            .map_err(|source| DatastoreError::Local { path: None, source })?;
        Ok(written)
    }

    /// Downloads `path` into the local file `dest` (created or truncated).
    ///
    /// # Errors
    ///
    /// As [`SoapClient::download`], plus local file errors.
    pub async fn download_to_file(
        &self,
        path: &DatastorePath,
        dest: &Path,
    ) -> Result<u64, DatastoreError> {
        let mut file =
            tokio::fs::File::create(dest)
                .await
                .map_err(|source| DatastoreError::Local {
                    path: Some(dest.to_owned()),
                    source,
                })?;
        let written = self.download(path, &mut file).await?;
        file.sync_all()
            .await
            .map_err(|source| DatastoreError::Local {
                path: Some(dest.to_owned()),
                source,
            })?;
        Ok(written)
    }

    /// Streams `length_bytes` from `source` to the datastore file `path` (created or
    /// replaced). The directory must exist on real vSphere (FileManager.MakeDirectory).
    ///
    /// # Errors
    ///
    /// [`DatastoreError::Http`] or transport errors.
    pub async fn upload(
        &self,
        path: &DatastorePath,
        source: impl AsyncRead + Send + Sync + 'static,
        length_bytes: u64,
    ) -> Result<(), DatastoreError> {
        let url = self.folder_url(path)?;
        // The body is a stream and cannot be sent twice: a session vCenter ended since the
        // last call (a restart) is found, and logged in again, before it is sent.
        if self.can_log_in() {
            self.renew_session(path).await?;
        }
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(source));
        let response = self
            .http()
            .put(url)
            .header(COOKIE, self.cookie_header(path)?)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length_bytes)
            .body(body)
            .send()
            .await
            .map_err(|source| DatastoreError::Transport {
                op: "PUT",
                path: path.to_string(),
                source,
            })?;
        check_status("PUT", path, response.status())
    }

    /// Uploads the local file `src` to `path`.
    ///
    /// # Errors
    ///
    /// As [`SoapClient::upload`], plus local file errors.
    pub async fn upload_file(
        &self,
        path: &DatastorePath,
        src: &Path,
    ) -> Result<(), DatastoreError> {
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|source| DatastoreError::Local {
                path: Some(src.to_owned()),
                source,
            })?;
        let length = file
            .metadata()
            .await
            .map_err(|source| DatastoreError::Local {
                path: Some(src.to_owned()),
                source,
            })?
            .len();
        self.upload(path, file, length).await
    }

    /// A SOAP call, which logs in again if vCenter ended the session (and only then), for
    /// a transfer of `path`.
    async fn renew_session(&self, path: &DatastorePath) -> Result<(), DatastoreError> {
        self.current_time()
            .await
            .map(drop)
            .map_err(|source| DatastoreError::Session {
                path: path.to_string(),
                source: Box::new(source),
            })
    }

    fn folder_url(&self, path: &DatastorePath) -> Result<Url, DatastoreError> {
        let mut url = self.url().clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut segments = url.path_segments_mut().map_err(|()| DatastoreError::Url {
                path: path.to_string(),
            })?;
            segments.clear().push("folder");
            segments.extend(path.path.split('/').filter(|s| !s.is_empty()));
        }
        url.query_pairs_mut()
            .append_pair("dcPath", &path.datacenter)
            .append_pair("dsName", &path.datastore);
        Ok(url)
    }

    fn cookie_header(&self, path: &DatastorePath) -> Result<HeaderValue, DatastoreError> {
        let cookie = self
            .session_cookie()
            .ok_or_else(|| DatastoreError::NotLoggedIn {
                path: path.to_string(),
            })?;
        let mut value = HeaderValue::from_str(&cookie.header_value()).map_err(|_| {
            DatastoreError::NotLoggedIn {
                path: path.to_string(),
            }
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn check_status(
    op: &'static str,
    path: &DatastorePath,
    status: reqwest::StatusCode,
) -> Result<(), DatastoreError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(DatastoreError::Http {
            op,
            path: path.to_string(),
            status: status.as_u16(),
        })
    }
}

/// A file on a datastore, addressed as datastore HTTP wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatastorePath {
    /// The datacenter's inventory path, e.g. `DC0` or `Folder/DC1`.
    pub datacenter: String,
    /// The datastore name.
    pub datastore: String,
    /// The path inside the datastore, e.g. `web-1/web-1.vmx`.
    pub path: String,
}

impl DatastorePath {
    /// Parses `[ds] dir/file` within `datacenter`.
    ///
    /// # Errors
    ///
    /// [`DatastoreError::Url`] when `bracketed` is not `[name] path`.
    pub fn parse(datacenter: &str, bracketed: &str) -> Result<Self, DatastoreError> {
        let bad = || DatastoreError::Url {
            path: bracketed.to_owned(),
        };
        let rest = bracketed.trim().strip_prefix('[').ok_or_else(bad)?;
        let (datastore, path) = rest.split_once(']').ok_or_else(bad)?;
        if datastore.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            datacenter: datacenter.to_owned(),
            datastore: datastore.to_owned(),
            path: path.trim().to_owned(),
        })
    }
}

impl std::fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.path)
    }
}

/// Errors of datastore file transfer.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// The path cannot be turned into a URL.
    #[error("invalid datastore path {path:?}")]
    Url {
        /// The path given.
        path: String,
    },
    /// No session cookie: log in first.
    #[error("datastore file {path}: no vsphere session")]
    NotLoggedIn {
        /// The file.
        path: String,
    },
    /// The request did not complete.
    #[error("{op} datastore file {path}: transport failure")]
    Transport {
        /// `GET` or `PUT`.
        op: &'static str,
        /// The file.
        path: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// vCenter ended the session and logging in again failed.
    #[error("datastore file {path}: the vSphere session could not be renewed")]
    Session {
        /// `[datastore] dir/file`.
        path: String,
        /// Why.
        #[source]
        source: Box<super::VsphereError>,
    },
    /// The server refused.
    #[error("{op} datastore file {path}: http status {status}")]
    Http {
        /// `GET` or `PUT`.
        op: &'static str,
        /// The file.
        path: String,
        /// The status code.
        status: u16,
    },
    /// The file is larger than it can be for what it is read for.
    #[error("GET datastore file {path}: larger than {max_bytes} bytes")]
    TooLarge {
        /// The file.
        path: String,
        /// The most it may hold.
        max_bytes: u64,
    },
    /// Reading or writing the local side failed.
    #[error("local file {path:?}")]
    Local {
        /// The local file, when known.
        path: Option<PathBuf>,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl DatastoreError {
    /// Transport failures and 5xx are retryable; 4xx, bad paths and local errors are not.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Http { status, .. } => *status >= 500,
            Self::Session { source, .. } => source.is_retryable(),
            Self::Url { .. }
            | Self::NotLoggedIn { .. }
            | Self::Local { .. }
            | Self::TooLarge { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bracketed_paths() {
        let p = DatastorePath::parse("DC0", "[LocalDS_0] web 1/web 1.vmx").unwrap();
        assert_eq!(p.datastore, "LocalDS_0");
        assert_eq!(p.path, "web 1/web 1.vmx");
        assert_eq!(p.to_string(), "[LocalDS_0] web 1/web 1.vmx");
        assert!(DatastorePath::parse("DC0", "LocalDS_0/x").is_err());
        assert!(DatastorePath::parse("DC0", "[] x").is_err());
    }

    #[test]
    fn retryable() {
        let e = DatastoreError::Http {
            op: "GET",
            path: "p".into(),
            status: 503,
        };
        assert!(e.is_retryable());
        let e = DatastoreError::Http {
            op: "GET",
            path: "p".into(),
            status: 404,
        };
        assert!(!e.is_retryable());
    }
}
