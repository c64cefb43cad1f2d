//! The pushed overlay: limits the control plane lays over the files' at run time, by provider.

use std::collections::BTreeMap;

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
