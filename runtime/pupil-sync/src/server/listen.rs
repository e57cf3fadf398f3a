//! The accept loop: at most [`ServerConfig::max_connections`] connections at
//! once (the next ones wait in the listen backlog), each with a deadline for
//! its TLS handshake and for every request's headers, over plain TCP or TLS
//! (rustls) when the server has a certificate.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::{Server, ServerConfig};
use crate::SyncError;

/// How long connections may take to finish after shutdown was asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// A TLS certificate chain and key for the server, from PEM files.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Reads the certificate chain `cert` and private key `key` (PEM files,
    /// e.g. from `openssl req -x509` or a CA).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, SyncError> {
        let bad = |path: &Path, what: &str, e: &dyn std::fmt::Display| {
            SyncError::InvalidArgument(format!(
                "{} does not hold {what}: {e}; pass PEM files (--tls-cert the certificate \
                 chain, --tls-key its private key)",
                path.display()
            ))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, "a certificate", &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, "a certificate", &e))?;
        if chain.is_empty() {
            return Err(bad(cert, "a certificate", &"no CERTIFICATE block"));
        }
        let private =
            PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, "a private key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
            .map_err(|e| bad(key, "the certificate's private key", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Serves `server`'s router on `listener` (TLS with `tls`) until `shutdown`
/// completes, then lets open connections finish their requests (for up to
/// 10 s).
pub(super) async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SyncError> {
    let config: ServerConfig = server.config.clone();
    let router = server.router();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let (stop, stopped) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let addr = listener.local_addr().ok();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: wait, go on.
                    tracing::warn!("accepting a connection on {addr:?} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (http, router, tls, stopped) =
            (http.clone(), router.clone(), tls.clone(), stopped.clone());
        let handshake = config.header_timeout;
        tokio::spawn(async move {
            let service = TowerToHyperService::new(router);
            match tls {
                None => serve_connection(&http, stream, service, stopped).await,
                Some(tls) => {
                    match tokio::time::timeout(handshake, tls.acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(&http, stream, service, stopped).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    let _ = stop.send(true);
    let all = u32::try_from(config.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, slots.acquire_many(all)).await;
    Ok(())
}

/// Serves HTTP/1.1 on one connection until the client closes it, a deadline
/// passes, or `stopped` turns true (then the request in progress finishes).
async fn serve_connection<I>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    service: TowerToHyperService<axum::Router>,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
            return;
        }
        _ = stopped.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!("connection ended: {e}");
    }
}
