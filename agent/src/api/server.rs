//! Listening (TCP, plain or HTTPS, and/or a unix socket), systemd notification and graceful
//! shutdown.
//!
//! Under systemd (`Type=notify`) the daemon sends `READY=1` once every listener is bound,
//! `STATUS=` with the queue's figures, and `WATCHDOG=1` at half of `WATCHDOG_USEC` from
//! the async runtime, so a wedged runtime stops the pings and systemd restarts the agent.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::routes::{AppState, app};

/// Where to listen.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// TCP address (port 0 picks a free port; the bound address is printed).
    pub tcp: Option<SocketAddr>,
    /// Unix socket path (replaced if it exists; mode 0660).
    pub socket: Option<PathBuf>,
    /// HTTPS on the TCP listener ([`super::server_config`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

fn status(state: &AppState) -> String {
    let (queued, running) = state.queue.figures();
    format!(
        "{running} job(s) running (limit {}), {queued} queued",
        state.queue.limit()
    )
}

/// How long a client has to send a request's head (also the longest a kept-alive
/// connection may sit idle between requests): a client that connects and sends nothing, or
/// half a head, is closed then instead of holding its connection for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once on one listener; one beyond that is closed at once (its
/// client retries), so that a flood of connections cannot use up the agent's file
/// descriptors, which its backups need.
pub const MAX_CONNECTIONS: usize = 512;

/// Serves `router` on `listener` in `tasks` until `shutdown`, then lets the open
/// connections finish their requests (graceful shutdown) before the task ends. Each
/// connection is HTTP/1.1 with [`HEADER_READ_TIMEOUT`]; at most [`MAX_CONNECTIONS`] at once.
fn spawn_serve<L>(
    tasks: &mut tokio::task::JoinSet<std::io::Result<()>>,
    mut listener: L,
    router: &axum::Router,
    shutdown: &CancellationToken,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (router, shutdown) = (router.clone(), shutdown.clone());
    tasks.spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut refused: u64 = 0;
        loop {
            let (io, _addr) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        refused,
                        limit = MAX_CONNECTIONS,
                        "API connections beyond the limit closed"
                    );
                }
                drop(io);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service);
                tokio::pin!(conn);
                let served = tokio::select! {
                    r = conn.as_mut() => r,
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "API connection ended");
                }
                drop(slot);
            });
        }
        // No new client waits in the backlog for an answer that never comes: they are
        // refused while the open connections end.
        drop(listener);
        // Every connection's slot back: they have all ended.
        let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        Ok(())
    });
}

/// Serves the API until `shutdown` is cancelled.
///
/// # Errors
/// Binding a listener failed.
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = app(Arc::clone(&state));
    let mut tasks = tokio::task::JoinSet::new();
    // Bound first and ready before the addresses are printed: whoever reads "listening on"
    // finds `/v1/ready` answering 200.
    let tcp = match listeners.tcp {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let unix = match &listeners.socket {
        Some(path) => {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let listener = tokio::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Some((listener, path.clone()))
        }
        None => None,
    };
    state.ready.store(true, Ordering::SeqCst);
    if let Some(listener) = tcp {
        let bound = listener.local_addr()?;
        let scheme = if listeners.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // On stdout for scripts and tests; the log has it too.
        crate::cli::emit_line(&format!("listening on {scheme}://{bound}"));
        tracing::info!(address = %bound, scheme, "API listening on TCP");
        match &listeners.tls {
            Some(config) => {
                let tls = super::TlsListener::new(listener, Arc::clone(config), shutdown.clone())?;
                spawn_serve(&mut tasks, tls, &router, &shutdown);
            }
            None => spawn_serve(&mut tasks, listener, &router, &shutdown),
        }
    }
    if let Some((listener, path)) = unix {
        crate::cli::emit_line(&format!("listening on unix:{}", path.display()));
        tracing::info!(socket = %path.display(), "API listening on a unix socket");
        spawn_serve(&mut tasks, listener, &router, &shutdown);
    }
    let status_text = status(&state);
    if let Err(e) = sd_notify::notify(
        false,
        &[NotifyState::Ready, NotifyState::Status(&status_text)],
    ) {
        tracing::debug!(error = %e, "sd_notify READY");
    }
    let mut usec = 0u64;
    let watchdog =
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
    let pinger = {
        let (state, shutdown) = (Arc::clone(&state), shutdown.clone());
        tokio::spawn(async move {
            let period = watchdog.unwrap_or(Duration::from_secs(30));
            let mut tick = tokio::time::interval(period);
            let mut stopping = false;
            loop {
                tokio::select! {
                    // STOPPING=1 as soon as the stop begins, whoever sent the signal: the
                    // jobs' clean-up (snapshot removal) and the connections still open may
                    // take a while, and the watchdog pings go on meanwhile.
                    () = shutdown.cancelled(), if !stopping => {
                        stopping = true;
                        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
                    }
                    _ = tick.tick() => {
                        let text = status(&state);
                        let mut msg = vec![NotifyState::Status(&text)];
                        if watchdog.is_some() {
                            msg.push(NotifyState::Watchdog);
                        }
                        let _ = sd_notify::notify(false, &msg);
                    }
                }
            }
        })
    };
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(std::io::Error::other(e.to_string())),
        }
        shutdown.cancel();
    }
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    pinger.abort();
    if let Some(path) = &listeners.socket {
        let _ = std::fs::remove_file(path);
    }
    result
}
