//! The configured egress (`[[delivery.sources]]`, `[[delivery.pools]]`, `delivery.default_pool`)
//! and its validation into an [`Egress`].
//!
//! The engine's TOML deserializes straight into these types, so the keys are defined once;
//! every check serde cannot make is in [`Egress::build`], each error naming the key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::warmup::{Day, Warmup, WARMUP_DAYS_MAX};
use super::{Egress, Pool, PoolId, Source, SourceId};

/// The most sources an engine configures.
pub const EGRESS_SOURCES_MAX: usize = 256;
/// The most pools an engine configures.
pub const EGRESS_POOLS_MAX: usize = 256;
/// The largest weight of a pool member (weights are relative; this bounds the chooser's sums).
pub const EGRESS_WEIGHT_MAX: u32 = 10_000;
/// The longest source or pool name, in bytes (it is a metric label and a key of the counts
/// file). Names are `[a-z0-9_-]`: the control plane's rule for a tenant's `egress_pool`
/// (`petrel_policy`'s `snapshot/tenant_delivery.rs`), so every pool can be named there.
pub const EGRESS_NAME_BYTES_MAX: usize = 64;
/// The longest EHLO name, in bytes (RFC 1035 §2.3.4).
pub const EHLO_NAME_BYTES_MAX: usize = 253;
/// The name of the pool and source used when no pool is configured.
pub const IMPLICIT_NAME: &str = "default";

/// Everything configured; `EgressSpec::default()` is no pools: today's behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressSpec {
    pub sources: Vec<SourceSpec>,
    pub pools: Vec<PoolSpec>,
    /// The pool of tenants without one (or with an unknown one); required with pools.
    pub default_pool: Option<String>,
}

/// One `[[delivery.sources]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    /// The local address connections bind to; unset: the kernel's choice.
    #[serde(default)]
    pub local_addr: Option<IpAddr>,
    /// The name given in EHLO; unset: `server.hostname`.
    #[serde(default)]
    pub ehlo_name: Option<String>,
    #[serde(default)]
    pub warmup: Option<WarmupSpec>,
}

/// A source's `warmup` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSpec {
    /// Day 1 of the ramp, `YYYY-MM-DD` (UTC).
    pub start_date: String,
    pub days: u32,
    pub first_day_max: u64,
    /// Unset: unlimited once the ramp is over.
    #[serde(default)]
    pub full_day_max: Option<u64>,
}

/// One `[[delivery.pools]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    pub sources: Vec<MemberSpec>,
}

/// One member of a pool: `{ source = "ip1", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    pub source: String,
    /// Relative share of the pool's mail, 1 to [`EGRESS_WEIGHT_MAX`] (default 1).
    #[serde(default = "weight_one")]
    pub weight: u32,
}

fn weight_one() -> u32 {
    1
}

/// Why a configured egress, or its counts file, was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    #[error("delivery.sources: at most {max} sources, {got} configured")]
    TooManySources { got: usize, max: usize },
    #[error("delivery.pools: at most {max} pools, {got} configured")]
    TooManyPools { got: usize, max: usize },
    #[error("{key}: {name:?} is not a name of 1 to 64 of a-z, 0-9, '_' and '-'")]
    BadName { key: &'static str, name: String },
    #[error("{key}: {name:?} is configured twice")]
    Duplicate { key: &'static str, name: String },
    #[error("delivery.sources {source_name:?}: local_addr {addr} cannot be bound for sending")]
    BadLocalAddr { source_name: String, addr: IpAddr },
    #[error("delivery.sources {source_name:?}: ehlo_name {name:?} is not a host name")]
    BadEhloName { source_name: String, name: String },
    #[error("delivery.sources {source_name:?}: warmup: {why}")]
    BadWarmup { source_name: String, why: String },
    #[error("delivery.pools {pool:?}: unknown source {source_name:?}")]
    UnknownSource { pool: String, source_name: String },
    #[error("delivery.pools {pool:?}: source {source_name:?} is listed twice")]
    DuplicateMember { pool: String, source_name: String },
    #[error(
        "delivery.pools {pool:?}: source {source_name:?} has weight {weight}, must be 1 to {max}"
    )]
    BadWeight {
        pool: String,
        source_name: String,
        weight: u32,
        max: u32,
    },
    #[error("delivery.pools {pool:?}: no sources")]
    EmptyPool { pool: String },
    #[error("delivery.sources {source_name:?}: in no pool (name it in a [[delivery.pools]])")]
    UnusedSource { source_name: String },
    #[error("delivery.default_pool: required when pools are configured")]
    NoDefaultPool,
    #[error("delivery.default_pool: unknown pool {pool:?}")]
    UnknownDefaultPool { pool: String },
    #[error("delivery.default_pool: set, but no [[delivery.pools]] is configured")]
    DefaultPoolWithoutPools,
    #[error("egress counts file: {why}")]
    CountsFile { why: String },
    #[error("egress counts file {path}: {source}")]
    CountsIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= EGRESS_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

fn good_ehlo(name: &str) -> bool {
    // A host name or an address literal ("[192.0.2.1]"); nothing that breaks the command line.
    !name.is_empty()
        && name.len() <= EHLO_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
}

