//! A snapshot compiled for lookups: indexes by username, domain and id, parsed allowlists,
//! loaded DKIM keys. Built once per snapshot off the hot path; read by every shard through
//! `PolicyStore::current()`. Pure: no I/O, time passed in.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::{self, AuthCache, AUTH_CACHE_ENTRIES_MAX};
use crate::dkim::DkimSigner;
use crate::error::{AuthError, PolicyDenial, PolicyError};
use crate::new_tenant::{Admission, NewTenantWindows};
use crate::quota::{Admit, ClusterQuotas, Limit};
use crate::rate::{RateKey, RateLimiter, RateLimits};
use crate::snapshot::{
    parse_cidr, Credential, CredentialKind, PolicySnapshot, SendingDomain, Tenant, SEND_SCOPE,
};

/// Who authenticated: handed back to the policy at MAIL FROM and recorded on the message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthIdentity {
    pub tenant_id: String,
    pub credential_id: String,
    pub username: String,
}

/// Delivery limits for one destination domain, defaults applied. None: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    pub connections_max: Option<u32>,
    pub messages_per_second_max: Option<u32>,
    pub tls_required: bool,
}

/// State that outlives one snapshot: rate buckets, new tenants' windows and the AUTH cache.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) rates: RateLimiter,
    pub(crate) new_tenants: NewTenantWindows,
    pub(crate) auth_cache: AuthCache,
    /// The fleet's counters in Redis, when the engine has them (`[cluster] redis_url`); then
    /// they replace `rates` and `new_tenants` for admissions.
    pub(crate) cluster: std::sync::OnceLock<Arc<ClusterQuotas>>,
    /// Live engines of the fleet as the control plane last reported (0: never reported).
    pub(crate) engines_live: std::sync::atomic::AtomicU32,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            rates: RateLimiter::new(),
            new_tenants: NewTenantWindows::new(),
            auth_cache: AuthCache::new(AUTH_CACHE_ENTRIES_MAX),
            cluster: std::sync::OnceLock::new(),
            engines_live: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

/// One snapshot, indexed. Send + Sync; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CompiledPolicy {
    snapshot: PolicySnapshot,
    /// Tenant id -> index in `snapshot.tenants`.
    tenants: HashMap<String, usize>,
    /// Sending domain name -> index in `snapshot.domains`.
    domains: HashMap<String, usize>,
    /// SMTP username -> index in `snapshot.credentials`.
    smtp_users: HashMap<String, usize>,
    /// Credential id -> index in `snapshot.credentials`.
    credential_ids: HashMap<String, usize>,
    /// Parsed `ip_allowlist`, same index as `snapshot.credentials`.
    allowlists: Vec<Vec<ipnet::IpNet>>,
    /// Sending domain name -> its signer (domains whose keys are all retired have none).
    signers: HashMap<String, DkimSigner>,
    /// Destination domain -> index in `snapshot.destination_limits`.
    destinations: HashMap<String, usize>,
    /// Keys that did not load (the domain signs with its other keys, or not at all).
    key_errors: Vec<String>,
    shared: Arc<Shared>,
}

impl CompiledPolicy {
    /// The policy of an engine that never received a snapshot: version 0, nothing allowed.
    pub fn empty() -> CompiledPolicy {
        CompiledPolicy {
            snapshot: PolicySnapshot::default(),
            tenants: HashMap::new(),
            domains: HashMap::new(),
            smtp_users: HashMap::new(),
            credential_ids: HashMap::new(),
            allowlists: Vec::new(),
            signers: HashMap::new(),
            destinations: HashMap::new(),
            key_errors: Vec::new(),
            shared: Shared::new(),
        }
    }

