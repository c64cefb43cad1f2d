//! The ARC thread: verifies what a forwarding tenant's message arrived with and seals it
//! (`arc.rs` says why and in which order).
//!
//! mail-auth's verifiers are async over hickory (tokio) and its sealer needs the verification's
//! results, which borrow the parsed message; so both run here, on one thread with its own
//! current-thread runtime, and a shard sends the message (shared, not copied) and awaits the
//! ARC headers on a oneshot. Verification is mostly waiting on DNS, so up to
//! `REQUESTS_IN_FLIGHT_MAX` messages are in progress at once; the public-key work (at most
//! `DKIM_SIGNATURES_VERIFIED_MAX` signatures and the chain's seals verified, two signatures
//! made) runs on this thread, not on a shard nor on the slow-path thread. The trade-off: one
//! core's worth of sealing for the engine (two RSA-2048 signatures per message, not measured
//! here), enough for forwarding volumes; a shard that finds the queue full waits
//! for room, within `SEAL_WAIT_MAX_MS`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Algorithm, DkimKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::Canonicalization;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator, SpfOutput};
use petrel_policy::CompiledPolicy;

use crate::arc::{self, Cv, Skip};

/// Requests queued for the ARC thread before shards wait for room.
pub const REQUEST_QUEUE_MAX: usize = 1024;
/// Messages the ARC thread verifies at once (each mostly waiting on DNS).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// The longest one message's verification and seal may take on the ARC thread; past it the
/// message goes out unsealed (`timeout`).
pub const VERIFY_TIMEOUT_MS: u64 = 10_000;
/// The longest a shard waits for a seal, queueing included (above `VERIFY_TIMEOUT_MS`, so the
/// thread's own bound normally answers first).
pub const SEAL_WAIT_MAX_MS: u64 = 15_000;
/// Absent headers added to the ARC-Message-Signature's list when a seal has to be made again
/// (`arc::tidy_set`): each changes the list's length, so the signature's folds fall elsewhere.
/// A seal ends on a fold about once in 76; three tries in a row, practically never.
pub const AMS_EXTRA_HEADERS: [&[&str]; 3] = [&[], &["Sender"], &["Sender", "Keywords"]];
/// Timeout of one DNS query of the verification (two tries each, `resolver_builder`).
pub const DNS_QUERY_TIMEOUT_MS: u64 = 3_000;

/// Why the ARC thread did not start (the engine then runs without it: forwarding tenants'
/// messages go out unsealed, counted as `unavailable`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArcServiceError {
    #[error("ARC resolver: {0}")]
    Resolver(String),
    #[error("ARC thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// One message to seal, as the shard decided it (`sign_and_spool::prepare`).
#[derive(Debug)]
pub struct SealJob {
    /// The policy the message was prepared under: the sealing key is its.
    pub policy: Arc<CompiledPolicy>,
    /// The tenant's sending domain whose DKIM key seals (`arc::seal_domain`).
    pub domain: String,
    /// Where the message as received starts: after the DKIM-Signature Petrel prepended, if any
    /// (`unsigned_from <= message.len()`).
    pub unsigned_from: usize,
    /// The envelope sender's domain (DMARC's SPF side, which stays `none`).
    pub mail_from_domain: String,
    /// The client that handed the message to Petrel (`arc=... smtp.remote-ip`).
    pub peer: IpAddr,
    /// When the message was prepared: picks the domain's active key, as DKIM signing did.
    pub now_unix_ms: u64,
}

/// The ARC thread's answer.
#[derive(Debug)]
pub enum Outcome {
    /// `ARC-Seal`, `ARC-Message-Signature`, `ARC-Authentication-Results`, to prepend.
    Sealed {
        headers: Vec<u8>,
        cv: Cv,
    },
    Skipped(Skip),
}

struct Request {
    job: SealJob,
    message: Arc<Vec<u8>>,
    reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// Handle to the ARC thread; clone it freely. The thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct ArcService {
    requests: async_channel::Sender<Request>,
}

impl std::fmt::Debug for ArcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArcService").finish_non_exhaustive()
    }
}

impl ArcService {
    /// Starts the ARC thread. `hostname` is the authserv-id of the results; `nameservers` the
    /// DNS servers asked (the system's when empty), as delivery's.
    pub fn start(hostname: &str, nameservers: &[SocketAddr]) -> Result<Self, ArcServiceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ArcServiceError::Thread)?;
        let authenticator = {
            let _inside = runtime.enter();
            let builder =
                petrel_outbound::resolver::resolver_builder(nameservers, DNS_QUERY_TIMEOUT_MS)
                    .map_err(ArcServiceError::Resolver)?;
            let resolver = builder
                .build()
                .map_err(|e| ArcServiceError::Resolver(e.to_string()))?;
            MessageAuthenticator(resolver)
        };
        let (tx, rx) = async_channel::bounded(REQUEST_QUEUE_MAX);
        let hostname: Arc<str> = hostname.into();
        std::thread::Builder::new()
            .name("petrel-arc".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                runtime.block_on(local.run_until(serve(authenticator, hostname, rx)));
            })
            .map_err(ArcServiceError::Thread)?;
        Ok(ArcService { requests: tx })
    }

    /// Seals `message` (as it will be delivered) per `job`. Runs on a shard: waits for the ARC
    /// thread at most `SEAL_WAIT_MAX_MS`; the message stays the caller's.
    pub async fn seal(&self, job: SealJob, message: Arc<Vec<u8>>) -> Outcome {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Request {
            job,
            message,
            reply,
        };
        let wait = async {
            if self.requests.send(request).await.is_err() {
                return Ok(Outcome::Skipped(Skip::Unavailable));
            }
            Ok(answer.await.unwrap_or(Outcome::Skipped(Skip::Unavailable)))
        };
        glommio::timer::timeout(Duration::from_millis(SEAL_WAIT_MAX_MS), wait)
            .await
            .unwrap_or(Outcome::Skipped(Skip::Timeout))
    }
}

