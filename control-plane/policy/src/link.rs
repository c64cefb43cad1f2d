//! The engine's link to the control plane (tokio; the only networking in this crate).
//!
//! Connect over TLS, send `Hello` with the shared token and the applied version, then apply
//! every pushed `Snapshot` (decode, validate, compile, persist, swap) and `Ack` it. The same
//! session carries the engine's events out (`link/events.rs`) and the suppression list in, as
//! a full load then deltas (`link/suppressions.rs`), and the control plane's signed audit
//! checkpoints, verified and kept next to the policy ([`crate::checkpoint`]). When the
//! connection drops, is refused, or goes silent, reconnect after an exponential, capped,
//! jittered delay. Meanwhile the engine runs on its last snapshot (also persisted on disk).
//! Nothing here panics on what the peer sends; every wait has a timeout.
//!
//! Trust: the engine checks the control plane's certificate against a configured CA (or
//! self-signed certificate) PEM, or, in development, against a pinned SHA-256 fingerprint of
//! its DER certificate (the handshake signature is still verified).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::checkpoint::{AuditCheckpoint, Kept};
use crate::error::PolicyError;
use crate::outbox::Outbox;
use crate::snapshot;
use crate::store::PolicyStore;
use crate::wire::{write_frame, Frame, FrameDecoder, Hello, PROTOCOL_VERSION};

/// Bytes asked of the socket per read.
pub const READ_CHUNK_BYTES: usize = 64 << 10;

/// How the engine recognises the control plane.
#[derive(Clone, PartialEq, Eq)]
pub enum LinkTrust {
    /// PEM certificates trusted as roots (the control plane's CA, or its self-signed cert).
    CaPem(Vec<u8>),
    /// SHA-256 of the control plane's end-entity certificate (DER). Development only.
    PinnedSha256([u8; 32]),
}

impl std::fmt::Debug for LinkTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkTrust::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
            LinkTrust::PinnedSha256(fp) => write!(f, "PinnedSha256({})", hex::encode(fp)),
        }
    }
}