    /// Compile a snapshot on its own (tests, tools). The engine goes through `PolicyStore::apply`.
    pub fn compile(snapshot: PolicySnapshot) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::compile_with(snapshot, Shared::new())
    }

    pub(crate) fn compile_with(
        snapshot: PolicySnapshot,
        shared: Arc<Shared>,
    ) -> Result<CompiledPolicy, PolicyError> {
        snapshot.validate()?;
        let index = |names: Vec<&str>| -> HashMap<String, usize> {
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.to_owned(), i))
                .collect()
        };
        let tenants = index(snapshot.tenants.iter().map(|t| t.id.as_str()).collect());
        let domains = index(snapshot.domains.iter().map(|d| d.name.as_str()).collect());
        let credential_ids = index(snapshot.credentials.iter().map(|c| c.id.as_str()).collect());
        let destinations = index(
            snapshot
                .destination_limits
                .iter()
                .map(|l| l.domain.as_str())
                .collect(),
        );
        let smtp_users = snapshot
            .credentials
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == CredentialKind::Smtp)
            .map(|(i, c)| (c.username.clone(), i))
            .collect();
        let allowlists = snapshot
            .credentials
            .iter()
            .map(|c| c.ip_allowlist.iter().map(|s| parse_cidr(s)).collect())
            .collect::<Result<Vec<Vec<ipnet::IpNet>>, PolicyError>>()?;
        let mut signers = HashMap::new();
        let mut key_errors = Vec::new();
        for d in &snapshot.domains {
            let (signer, errors) = DkimSigner::from_keys_skipping_bad(&d.name, &d.dkim_keys);
            for e in errors {
                tracing::warn!(domain = %d.name, error = %e, "dkim key skipped");
                key_errors.push(e.to_string());
            }
            if let Some(s) = signer {
                signers.insert(d.name.clone(), s);
            }
        }
        let live_tenants: HashSet<&str> = snapshot.tenants.iter().map(|t| t.id.as_str()).collect();
        let live_domains: HashSet<&str> =
            snapshot.domains.iter().map(|d| d.name.as_str()).collect();
        shared.rates.retain(&live_tenants, &live_domains);
        let capped: HashSet<&str> = snapshot
            .tenants
            .iter()
            .filter(|t| t.new_tenant_cap.is_some())
            .map(|t| t.id.as_str())
            .collect();
        shared.new_tenants.retain(&capped);
        if let Some(cluster) = shared.cluster.get() {
            cluster.retain(&live_tenants, &live_domains);
        }
        Ok(CompiledPolicy {
            tenants,
            domains,
            smtp_users,
            credential_ids,
            allowlists,
            signers,
            destinations,
            key_errors,
            shared,
            snapshot,
        })
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    pub fn snapshot(&self) -> &PolicySnapshot {
        &self.snapshot
    }

    /// Keys that failed to load, as messages (for the admin status page).
    pub fn key_errors(&self) -> &[String] {
        &self.key_errors
    }

    /// True when at least one SMTP credential exists (the engine offers AUTH then).
    pub fn auth_enabled(&self) -> bool {
        !self.smtp_users.is_empty()
    }

    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.get(id).map(|&i| &self.snapshot.tenants[i])
    }

    /// SMTP AUTH. Cheap checks first (unknown, revoked, suspended, allowlist), then the cache,
    /// then argon2id (tens of milliseconds of CPU on a miss).
    pub fn verify_smtp(
        &self,
        username: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<AuthIdentity, AuthError> {
        if let Some(decided) = self.verify_smtp_cached(username, password, peer) {
            return decided;
        }
        let (i, cred) = self.smtp_credential(username)?;
        auth::verify_argon2id(&cred.argon2_phc, password)?;
        let tag = self
            .shared
            .auth_cache
            .tag(&cred.id, &cred.argon2_phc, username, password);
        self.shared.auth_cache.insert(tag);
        Ok(self.identity(i))
    }

    /// The part of [`verify_smtp`](Self::verify_smtp) that needs no argon2: `Some` when decided
    /// (refused by a cheap check, or a cache hit), `None` when the password must be hashed. Lets
    /// an engine keep its shard for cheap answers and send misses to a worker thread.
    pub fn verify_smtp_cached(
        &self,
        username: &str,
        password: &str,
        peer: IpAddr,
    ) -> Option<Result<AuthIdentity, AuthError>> {
        let (i, cred) = match self.smtp_credential(username) {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        if let Err(e) = self.precheck(i, cred, peer) {
            return Some(Err(e));
        }
        let tag = self
            .shared
            .auth_cache
            .tag(&cred.id, &cred.argon2_phc, username, password);
        if self.shared.auth_cache.contains(&tag) {
            return Some(Ok(self.identity(i)));
        }
        None
    }

    /// MAIL FROM of an authenticated client. `mail_from` is `local@domain` ("" is refused).
    pub fn check_sender(&self, id: &AuthIdentity, mail_from: &str) -> Result<(), PolicyDenial> {
        let domain = mail_from
            .rsplit_once('@')
            .map(|(_, d)| normalize_domain(d))
            .unwrap_or_default();
        let not_allowed = || PolicyDenial::SenderNotAllowed {
            domain: domain.clone(),
        };
        let tenant = self.tenant(&id.tenant_id).ok_or_else(not_allowed)?;
        if tenant.suspended {
            return Err(PolicyDenial::TenantSuspended {
                tenant: tenant.id.clone(),
            });
        }
        if let Some(reason) = &tenant.sending_disabled {
            return Err(PolicyDenial::SendingDisabled {
                reason: reason.clone(),
            });
        }
        let cred = self
            .credential_ids
            .get(&id.credential_id)
            .map(|&i| &self.snapshot.credentials[i])
            .filter(|c| !c.revoked && c.tenant_id == tenant.id)
            .ok_or(PolicyDenial::CredentialRevoked)?;
        let sending = self
            .find_domain(&domain)
            .filter(|d| d.tenant_id == tenant.id)
            .ok_or_else(not_allowed)?;
        if !cred.allowed_sender_domains.is_empty()
            && !cred
                .allowed_sender_domains
                .iter()
                .any(|a| a == &domain || a == &sending.name)
        {
            return Err(not_allowed());
        }
        if !sending.verified && !tenant.allow_unverified_domains {
            return Err(PolicyDenial::DomainUnverified {
                domain: sending.name.clone(),
            });
        }
        if let Some(reason) = &sending.sending_disabled {
            return Err(PolicyDenial::SendingDisabled {
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    /// The guardrails' check of a message at DATA: refused when its tenant (the attributed
    /// one) or its From domain's sending domain has sending disabled. Catches what MAIL could
    /// not see: a trusted network's relay (no AUTH, tenant known only from the From domain) and
    /// a From header naming another domain than MAIL FROM.
    pub fn check_message(
        &self,
        tenant_id: Option<&str>,
        from_domain: Option<&str>,
    ) -> Result<(), PolicyDenial> {
        let disabled = |reason: &String| PolicyDenial::SendingDisabled {
            reason: reason.clone(),
        };
        if let Some(reason) = tenant_id
            .and_then(|t| self.tenant(t))
            .and_then(|t| t.sending_disabled.as_ref())
        {
            return Err(disabled(reason));
        }
        let domain = from_domain.and_then(|d| self.find_domain(&normalize_domain(d)));
        match domain.and_then(|d| d.sending_disabled.as_ref()) {
            Some(reason) => Err(disabled(reason)),
            None => Ok(()),
        }
    }

    /// The reputation warning to append to the 250 after DATA: the From domain's own, else its
    /// tenant's; None when neither is near a threshold.
    pub fn reputation_warning(
        &self,
        tenant_id: Option<&str>,
        from_domain: Option<&str>,
    ) -> Option<&str> {
        let domain = from_domain
            .and_then(|d| self.find_domain(&normalize_domain(d)))
            .filter(|d| tenant_id.is_none_or(|t| t == d.tenant_id));
        domain
            .and_then(|d| d.reputation_warning.as_deref())
            .or_else(|| {
                tenant_id
                    .and_then(|t| self.tenant(t))
                    .and_then(|t| t.reputation_warning.as_deref())
            })
    }

    /// Admit one message for `tenant_id` sending from `sender_domain` (the MAIL FROM domain;
    /// a subdomain counts against its registered sending domain) at `now_unix_ms`. Charges the
    /// new tenant's window (when capped), the tenant's and the domain's buckets, or none of
    /// them. Denials answer `451 4.7.1`.
    pub fn rate_check(
        &self,
        tenant_id: &str,
        sender_domain: &str,
        now_unix_ms: u64,
    ) -> Result<(), PolicyDenial> {
        let cap = self.tenant(tenant_id).and_then(|t| t.new_tenant_cap);
        let admission = match &cap {
            Some(cap) => self.shared.new_tenants.check(tenant_id, cap, now_unix_ms)?,
            None => Admission::free(),
        };
        self.rate_buckets(tenant_id, sender_domain, now_unix_ms)?;
        admission.take();
        Ok(())
    }

    /// [`CompiledPolicy::rate_check`] on the fleet's counters when the engine has them (else
    /// the same local check): the verdict may be to wait for a batch of grants.
    pub fn rate_admit(&self, tenant_id: &str, sender_domain: &str, now_unix_ms: u64) -> Admit {
        let Some(cluster) = self.shared.cluster.get() else {
            return match self.rate_check(tenant_id, sender_domain, now_unix_ms) {
                Ok(()) => Admit::Yes,
                Err(d) => Admit::No(d),
            };
        };
        let mut checks = Vec::with_capacity(4);
        let tenant_key = RateKey::Tenant(tenant_id.to_owned());
        if let Some(cap) = self
            .tenant(tenant_id)
            .and_then(|t| t.new_tenant_cap)
            .filter(|c| c.applies(now_unix_ms))
        {
            checks.push((tenant_key.clone(), Limit::NewTenant(cap)));
        }
        for (key, limits) in self.rate_limits(tenant_id, sender_domain) {
            if let Some(r) = limits.messages_per_second_max {
                checks.push((key.clone(), Limit::PerSecond(r)));
            }
            if let Some(d) = limits.messages_per_day_max {
                checks.push((key, Limit::PerDay(d)));
            }
        }
        if checks.is_empty() {
            return Admit::Yes;
        }
        cluster.admit(&checks, now_unix_ms)
    }

    fn rate_buckets(
        &self,
        tenant_id: &str,
        sender_domain: &str,
        now_unix_ms: u64,
    ) -> Result<(), PolicyDenial> {
        let checks = self.rate_limits(tenant_id, sender_domain);
        self.shared.rates.check_and_take(&checks, now_unix_ms)
    }

    /// The tenant's limits and its sending domain's (defaults applied).
    fn rate_limits(&self, tenant_id: &str, sender_domain: &str) -> Vec<(RateKey, RateLimits)> {
        let defaults = &self.snapshot.defaults;
        let tenant = self.tenant(tenant_id);
        let mut checks = Vec::with_capacity(2);
        checks.push((
            RateKey::Tenant(tenant_id.to_owned()),
            RateLimits {
                messages_per_second_max: tenant
                    .and_then(|t| t.messages_per_second_max)
                    .or(defaults.tenant_messages_per_second_max),
                messages_per_day_max: tenant
                    .and_then(|t| t.messages_per_day_max)
                    .or(defaults.tenant_messages_per_day_max),
            },
        ));
        if let Some(d) = self
            .find_domain(&normalize_domain(sender_domain))
            .filter(|d| d.tenant_id == tenant_id)
        {
            checks.push((
                RateKey::Domain(d.name.clone()),
                RateLimits {
                    messages_per_second_max: d
                        .messages_per_second_max
                        .or(defaults.domain_messages_per_second_max),
                    messages_per_day_max: None,
                },
            ));
        }
        checks
    }

    /// True when at least one sending domain has a usable key (else no message needs its From
    /// header looked at for signing).
    pub fn has_signers(&self) -> bool {
        !self.signers.is_empty()
    }

    /// The signer for a From: (or MAIL FROM) domain: its own, else its closest registered parent.
    pub fn signer_for(&self, from_domain: &str) -> Option<&DkimSigner> {
        let domain = normalize_domain(from_domain);
        self.find_domain(&domain)
            .and_then(|d| self.signers.get(&d.name))
    }

    /// The sending domain that owns `domain`: exact match, else the closest parent.
    pub fn find_domain(&self, domain: &str) -> Option<&SendingDomain> {
        let mut candidate = domain;
        loop {
            if let Some(&i) = self.domains.get(candidate) {
                return Some(&self.snapshot.domains[i]);
            }
            candidate = candidate.split_once('.')?.1;
            if !candidate.contains('.') {
                return None; // never match a bare TLD
            }
        }
    }

    /// Delivery limits for a recipient domain, defaults applied.
    pub fn destination_limit(&self, domain: &str) -> DestinationPolicy {
        let defaults = &self.snapshot.defaults;
        let own = self
            .destinations
            .get(normalize_domain(domain).as_str())
            .map(|&i| &self.snapshot.destination_limits[i]);
        DestinationPolicy {
            connections_max: own
                .and_then(|l| l.connections_max)
                .or(defaults.destination_connections_max),
            messages_per_second_max: own
                .and_then(|l| l.messages_per_second_max)
                .or(defaults.destination_messages_per_second_max),
            tls_required: own.is_some_and(|l| l.tls_required),
        }
    }

    fn smtp_credential(&self, username: &str) -> Result<(usize, &Credential), AuthError> {
        self.smtp_users
            .get(username)
            .map(|&i| (i, &self.snapshot.credentials[i]))
            .ok_or(AuthError::UnknownUser)
    }

    fn precheck(&self, i: usize, cred: &Credential, peer: IpAddr) -> Result<(), AuthError> {
        if cred.revoked {
            return Err(AuthError::Revoked);
        }
        if cred.kind != CredentialKind::Smtp {
            return Err(AuthError::NotSmtp);
        }
        if !cred.scopes.iter().any(|s| s == SEND_SCOPE) {
            return Err(AuthError::NoSendScope);
        }
        if self.tenant(&cred.tenant_id).is_none_or(|t| t.suspended) {
            return Err(AuthError::TenantSuspended);
        }
        let allow = &self.allowlists[i];
        let peer = peer.to_canonical();
        if !allow.is_empty() && !allow.iter().any(|net| net.contains(&peer)) {
            return Err(AuthError::AddressNotAllowed);
        }
        Ok(())
    }

    fn identity(&self, i: usize) -> AuthIdentity {
        let c = &self.snapshot.credentials[i];
        AuthIdentity {
            tenant_id: c.tenant_id.clone(),
            credential_id: c.id.clone(),
            username: c.username.clone(),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Lower case, no trailing dot.
fn normalize_domain(d: &str) -> String {
    d.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