/// The thread's loop: one local task per message, at most `REQUESTS_IN_FLIGHT_MAX` at once.
async fn serve(
    authenticator: MessageAuthenticator,
    hostname: Arc<str>,
    requests: async_channel::Receiver<Request>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return; // never closed
        };
        let Ok(request) = requests.recv().await else {
            return; // every handle is gone
        };
        let (authenticator, hostname) = (authenticator.clone(), hostname.clone());
        tokio::task::spawn_local(async move {
            let Request {
                job,
                message,
                reply,
            } = request;
            let work = verify_and_seal(&authenticator, &hostname, &job, &message);
            let outcome = tokio::time::timeout(Duration::from_millis(VERIFY_TIMEOUT_MS), work)
                .await
                .unwrap_or(Outcome::Skipped(Skip::Timeout));
            // The shard takes its message back without a copy only once this share is gone.
            drop(message);
            // The shard may have stopped waiting; nothing to do then.
            let _ = reply.send(outcome);
            drop(permit);
        });
    }
}

/// Verifies DKIM (at most `DKIM_SIGNATURES_VERIFIED_MAX` signatures), the ARC chain and DMARC
/// of the message as received, then seals the message as it leaves.
async fn verify_and_seal(
    authenticator: &MessageAuthenticator,
    hostname: &str,
    job: &SealJob,
    message: &[u8],
) -> Outcome {
    let Some(signer) = job.policy.signer_for(&job.domain) else {
        return Outcome::Skipped(Skip::NoKey);
    };
    let Some((selector, key)) = signer.arc_signing_key(job.now_unix_ms) else {
        return Outcome::Skipped(Skip::NoKey);
    };
    let received = message.get(job.unsigned_from..).unwrap_or_default();
    let Some(mut as_received) = AuthenticatedMessage::parse(received) else {
        return Outcome::Skipped(Skip::Unparseable);
    };
    as_received
        .dkim_headers
        .truncate(arc::DKIM_SIGNATURES_VERIFIED_MAX);
    // A chain at its bound gets no new set: say so before verifying up to 49 seals.
    let sets_seen = as_received
        .ams_headers
        .len()
        .max(as_received.as_headers.len())
        .max(as_received.aar_headers.len());
    if sets_seen >= arc::ARC_INSTANCES_MAX {
        return Outcome::Skipped(Skip::ChainTooLong);
    }
    let dkim = authenticator.verify_dkim(&as_received).await;
    let chain = authenticator.verify_arc(&as_received).await;
    let (instance, cv) = match arc::plan(arc::chain_state(&as_received, &chain)) {
        Ok(next) => next,
        Err(skip) => return Outcome::Skipped(skip),
    };
    let spf = SpfOutput::new(job.mail_from_domain.clone());
    let dmarc = authenticator
        .verify_dmarc(DmarcParameters::new(
            &as_received,
            &dkim,
            &job.mail_from_domain,
            &spf,
        ))
        .await;
    let header_from = as_received
        .from
        .first()
        .and_then(|f| arc::address_domain(f))
        .unwrap_or_default();
    let results = AuthenticationResults::new(hostname)
        .with_dkim_results(&dkim, header_from)
        .with_arc_result(&chain, job.peer)
        .with_dmarc_result(&dmarc);
    let Some(outgoing) = AuthenticatedMessage::parse(message) else {
        return Outcome::Skipped(Skip::Unparseable);
    };
    for extra in AMS_EXTRA_HEADERS {
        let sealed = ArcSealer::from_key(KeyRef(key))
            .domain(signer.domain())
            .selector(selector)
            .headers(arc::ams_signed_headers(extra))
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .seal(&outgoing, &results, &chain);
        match sealed {
            Ok(set) if set.seal.i as usize == instance => {
                let mut headers = Vec::with_capacity(2048);
                set.write_header(&mut headers);
                if let Some(headers) = arc::tidy_set(&headers) {
                    return Outcome::Sealed { headers, cv };
                }
            }
            Ok(_) => return Outcome::Skipped(Skip::ChainUnreadable),
            Err(e) => {
                tracing::warn!(domain = %job.domain, error = %e, "ARC sealing failed");
                return Outcome::Skipped(Skip::SealError);
            }
        }
    }
    Outcome::Skipped(Skip::SealError)
}

/// The domain's DKIM key, borrowed from the policy for one seal (mail-auth's sealer owns its
/// key; the policy's keys are not `Clone`).
struct KeyRef<'k>(&'k DkimKey);

impl SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}
