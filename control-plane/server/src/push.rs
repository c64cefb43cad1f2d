//! The snapshot push: engines connect over TLS, introduce themselves with the shared token,
//! receive the full snapshot, then a new one after every committed mutation.
//!
//! Each connection has a reader task (frames from the engine into a bounded channel: reading
//! a frame is not cancel-safe, so it never sits in a `select!`) and a writer loop that waits on
//! either that channel or the version watch. Versions coalesce: a slow engine gets the newest
//! snapshot, not every intermediate one. Snapshots are built once per version and shared.
//! Engine state (applied version from `Ack`, last contact) lives in the `engines` table so any
//! control plane node can answer `GET /v1/engines`. `Events` batches on the same session are
//! stored by [`crate::events::ingest`] and answered `EventsAck` once committed. The suppression
//! list follows the same session as a full load then deltas (`push/suppressions.rs`), a page
//! per turn of the session's loop, woken by [`crate::suppressions::SuppressionWatch`]. The
//! newest signed audit checkpoint follows each first snapshot, and every newer one as it is
//! made (`push/checkpoint.rs`), to engines that speak the revision that added it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petrel_policy::{read_frame, write_frame, Event, Frame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::api::App;
use crate::events::IngestError;
use crate::store::engines::{self, Touch};
use crate::store::Notice;
use crate::ControlError;

mod checkpoint;
mod fleet;
mod suppressions;
use checkpoint::CheckpointFeed;
use fleet::FleetFeed;
use suppressions::Feed;

