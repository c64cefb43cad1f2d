//! The pushed overlay: limits the control plane lays over the files' at run time, by provider.
//!
//! The control plane pushes it in the policy snapshot (`PolicySnapshot::shaping`, from
//! `PUT /v1/shaping/providers/{name}`); the engine reads it through a [`ShapingSource`]
//! (`DeliveryConfig::shaping_source`), which lays it over the files once per policy version
//! ([`ShapingCache`]): delivery's lookups stay a version compare and an `Arc` clone.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{PartialLimits, Shaping, BUILT_IN_LIMITS, DEFAULT_SECTION};

/// Limits by provider name, laid over the merged files' (the control plane pushes it; an engine
/// applies it with [`Shaping::with_overlay`]). The name `default` addresses the default section,
/// which providers fall back to. A name no provider has is ignored: an overlay cannot add a
/// provider (it has no MX patterns to match). A count of 0 is taken as 1; a rate of 0 lifts the
/// rate.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ShapingOverlay {
    pub providers: BTreeMap<String, PartialLimits>,
}

impl ShapingOverlay {
    /// The overlay's limits for `name` (a provider, or `default`).
    pub fn set(&mut self, name: &str, limits: PartialLimits) {
        self.providers.insert(name.to_string(), limits);
    }

    /// The overlay a policy snapshot carries (the control plane validated it: names of
    /// `[a-z0-9_-]`, each once, counts of at least 1).
    pub fn from_snapshot(list: &[petrel_policy::snapshot::ShapingLimits]) -> ShapingOverlay {
        let mut out = ShapingOverlay::default();
        for l in list {
            out.set(
                &l.provider,
                PartialLimits {
                    connections_max: l.connections_max,
                    messages_per_connection_max: l.messages_per_connection_max,
                    messages_per_minute_max: l.messages_per_minute_max,
                    messages_per_hour_max: l.messages_per_hour_max,
                    recipients_per_transaction_max: l.recipients_per_transaction_max,
                },
            );
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }
}

/// Where delivery gets the shaping in force at run time (the engine wires the pushed policy
/// here; see `DeliveryConfig::current_shaping`).
pub trait ShapingSource: std::fmt::Debug + Send + Sync {
    /// `file` (the configured shaping: shipped plus the operator's file) with the pushed
    /// overlay laid over it. Called for every new site and every negative reply, so it must be
    /// cheap: build once per overlay, then hand out clones of the `Arc`.
    fn current(&self, file: &Arc<Shaping>) -> Arc<Shaping>;
}

/// The overlaid [`Shaping`] of the last policy version asked for, rebuilt only when the
/// version (or the file's `Shaping`) changes. The lock is held for a compare and a clone (or,
/// once per version, the swap of the new value), never across an await or a build.
#[derive(Debug, Default)]
pub struct ShapingCache {
    built: RwLock<Option<Built>>,
}

#[derive(Debug)]
struct Built {
    version: u64,
    /// The file's `Shaping` it was built over (compared by address).
    file: Arc<Shaping>,
    shaping: Arc<Shaping>,
}

impl ShapingCache {
    /// The shaping for policy `version`: the cached one, else `file` with `overlay()` over it
    /// (`file` itself when the overlay is empty).
    pub fn get(
        &self,
        version: u64,
        file: &Arc<Shaping>,
        overlay: impl FnOnce() -> ShapingOverlay,
    ) -> Arc<Shaping> {
        {
            let built = self.built.read().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = built.as_ref() {
                if b.version == version && Arc::ptr_eq(&b.file, file) {
                    return Arc::clone(&b.shaping);
                }
            }
        }
        let overlay = overlay();
        let shaping = if overlay.is_empty() {
            Arc::clone(file)
        } else {
            Arc::new(file.with_overlay(&overlay))
        };
        let mut built = self.built.write().unwrap_or_else(|p| p.into_inner());
        *built = Some(Built {
            version,
            file: Arc::clone(file),
            shaping: Arc::clone(&shaping),
        });
        shaping
    }

    /// The version the cached shaping was built for (`None`: nothing built yet).
    pub fn version(&self) -> Option<u64> {
        let built = self.built.read().unwrap_or_else(|p| p.into_inner());
        built.as_ref().map(|b| b.version)
    }
}

/// `shaping` with `overlay` over it, computed from the files' values (which a `Shaping` keeps
/// apart from what it resolved), so overlays never stack: laying a new overlay on a `Shaping`
/// derived with an older one replaces the older one whole, as a fresh push should.
pub(crate) fn apply(shaping: &Shaping, overlay: &ShapingOverlay) -> Shaping {
    let mut out = shaping.clone();
    let default = overlay
        .providers
        .get(DEFAULT_SECTION)
        .map_or(shaping.default, |o| o.over(shaping.default));
    out.default_limits = default.resolve(BUILT_IN_LIMITS);
    for p in &mut out.providers {
        let limits = overlay
            .providers
            .get(&p.name)
            .map_or(p.limits, |o| o.over(p.limits));
        p.resolved = limits.resolve(out.default_limits);
    }
    out
}
