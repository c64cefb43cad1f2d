//! Delivery's shaping over the pushed policy (issue 15): the provider limits the control plane
//! sets (`PUT /v1/shaping/providers/{name}`, `PolicySnapshot::shaping`) laid over the engine's
//! shaping files, read through `petrel_delivery::shaping::ShapingSource`.
//!
//! Delivery asks when it makes a site and when a negative reply comes. The overlaid `Shaping`
//! is built once per policy version (`ShapingCache`); a lookup borrows the policy in force
//! through an arc-swap guard (no reference count touched, nothing held across an await), then
//! compares the version and clones an `Arc`. A new snapshot applies to the next site made: a
//! site in use is made again when its domains are re-routed (`DeliveryConfig::route_recheck_ms` (60 s)). It has no
//! `crate::` imports, so the delivery wiring and the admin endpoint can both use it.

use std::sync::Arc;

use petrel_delivery::shaping::{Shaping, ShapingCache, ShapingOverlay, ShapingSource};

/// The pushed overlay of the policy store's current snapshot, over the files' shaping.
#[derive(Debug)]
pub struct PolicyShaping {
    policy: Arc<petrel_policy::PolicyStore>,
    cache: ShapingCache,
}

impl PolicyShaping {
    pub fn new(policy: Arc<petrel_policy::PolicyStore>) -> PolicyShaping {
        PolicyShaping {
            policy,
            cache: ShapingCache::default(),
        }
    }

    /// The shaping in force over `file` and the policy version it comes from (the admin
    /// endpoint's view).
    pub fn with_version(&self, file: &Arc<Shaping>) -> (u64, Arc<Shaping>) {
        let policy = self.policy.peek();
        let version = policy.version();
        let shaping = self.cache.get(version, file, || {
            ShapingOverlay::from_snapshot(&policy.snapshot().shaping)
        });
        (version, shaping)
    }
}

impl ShapingSource for PolicyShaping {
    fn current(&self, file: &Arc<Shaping>) -> Arc<Shaping> {
        self.with_version(file).1
    }
}

/// What the admin endpoint shows (`GET /v1/shaping`): the files' shaping and the source that
/// lays the pushed overlay over it, the same pair delivery reads.
#[derive(Debug, Clone)]
pub struct ShapingView {
    pub source: Arc<PolicyShaping>,
    pub file: Arc<Shaping>,
}

impl ShapingView {
    /// The effective limits per provider (in match order, then `default`) and the pushed
    /// overlay's provider names, with the policy version they come from, as JSON.
    pub fn json(&self) -> serde_json::Value {
        let (version, shaping) = self.source.with_version(&self.file);
        let limits = |l: petrel_delivery::shaping::SiteLimits| {
            serde_json::json!({
                "connections_max": l.connections_max,
                "messages_per_connection_max": l.messages_per_connection_max,
                "messages_per_minute_max": l.messages_per_minute_max,
                "messages_per_hour_max": l.messages_per_hour_max,
                "recipients_per_transaction_max": l.recipients_per_transaction_max,
            })
        };
        let providers: Vec<serde_json::Value> = shaping
            .providers()
            .map(|p| {
                let mut v = limits(shaping.limits(Some(p)));
                v["name"] = shaping.name(Some(p)).into();
                v
            })
            .collect();
        let policy = self.source.policy.peek();
        let pushed: Vec<&str> = policy
            .snapshot()
            .shaping
            .iter()
            .map(|l| l.provider.as_str())
            .collect();
        serde_json::json!({
            "policy_version": version,
            "pushed": pushed,
            "default": limits(shaping.limits(None)),
            "providers": providers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_delivery::DeliveryConfig;
    use petrel_policy::snapshot::ShapingLimits;
    use petrel_policy::{PolicySnapshot, PolicyStore};

    const GMAIL: [&str; 1] = ["gmail-smtp-in.l.google.com"];

    fn google(connections_max: u32) -> ShapingLimits {
        ShapingLimits {
            provider: "google".into(),
            connections_max: Some(connections_max),
            messages_per_connection_max: None,
            messages_per_minute_max: Some(600),
            messages_per_hour_max: None,
            recipients_per_transaction_max: None,
        }
    }

    #[test]
    fn a_new_snapshots_overlay_changes_the_shaping_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PolicyStore::open(dir.path(), None));
        let source = Arc::new(PolicyShaping::new(Arc::clone(&store)));
        let config = DeliveryConfig {
            shaping_source: Some(source.clone()),
            ..DeliveryConfig::default()
        };
        let connections = |c: &DeliveryConfig| {
            let s = c.current_shaping();
            s.limits(s.provider_for(&GMAIL))
        };
        let shipped = connections(&config);
        assert_eq!(
            shipped.connections_max, 5,
            "the shipped file's, nothing pushed"
        );
        assert_eq!(shipped.messages_per_minute_max, None);

        let mut snapshot = PolicySnapshot {
            version: 1,
            shaping: vec![google(2)],
            ..PolicySnapshot::default()
        };
        store.apply(snapshot.clone()).unwrap();
        let pushed = connections(&config);
        assert_eq!(
            pushed.connections_max, 2,
            "the pushed limit, without a restart"
        );
        assert_eq!(pushed.messages_per_minute_max, Some(600));
        assert_eq!(
            pushed.messages_per_connection_max, shipped.messages_per_connection_max,
            "unset: the file's"
        );

        snapshot.version = 2;
        snapshot.shaping = vec![google(9)];
        store.apply(snapshot.clone()).unwrap();
        assert_eq!(connections(&config).connections_max, 9);

        // Removed: the files' limits again.
        snapshot.version = 3;
        snapshot.shaping.clear();
        store.apply(snapshot).unwrap();
        assert_eq!(connections(&config), shipped);

        let view = ShapingView {
            source,
            file: Arc::clone(&config.shaping),
        }
        .json();
        assert_eq!(view["policy_version"], 3);
        assert_eq!(view["pushed"], serde_json::json!([]));
        let g = view["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "google")
            .unwrap();
        assert_eq!(g["connections_max"], 5);
        assert_eq!(view["default"]["connections_max"], 32);
    }
}
