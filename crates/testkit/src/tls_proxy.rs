//! [`TlsProxy`]: an HTTPS front for an S3 test server (moto, Garage), with
//! a certificate the test made ([`crate::tls::Ca`]), so that a client can
//! be shown to trust (or refuse) a private CA. It terminates TLS on
//! 127.0.0.1 and passes the bytes through to the server's plain HTTP port
//! unchanged (the client's signature covers the `Host` it sent, which the
//! server sees as sent). It runs on a thread and runtime of its own, so a
//! test that blocks on the refugio binary does not stall it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::tls::CertPair;

/// A TLS-terminating proxy on 127.0.0.1; stopped on drop.
pub struct TlsProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Counts {
    /// TLS handshakes that completed.
    accepted: AtomicUsize,
    /// Handshakes that failed (the client refused the certificate, say).
    refused: AtomicUsize,
}

impl std::fmt::Debug for TlsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProxy")
            .field("addr", &self.addr)
            .field("counts", &self.counts)
            .finish()
    }
}

impl TlsProxy {
    /// Serves TLS with `server` (certificate and key, PEM) and passes every
    /// connection through to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, server: &CertPair) -> Result<TlsProxy> {
        let upstream = url::Url::parse(upstream)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .ok_or_else(|| anyhow!("upstream {upstream:?} is not http://host:port"))?;
        let certs = CertificateDer::pem_file_iter(&server.cert)
            .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
            .with_context(|| format!("reading {}", server.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&server.key)
            .with_context(|| format!("reading {}", server.key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let counts = Arc::clone(&counts);
            std::thread::Builder::new()
                .name("tls-proxy".into())
                .spawn(move || serve(listener, acceptor, upstream, counts, stopped))
                .context("starting the TLS proxy thread")?
        };
        Ok(TlsProxy {
            addr,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// TLS handshakes completed so far.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed so far (a client that did not trust the
    /// certificate ends the handshake).
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    upstream: String,
    counts: Arc<Counts>,
    stopped: oneshot::Receiver<()>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let accept = async {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, upstream, counts) =
                    (acceptor.clone(), upstream.clone(), Arc::clone(&counts));
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            counts.refused.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    counts.accepted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    }
                });
            }
        };
        tokio::select! {
            _ = stopped => {}
            () = accept => {}
        }
    });
}
