//! HTTPS for the API's TCP listener (`api.tls_cert`, `api.tls_key`): rustls with the ring
//! provider, TLS 1.2 and 1.3, HTTP/1.1, no client certificates (the bearer token
//! authenticates). Connections are accepted all the time; their handshakes run on tasks
//! of their own, each within [`HANDSHAKE_TIMEOUT`], so that a client that connects and says
//! nothing holds up no one else. At most [`MAX_HANDSHAKES`] run at once: a connection
//! beyond that is closed at once (its client retries), rather than left waiting behind
//! the silent ones.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, check_owner_only};

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a connection beyond that is closed at once.
pub const MAX_HANDSHAKES: usize = 256;

/// The server configuration from a PEM certificate chain (the server's certificate first)
/// and a PEM private key, which must be readable by its owner only.
///
/// # Errors
/// [`ConfigError::SecretFile`] for a key others can read; [`ConfigError::Invalid`] naming
/// the file for anything unreadable, empty or not matching.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ConfigError> {
    let invalid = |what: &str, path: &Path, message: String| ConfigError::Invalid {
        key: what.to_owned(),
        message: format!("{}: {message}", path.display()),
    };
    check_owner_only("api.tls_key", key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid("api.tls_cert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("api.tls_cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            "api.tls_cert",
            cert,
            "holds no PEM certificate".into(),
        ));
    }
    // The key's text never goes into an error.
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        invalid(
            "api.tls_key",
            key,
            format!("no PEM private key could be read ({})", pem_error_kind(&e)),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("api.tls_cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            invalid(
                "api.tls_key",
                key,
                format!("does not go with the certificate {}: {e}", cert.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error_kind(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "none in the file",
        Error::Io(_) => "the file cannot be read",
        _ => "malformed PEM",
    }
}

/// A TCP listener that hands axum TLS streams.
#[derive(Debug)]
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` until `shutdown`, handshaking with `config`.
    ///
    /// # Errors
    /// The listener's address cannot be read.
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors, say: back off rather than spin.
                            tracing::warn!(error = %e, "API: accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    tracing::debug!(peer = %peer, "API: too many TLS handshakes at once; connection closed");
                    drop(stream);
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "API: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "API: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // Shut down: no connection comes any more (axum's graceful shutdown ends the
            // serve loop).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