fn warmup(s: &SourceSpec, w: &WarmupSpec) -> Result<Warmup, EgressError> {
    let bad = |why: String| EgressError::BadWarmup {
        source_name: s.name.clone(),
        why,
    };
    let start = Day::parse(&w.start_date)
        .ok_or_else(|| bad(format!("start_date {:?} is not YYYY-MM-DD", w.start_date)))?;
    if !(1..=WARMUP_DAYS_MAX).contains(&w.days) {
        return Err(bad(format!("days must be 1 to {WARMUP_DAYS_MAX}")));
    }
    if w.first_day_max == 0 {
        return Err(bad("first_day_max must be at least 1".into()));
    }
    if w.full_day_max.is_some_and(|full| full < w.first_day_max) {
        return Err(bad("full_day_max must be at least first_day_max".into()));
    }
    Ok(Warmup {
        start,
        days: w.days,
        first_day_max: w.first_day_max,
        full_day_max: w.full_day_max,
    })
}

fn source(s: &SourceSpec) -> Result<Source, EgressError> {
    if !good_name(&s.name) {
        return Err(EgressError::BadName {
            key: "delivery.sources.name",
            name: s.name.clone(),
        });
    }
    if let Some(addr) = s.local_addr {
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(EgressError::BadLocalAddr {
                source_name: s.name.clone(),
                addr,
            });
        }
    }
    if let Some(name) = s.ehlo_name.as_deref().filter(|n| !good_ehlo(n)) {
        return Err(EgressError::BadEhloName {
            source_name: s.name.clone(),
            name: name.to_string(),
        });
    }
    Ok(Source {
        name: s.name.clone(),
        local_addr: s.local_addr,
        ehlo_name: s.ehlo_name.clone(),
        warmup: s.warmup.as_ref().map(|w| warmup(s, w)).transpose()?,
    })
}

fn pool(p: &PoolSpec, ids: &HashMap<&str, SourceId>) -> Result<Pool, EgressError> {
    if !good_name(&p.name) {
        return Err(EgressError::BadName {
            key: "delivery.pools.name",
            name: p.name.clone(),
        });
    }
    if p.sources.is_empty() {
        return Err(EgressError::EmptyPool {
            pool: p.name.clone(),
        });
    }
    let mut members: Vec<(SourceId, u32)> = Vec::with_capacity(p.sources.len());
    for m in &p.sources {
        let Some(&id) = ids.get(m.source.as_str()) else {
            return Err(EgressError::UnknownSource {
                pool: p.name.clone(),
                source_name: m.source.clone(),
            });
        };
        if members.iter().any(|(seen, _)| *seen == id) {
            return Err(EgressError::DuplicateMember {
                pool: p.name.clone(),
                source_name: m.source.clone(),
            });
        }
        if !(1..=EGRESS_WEIGHT_MAX).contains(&m.weight) {
            return Err(EgressError::BadWeight {
                pool: p.name.clone(),
                source_name: m.source.clone(),
                weight: m.weight,
                max: EGRESS_WEIGHT_MAX,
            });
        }
        members.push((id, m.weight));
    }
    Ok(Pool {
        name: p.name.clone(),
        members,
    })
}

impl Egress {
    /// Checks `spec` and builds the engine's egress. No pools: one implicit pool of one
    /// implicit source (no bind, the configured EHLO name), which is how Petrel sent before
    /// pools existed.
    pub fn build(spec: &EgressSpec) -> Result<Egress, EgressError> {
        if spec.sources.len() > EGRESS_SOURCES_MAX {
            return Err(EgressError::TooManySources {
                got: spec.sources.len(),
                max: EGRESS_SOURCES_MAX,
            });
        }
        if spec.pools.len() > EGRESS_POOLS_MAX {
            return Err(EgressError::TooManyPools {
                got: spec.pools.len(),
                max: EGRESS_POOLS_MAX,
            });
        }
        if spec.pools.is_empty() {
            if spec.default_pool.is_some() {
                return Err(EgressError::DefaultPoolWithoutPools);
            }
            if let Some(s) = spec.sources.first() {
                return Err(EgressError::UnusedSource {
                    source_name: s.name.clone(),
                });
            }
            return Ok(Egress::implicit());
        }
        let mut sources = Vec::with_capacity(spec.sources.len());
        let mut ids: HashMap<&str, SourceId> = HashMap::new();
        for (i, s) in spec.sources.iter().enumerate() {
            sources.push(source(s)?);
            if ids.insert(s.name.as_str(), SourceId(i as u16)).is_some() {
                return Err(EgressError::Duplicate {
                    key: "delivery.sources.name",
                    name: s.name.clone(),
                });
            }
        }
        let mut pools = Vec::with_capacity(spec.pools.len());
        let mut pool_ids: HashMap<String, PoolId> = HashMap::new();
        for (i, p) in spec.pools.iter().enumerate() {
            pools.push(pool(p, &ids)?);
            if pool_ids.insert(p.name.clone(), PoolId(i as u16)).is_some() {
                return Err(EgressError::Duplicate {
                    key: "delivery.pools.name",
                    name: p.name.clone(),
                });
            }
        }
        if let Some(unused) = sources.iter().enumerate().find(|(i, _)| {
            !pools
                .iter()
                .any(|p| p.members.iter().any(|(id, _)| id.index() == *i))
        }) {
            return Err(EgressError::UnusedSource {
                source_name: unused.1.name.clone(),
            });
        }
        let name = spec
            .default_pool
            .as_ref()
            .ok_or(EgressError::NoDefaultPool)?;
        let default_pool = *pool_ids
            .get(name)
            .ok_or_else(|| EgressError::UnknownDefaultPool { pool: name.clone() })?;
        Ok(Egress::from_parts(sources, pools, pool_ids, default_pool))
    }
}