/// Engine connections served at once; more wait in the accept backlog.
pub const ENGINE_CONNECTIONS_MAX: usize = 1_024;
/// TLS handshake plus `Hello` must finish within this.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Frames from one engine buffered before its reader waits.
pub const ENGINE_FRAMES_QUEUED_MAX: usize = 16;
/// `Events` batches stored in one transaction at most (the engine keeps 8 frames of at most
/// 1,000 events in flight).
pub const INGEST_GROUP_BATCHES_MAX: usize = 8;
/// A snapshot write to one engine must finish within this, or the connection is dropped.
pub const SNAPSHOT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Engine ids, in bytes.
pub const ENGINE_ID_MAX_BYTES: usize = 255;
/// TLS material for the push listener.
pub struct PushTls {
    pub acceptor: TlsAcceptor,
    /// The certificate chain, PEM, for engines to pin.
    pub cert_pem: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A TLS 1.2/1.3 server (rustls' safe defaults, aws-lc-rs) from a PEM certificate chain and key;
/// also returns the chain's PEM.
pub fn tls_acceptor(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(TlsAcceptor, String), ControlError> {
    let cert_pem = std::fs::read_to_string(cert_path).map_err(io_err(cert_path))?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ControlError::Tls(format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| ControlError::Tls(format!("{}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ControlError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ControlError::Tls(e.to_string()))?;
    Ok((TlsAcceptor::from(Arc::new(config)), cert_pem))
}

/// Loads `cert`/`key` when given; otherwise loads or creates a self-signed pair under
/// `<control dir>/push-{cert,key}.pem` naming `localhost` and the listen address.
pub fn load_or_create_tls(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    listen: SocketAddr,
) -> Result<PushTls, ControlError> {
    let dir = data_dir.to_path_buf();
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => (dir.join("push-cert.pem"), dir.join("push-key.pem")),
        _ => {
            return Err(ControlError::Config(
                "push TLS needs both a certificate and a key".into(),
            ))
        }
    };
    if !cert_path.exists() {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let names = vec!["localhost".to_string(), listen.ip().to_string()];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| ControlError::Tls(format!("generate certificate: {e}")))?;
        write_private(&key_path, ck.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, ck.cert.pem()).map_err(io_err(&cert_path))?;
    }
    let (acceptor, cert_pem) = tls_acceptor(&cert_path, &key_path)?;
    Ok(PushTls { acceptor, cert_pem })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ControlError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

/// The newest built snapshot, shared by every connection.
#[derive(Default)]
pub struct SnapshotCache {
    latest: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl SnapshotCache {
    /// The encoded snapshot at version >= `min_version` (building it when needed).
    async fn get(&self, app: &App, min_version: u64) -> Result<(u64, Arc<Vec<u8>>), ControlError> {
        if let Some((v, b)) = self
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            if v >= min_version {
                return Ok((v, b));
            }
        }
        let snap = crate::snapshot::build(&app.db, app.now_ms(), &app.settings).await?;
        let version = snap.version;
        let bytes = Arc::new(petrel_policy::encode(&snap)?);
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if latest.as_ref().is_none_or(|(v, _)| *v < version) {
            *latest = Some((version, bytes.clone()));
        }
        Ok((version, bytes))
    }
}

/// How often a session checks its engine's identity (revocations made on another node).
pub const ENGINE_IDENTITY_CHECK_MS: u64 = 1_000;

/// Who may open a push session.
#[derive(Debug, Clone)]
pub struct PushAuth {
    /// The token engines without an identity of their own present.
    pub shared_token: Arc<str>,
    /// Refuse engines without an identity (`--require-engine-identity`).
    pub require_identity: bool,
}

/// What a session was admitted with: the identity's stored hash, or the shared token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Admitted {
    Identity(String),
    Shared,
}

/// Checks the Hello's token for `engine_id`: its own identity's token when it has one (the
/// shared token then no longer admits it), a revoked identity never, else the shared token
/// unless identities are required.
async fn admit(
    app: &App,
    auth: &PushAuth,
    engine_id: &str,
    token: &str,
) -> Result<Admitted, &'static str> {
    let stored = {
        let mut conn = app.db.conn().await.map_err(|_| "store unavailable")?;
        crate::store::engine_identities::get(&mut conn, engine_id)
            .await
            .map_err(|_| "store unavailable")?
    };
    match stored {
        Some(s) if s.identity.revoked_unix_ms.is_some() => Err("engine identity revoked"),
        Some(s) => {
            let (given, phc) = (token.to_string(), s.token_phc.clone());
            let ok = tokio::task::spawn_blocking(move || crate::auth::verify_secret(&given, &phc))
                .await
                .unwrap_or(false);
            if ok {
                Ok(Admitted::Identity(s.token_phc))
            } else {
                Err("bad token")
            }
        }
        None if auth.require_identity => {
            Err("this control plane requires an engine identity (POST /v1/engines/{id}/identity)")
        }
        None if token_matches(token, &auth.shared_token) => Ok(Admitted::Shared),
        None => Err("bad token"),
    }
}

/// Whether the session admitted as `admitted` may go on: the engine's identity is unchanged
/// and not revoked (a session on the shared token ends once the engine is given one).
async fn still_admitted(
    app: &App,
    engine_id: &str,
    admitted: &Admitted,
) -> Result<bool, ControlError> {
    let mut conn = app.db.conn().await?;
    let stored = crate::store::engine_identities::get(&mut conn, engine_id).await?;
    Ok(match (stored, admitted) {
        (None, Admitted::Shared) => true,
        (Some(s), Admitted::Identity(phc)) => {
            s.identity.revoked_unix_ms.is_none() && &s.token_phc == phc
        }
        _ => false,
    })
}

/// Accepts engine connections (at most `ENGINE_CONNECTIONS_MAX` at once) until dropped.
pub async fn serve_push(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: App,
    auth: PushAuth,
) -> Result<(), ControlError> {
    let token = Arc::new(auth);
    let cache = Arc::new(SnapshotCache::default());
    // Sessions are tasks of the accept loop: dropping this future (shutdown) ends them all.
    crate::accept::accept_bounded(&listener, ENGINE_CONNECTIONS_MAX, "push", |tcp, peer| {
        let (tls, app, token, cache) = (tls.clone(), app.clone(), token.clone(), cache.clone());
        async move {
            if let Err(e) = engine_session(tcp, peer, tls, &app, &token, &cache).await {
                tracing::info!(%peer, error = %e, "engine connection ended");
            }
        }
    })
    .await;
    Ok(())
}

fn token_matches(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    // Compare digests so the comparison time does not depend on where the strings differ.
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn engine_session(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    app: &App,
    auth: &PushAuth,
    cache: &SnapshotCache,
) -> Result<(), ControlError> {
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let mut stream = tls
            .accept(tcp)
            .await
            .map_err(|e| ControlError::Tls(format!("handshake: {e}")))?;
        let hello = read_frame(&mut stream).await?;
        Ok::<_, ControlError>((stream, hello))
    };
    let (mut stream, hello) =
        tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), handshake)
            .await
            .map_err(|_| ControlError::Tls("handshake timed out".into()))??;
    let hello = match hello {
        Some(Frame::Hello(h)) => h,
        _ => {
            let msg = "expected Hello".to_string();
            let _ = write_frame(&mut stream, &Frame::Error { message: msg }).await;
            return Err(ControlError::Config("engine did not say Hello".into()));
        }
    };
    if hello.engine_id.is_empty() || hello.engine_id.len() > ENGINE_ID_MAX_BYTES {
        let msg = "bad engine id".to_string();
        let _ = write_frame(&mut stream, &Frame::Error { message: msg }).await;
        return Err(ControlError::Config(format!("engine {peer}: bad id")));
    }
    let admitted = match admit(app, auth, &hello.engine_id, &hello.token).await {
        Ok(a) => a,
        Err(why) => {
            let _ = write_frame(
                &mut stream,
                &Frame::Error {
                    message: why.into(),
                },
            )
            .await;
            return Err(ControlError::Config(format!("engine {peer}: {why}")));
        }
    };
    let engine_id = hello.engine_id.clone();
    register(app, &engine_id, peer, hello.applied_version).await?;
    let checkpoints = CheckpointFeed::new(app, hello.protocol);
    let fleet = FleetFeed::new(hello.protocol);
    let result = run_session(
        stream,
        app,
        &engine_id,
        &admitted,
        cache,
        checkpoints,
        fleet,
    )
    .await;
    if let Ok(mut conn) = app.db.conn().await {
        let _ = engines::disconnect(&mut conn, &engine_id).await;
    }
    result
}

/// Ends the session (an Error frame, then an error) once its admission no longer holds.
async fn check_identity<W>(
    app: &App,
    engine_id: &str,
    admitted: &Admitted,
    writer: &mut W,
) -> Result<(), ControlError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    if still_admitted(app, engine_id, admitted).await? {
        return Ok(());
    }
    let message = "engine identity revoked or replaced".to_string();
    let _ = write_frame(writer, &Frame::Error { message }).await;
    Err(ControlError::Config(format!(
        "engine {engine_id}: identity revoked or replaced; session cut"
    )))
}