/// Everything `run_link` needs. Times in milliseconds.
#[derive(Clone)]
pub struct LinkConfig {
    /// `host:port` of the control plane's push listener (default 127.0.0.1:8081).
    pub endpoint: String,
    /// Name checked against the control plane's certificate (and sent as SNI).
    pub server_name: String,
    pub trust: LinkTrust,
    /// Shared secret, sent in `Hello` inside TLS.
    pub token: String,
    pub engine_id: String,
    pub shards: u32,
    /// TCP connect, default 5 000.
    pub connect_timeout_ms: u64,
    /// TLS handshake, default 10 000.
    pub handshake_timeout_ms: u64,
    /// Send `Ping` this often, default 15 000.
    pub ping_interval_ms: u64,
    /// Drop the connection when no frame arrives for this long (> ping interval), default 45 000.
    pub idle_timeout_ms: u64,
    /// First reconnect delay, default 200; doubles per failure.
    pub reconnect_delay_ms_min: u64,
    /// Cap on the reconnect delay, default 30 000.
    pub reconnect_delay_ms_max: u64,
    /// The engine's event backlog, sent to the control plane on the same session; `None`: no
    /// events are sent.
    pub outbox: Option<Arc<Outbox>>,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("endpoint", &self.endpoint)
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .field("token", &"<redacted>")
            .field("engine_id", &self.engine_id)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl LinkConfig {
    /// Defaults for everything but where and who.
    pub fn new(
        endpoint: &str,
        server_name: &str,
        trust: LinkTrust,
        token: &str,
        engine_id: &str,
    ) -> Self {
        LinkConfig {
            endpoint: endpoint.to_owned(),
            server_name: server_name.to_owned(),
            trust,
            token: token.to_owned(),
            engine_id: engine_id.to_owned(),
            shards: 1,
            connect_timeout_ms: 5_000,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 15_000,
            idle_timeout_ms: 45_000,
            reconnect_delay_ms_min: 200,
            reconnect_delay_ms_max: 30_000,
            outbox: None,
        }
    }
}

/// Run the link until the task is dropped: connect, hello, apply snapshots, ack, reconnect.
/// `applied(version)` is called after each snapshot is in force (metrics, admin status).
/// [`PolicyStore::link_up`] is true from the control plane's first frame that is not an `Error`
/// until the session ends.
/// Returns at once (after logging) only when the TLS configuration itself is unusable.
pub async fn run_link(
    cfg: LinkConfig,
    store: Arc<PolicyStore>,
    mut applied: impl FnMut(u64) + Send,
) {
    let connector = match connector(&cfg.trust) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "policy link disabled: bad TLS configuration");
            return;
        }
    };
    let mut failures: u32 = 0;
    loop {
        let mut got_snapshot = false;
        let ended = session(&cfg, &connector, &store, &mut applied, &mut got_snapshot).await;
        store.set_link_up(false);
        match ended {
            Ok(()) => {
                tracing::info!(endpoint = %cfg.endpoint, "policy link closed by the control plane")
            }
            Err(e) => tracing::warn!(endpoint = %cfg.endpoint, error = %e, "policy link down"),
        }
        // A session that delivered a snapshot was healthy: start the backoff over.
        failures = if got_snapshot {
            0
        } else {
            failures.saturating_add(1)
        };
        let delay = reconnect_delay_ms(&cfg, failures);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

/// `min * 2^(failures-1)`, capped at `max`, minus up to 25% jitter so engines spread out.
fn reconnect_delay_ms(cfg: &LinkConfig, failures: u32) -> u64 {
    let min = cfg.reconnect_delay_ms_min.max(1);
    let max = cfg.reconnect_delay_ms_max.max(min);
    let exp = failures.saturating_sub(1).min(32);
    let base = min.saturating_mul(1u64 << exp).min(max);
    let jitter = rand::thread_rng().gen_range(0..=base / 4);
    base - jitter
}

async fn session(
    cfg: &LinkConfig,
    connector: &TlsConnector,
    store: &Arc<PolicyStore>,
    applied: &mut (impl FnMut(u64) + Send),
    got_snapshot: &mut bool,
) -> Result<(), PolicyError> {
    let tcp = within(
        cfg.connect_timeout_ms,
        "connect",
        TcpStream::connect(&cfg.endpoint),
    )
    .await??;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(cfg.server_name.clone()).map_err(|e| PolicyError::Tls {
        reason: format!("bad server name {:?}: {e}", cfg.server_name),
    })?;
    let tls = within(
        cfg.handshake_timeout_ms,
        "tls handshake",
        connector.connect(name, tcp),
    )
    .await?
    .map_err(|e| PolicyError::Tls {
        reason: e.to_string(),
    })?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let hello = Frame::Hello(Hello {
        engine_id: cfg.engine_id.clone(),
        token: cfg.token.clone(),
        applied_version: store.version(),
        shards: cfg.shards,
        protocol: PROTOCOL_VERSION,
    });
    write_frame(&mut writer, &hello).await?;
    tracing::info!(endpoint = %cfg.endpoint, version = store.version(), "policy link up");
    let mut ping = tokio::time::interval(Duration::from_millis(cfg.ping_interval_ms.max(1)));
    ping.tick().await; // the first tick is immediate
    let idle = Duration::from_millis(cfg.idle_timeout_ms.max(1));
    // Reads go through a decoder so that losing the select race never loses bytes
    // (`read` is cancel-safe; `read_frame` is not).
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut last_heard = tokio::time::Instant::now();
    let mut events = EventsSender::new(cfg.outbox.clone());
    events.send_more(&mut writer).await?;
    let mut suppressions = SuppressionFollower::new();
    suppressions.start(store, &mut writer).await?;
    loop {
        while let Some(frame) = decoder.next_frame()? {
            // The control plane answered the Hello with something other than a refusal: it
            // admitted this engine, so the session is up.
            if !matches!(frame, Frame::Error { .. }) {
                store.set_link_up(true);
            }
            match frame {
                Frame::EventsAck { batch_seq } => {
                    events.acked(batch_seq)?;
                    events.send_more(&mut writer).await?;
                }
                Frame::Error { message } => {
                    events.refused(&message);
                    return Err(PolicyError::Refused { message });
                }
                Frame::SuppressionLoad(page) => {
                    suppressions.load(store, page, &mut writer).await?;
                }
                Frame::SuppressionChanges { changes } => {
                    suppressions.apply(store, changes, &mut writer).await?;
                }
                Frame::AuditCheckpoint(cp) => keep_checkpoint(store, cp).await?,
                Frame::Fleet { engines_live } => {
                    if store.engines_live() != engines_live {
                        tracing::info!(engines_live, "fleet size reported by the control plane");
                    }
                    store.set_engines_live(engines_live);
                }
                frame => handle(frame, store, applied, &mut writer, got_snapshot).await?,
            }
        }
        let outbox = events.wants_more().cloned();
        let published = async {
            match &outbox {
                Some(o) => o.published().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = published => events.send_more(&mut writer).await?,
            n = reader.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    if decoder.buffered_bytes() == 0 {
                        return Ok(());
                    }
                    return Err(PolicyError::protocol("stream ended inside a frame"));
                }
                decoder.feed(&chunk[..n]);
                last_heard = tokio::time::Instant::now();
            }
            _ = ping.tick() => write_frame(&mut writer, &Frame::Ping).await?,
            _ = tokio::time::sleep_until(last_heard + idle) => {
                return Err(PolicyError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nothing heard for {} ms", cfg.idle_timeout_ms),
                )));
            }
        }
    }
}