async fn register(app: &App, id: &str, peer: SocketAddr, applied: u64) -> Result<(), ControlError> {
    let applied = i64::try_from(applied).unwrap_or(0);
    let mut conn = app.db.conn().await?;
    engines::register(&mut conn, id, &peer.to_string(), applied, app.now_ms()).await?;
    Ok(())
}

async fn run_session<S>(
    stream: S,
    app: &App,
    engine_id: &str,
    admitted: &Admitted,
    cache: &SnapshotCache,
    mut checkpoints: CheckpointFeed,
    mut fleet: FleetFeed,
) -> Result<(), ControlError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (frames_tx, mut frames_rx) = mpsc::channel(ENGINE_FRAMES_QUEUED_MAX);
    let reader_task = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut reader).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let _abort = AbortOnDrop(reader_task);
    let mut versions = app.version_tx.subscribe();
    let mut identities = app.engine_identities.subscribe();
    let mut identity_check = tokio::time::interval(Duration::from_millis(ENGINE_IDENTITY_CHECK_MS));
    identity_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suppression_versions = app.suppressions.subscribe();
    let mut feed = Feed::Idle;
    let mut sent: Option<u64> = None;
    // A frame taken off the queue while grouping batches, handled next.
    let mut held = None;
    loop {
        let current = *versions.borrow_and_update();
        if sent.is_none_or(|s| current > s) {
            let (version, bytes) = cache.get(app, current).await?;
            if sent.is_none_or(|s| version > s) {
                let frame = Frame::Snapshot {
                    version,
                    bytes: bytes.as_ref().clone(),
                };
                tokio::time::timeout(
                    Duration::from_millis(SNAPSHOT_WRITE_TIMEOUT_MS),
                    write_frame(&mut writer, &frame),
                )
                .await
                .map_err(|_| ControlError::Config("snapshot write timed out".into()))??;
                sent = Some(version);
                touch(app, engine_id, Touch::Sent(version_i64(version))).await?;
            }
        }
        checkpoints.send_due(&mut writer).await?;
        fleet.send_due(app, &mut writer).await?;
        let latest = *suppression_versions.borrow_and_update();
        if held.is_none() && feed.has_work(latest) {
            // The engine's frames first, then one suppression page per turn.
            match frames_rx.try_recv() {
                Ok(f) => held = Some(f),
                Err(mpsc::error::TryRecvError::Empty) => {
                    feed.step(app, latest, &mut writer).await?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        let frame = match held.take() {
            Some(f) => f,
            None => tokio::select! {
                changed = versions.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                changed = suppression_versions.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                () = checkpoints.changed() => continue,
                _ = identities.changed() => {
                    check_identity(app, engine_id, admitted, &mut writer).await?;
                    continue;
                }
                _ = identity_check.tick() => {
                    check_identity(app, engine_id, admitted, &mut writer).await?;
                    fleet.recount();
                    continue;
                }
                frame = frames_rx.recv() => match frame {
                    Some(f) => f,
                    None => return Ok(()),
                },
            },
        };
        match frame {
            Ok(Some(Frame::Ack { version })) => {
                touch(app, engine_id, Touch::Applied(version_i64(version))).await?;
            }
            Ok(Some(Frame::Events { batch_seq, events })) => {
                // Group commit: this batch and the ones already queued behind it, up to
                // the first other frame (handled next).
                let mut group = vec![(batch_seq, events)];
                while group.len() < INGEST_GROUP_BATCHES_MAX {
                    match frames_rx.try_recv() {
                        Ok(Ok(Some(Frame::Events { batch_seq, events }))) => {
                            group.push((batch_seq, events));
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                ingest_group(app, engine_id, &group, &mut writer).await?;
            }
            Ok(Some(Frame::SuppressionsSince { version })) => feed = Feed::since(version),
            Ok(Some(Frame::SuppressionsApplied { version })) => {
                touch(app, engine_id, Touch::Suppressions(version_i64(version))).await?;
            }
            Ok(Some(Frame::Ping)) => {
                write_frame(&mut writer, &Frame::Pong).await?;
                touch(app, engine_id, Touch::Contact).await?;
                fleet.recount();
            }
            Ok(Some(other)) => {
                let message = format!("unexpected frame kind {:#04x}", other.kind());
                let _ = write_frame(&mut writer, &Frame::Error { message }).await;
                return Err(ControlError::Config("engine broke the protocol".into()));
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                // A malformed frame (an events batch over its bounds, bad JSON): say why.
                let message = e.to_string();
                let _ = write_frame(&mut writer, &Frame::Error { message }).await;
                return Err(e.into());
            }
        }
    }
}

/// Stores a group of batches in one transaction and acknowledges the last (acks are
/// cumulative). The batches before the first one that breaks the contract are stored and
/// acknowledged; that one is refused with an `Error` frame, which ends the session (the
/// engine sets it aside and sends the rest again).
async fn ingest_group<W>(
    app: &App,
    engine_id: &str,
    group: &[(u64, Vec<Event>)],
    writer: &mut W,
) -> Result<(), ControlError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let checked: Vec<Result<(), IngestError>> = group
        .iter()
        .map(|(seq, events)| crate::events::check(*seq, events))
        .collect();
    let valid = checked.iter().take_while(|c| c.is_ok()).count();
    if valid > 0 {
        let batches: Vec<(u64, &[Event])> = group[..valid]
            .iter()
            .map(|(seq, events)| (*seq, events.as_slice()))
            .collect();
        match crate::events::ingest_checked(app, engine_id, &batches).await {
            Ok(done) => {
                let ack = Frame::EventsAck {
                    batch_seq: done.ack_seq,
                };
                write_frame(writer, &ack).await?;
            }
            Err(IngestError::Store(e)) => return Err(e.into()),
            Err(refused) => return Err(refuse(writer, engine_id, refused).await),
        }
    }
    match checked.into_iter().nth(valid) {
        Some(Err(refused)) => Err(refuse(writer, engine_id, refused).await),
        _ => Ok(()),
    }
}

/// Tells the engine why its batch is refused; the error that ends the session.
async fn refuse<W>(writer: &mut W, engine_id: &str, refused: IngestError) -> ControlError
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let message = refused.to_string();
    let _ = write_frame(writer, &Frame::Error { message }).await;
    ControlError::Config(format!("engine {engine_id}: {refused}"))
}

async fn touch(app: &App, id: &str, what: Touch) -> Result<(), ControlError> {
    // A write: in a write transaction, so it waits for its turn like every writer.
    let mut tx = app.db.begin_write().await?;
    engines::touch(&mut tx, id, what, app.now_ms()).await?;
    tx.commit().await?;
    Ok(())
}

/// A snapshot version as its `BIGINT` column.
fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Retry delay of the PostgreSQL version listener after its connection fails, ms.
pub const VERSION_LISTEN_RETRY_MS: u64 = 1_000;

/// Listens (PostgreSQL LISTEN) for the versions that mutations on any node announce, so a change
/// made through another control plane node reaches this node's engines at once rather than at
/// the next poll, and for the events other nodes ingest, so this node's webhook dispatcher
/// (which may hold the webhook's lease) sends them at once too. Reconnects after `VERSION_LISTEN_RETRY_MS` when the connection fails.
pub async fn listen_version(app: App, database_url: String) {
    loop {
        // The poll covers what was missed while no listener was connected.
        if let Err(e) = listen_once(&app, &database_url).await {
            tracing::warn!(error = %e, "policy version listener lost");
        }
        tokio::time::sleep(Duration::from_millis(VERSION_LISTEN_RETRY_MS)).await;
    }
}

/// One listener connection: announces every version it hears until the connection fails.
async fn listen_once(app: &App, database_url: &str) -> Result<(), crate::store::StoreError> {
    let mut listener = crate::store::VersionListener::connect(database_url).await?;
    loop {
        match listener.recv().await? {
            Notice::Version(v) => app.notify(v),
            Notice::Events => app.webhooks.wake(),
            Notice::Unknown => tracing::warn!("unexpected policy version payload"),
        }
    }
}

/// Polls the stored version so changes made by other control plane nodes (PostgreSQL) reach
/// this node's engines too, also when the listener is down.
/// A new version also evicts the cached data keys of tenants deleted on any node.
pub async fn poll_version(app: App, interval_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    let mut seen = 0u64;
    let mut deletions_since = app.now_ms();
    loop {
        tick.tick().await;
        match app.db.policy_version().await {
            Ok(v) => {
                if v != seen {
                    seen = v;
                    match forget_deleted(&app, deletions_since).await {
                        Ok(at) => deletions_since = at,
                        Err(e) => tracing::warn!(error = %e, "reading deleted tenants failed"),
                    }
                }
                app.notify(v)
            }
            Err(e) => tracing::warn!(error = %e, "policy version poll failed"),
        }
    }
}

/// Evicts the keys of tenants deleted since `since_unix_ms` (a minute of overlap covers clock
/// skew between nodes); returns the next `since`.
async fn forget_deleted(app: &App, since_unix_ms: i64) -> Result<i64, crate::store::StoreError> {
    const OVERLAP_MS: i64 = 60_000;
    let now = app.now_ms();
    let mut conn = app.db.conn().await?;
    let gone = crate::store::deleted_tenants::since(
        &mut conn,
        since_unix_ms - OVERLAP_MS,
        i64::try_from(petrel_policy::snapshot::DELETED_TENANTS_MAX).unwrap_or(i64::MAX),
    )
    .await?;
    let ids: Vec<String> = gone.into_iter().map(|d| d.tenant_id).collect();
    app.db.sealer().forget_owners(&ids);
    Ok(now)
}