async fn handle<W: AsyncWrite + Unpin>(
    frame: Frame,
    store: &Arc<PolicyStore>,
    applied: &mut (impl FnMut(u64) + Send),
    writer: &mut W,
    got_snapshot: &mut bool,
) -> Result<(), PolicyError> {
    match frame {
        Frame::Snapshot { version, bytes } => {
            *got_snapshot = true;
            // Decoding, compiling (key parsing) and fsync are blocking work: off the reactor.
            let store2 = store.clone();
            let outcome =
                tokio::task::spawn_blocking(move || apply_bytes(&store2, version, &bytes))
                    .await
                    .map_err(|e| PolicyError::Io(std::io::Error::other(e.to_string())))?;
            match outcome {
                Ok(()) => {
                    applied(version);
                    write_frame(writer, &Frame::Ack { version }).await
                }
                Err(PolicyError::Stale { current, .. }) => {
                    tracing::warn!(
                        offered = version,
                        current,
                        "control plane pushed an older policy; keeping ours"
                    );
                    write_frame(writer, &Frame::Ack { version: current }).await
                }
                Err(e) if e.is_transient() => Err(e), // reconnect; the snapshot comes again
                Err(e) => {
                    // Bad snapshot: keep running on ours and do not ack; the control plane sees the lag.
                    tracing::error!(version, error = %e, "policy snapshot refused");
                    Ok(())
                }
            }
        }
        Frame::Pong => Ok(()),
        Frame::Error { message } => Err(PolicyError::Refused { message }),
        other => Err(PolicyError::protocol(format!(
            "unexpected frame from the control plane: {other:?}"
        ))),
    }
}

/// Verifies and keeps a pushed audit checkpoint (a synced write: on the blocking pool). One
/// refused (bad signature, older seq) or not written is logged, and the link goes on: the next
/// checkpoint, minutes later, tries again.
async fn keep_checkpoint(store: &Arc<PolicyStore>, cp: AuditCheckpoint) -> Result<(), PolicyError> {
    let seq = cp.seq;
    let store2 = store.clone();
    let kept = tokio::task::spawn_blocking(move || store2.audit_checkpoint().keep(cp))
        .await
        .map_err(|e| PolicyError::Io(std::io::Error::other(e.to_string())))?;
    match kept {
        Ok(Kept::New) => tracing::info!(seq, "audit checkpoint kept"),
        Ok(Kept::Unchanged) => {}
        // Two signed heads for one seq, or another key: evidence, worth an operator's look.
        Err(
            e @ PolicyError::Checkpoint(
                crate::checkpoint::CheckpointError::Conflict { .. }
                | crate::checkpoint::CheckpointError::KeyChanged { .. },
            ),
        ) => tracing::error!(seq, error = %e, "audit checkpoint refused"),
        Err(e) => tracing::warn!(seq, error = %e, "audit checkpoint not kept"),
    }
    Ok(())
}

fn apply_bytes(store: &PolicyStore, version: u64, bytes: &[u8]) -> Result<(), PolicyError> {
    let s = snapshot::decode(bytes)?;
    if s.version != version {
        return Err(PolicyError::protocol(format!(
            "snapshot frame says version {version}, snapshot says {}",
            s.version
        )));
    }
    store.apply(s)
}

async fn within<T>(
    ms: u64,
    what: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, PolicyError> {
    tokio::time::timeout(Duration::from_millis(ms.max(1)), fut)
        .await
        .map_err(|_| {
            PolicyError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what} timed out after {ms} ms"),
            ))
        })
}

/// A TLS connector for the configured trust. aws-lc-rs provider, TLS 1.2 and 1.3.
pub fn connector(trust: &LinkTrust) -> Result<TlsConnector, PolicyError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_err = |e: rustls::Error| PolicyError::Tls {
        reason: e.to_string(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let config = match trust {
        LinkTrust::CaPem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| PolicyError::Tls {
                    reason: format!("CA PEM: {e}"),
                })?;
                roots.add(cert).map_err(tls_err)?;
            }
            if roots.is_empty() {
                return Err(PolicyError::Tls {
                    reason: "CA PEM holds no certificate".into(),
                });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        LinkTrust::PinnedSha256(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                fingerprint: *fingerprint,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// SHA-256 of a certificate's DER, as pinned in `LinkTrust::PinnedSha256`.
pub fn cert_fingerprint_sha256(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// Accepts exactly one end-entity certificate (by SHA-256), whatever its name or issuer, and
/// verifies the handshake signature with it.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if cert_fingerprint_sha256(end_entity.as_ref()) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

mod events;
mod suppressions;
use events::EventsSender;
use suppressions::SuppressionFollower;

#[cfg(test)]
mod tests;
