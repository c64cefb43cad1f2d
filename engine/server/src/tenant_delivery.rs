//! Delivery's per-tenant settings over the pushed policy (issue 15): the egress pool a
//! tenant's mail leaves from and its weight when tenants share a site, as the control plane set
//! them (`PATCH /v1/tenants/{id}`, snapshot format 5), read through
//! `petrel_delivery::egress::TenantDeliverySource`.
//!
//! Delivery asks once per batch, on a shard: the lookup borrows the policy in force through an
//! arc-swap guard (no reference count touched, no lock, nothing held across an await) and finds
//! the tenant in the compiled policy's index; the returned struct (the pool name copied) is the
//! only allocation. A new snapshot applies at the next batch. It has no `crate::` imports, so
//! the delivery wiring and the admin endpoint can both use it.

use std::sync::Arc;

use petrel_delivery::egress::{TenantDelivery, TenantDeliverySource};

/// The settings of the policy's tenants.
#[derive(Debug)]
pub struct PolicyTenantDelivery {
    pub policy: Arc<petrel_policy::PolicyStore>,
}

impl PolicyTenantDelivery {
    /// The tenant's settings and the policy version they come from (`None`: the policy in
    /// force has no such tenant), for the admin endpoint's view.
    pub fn with_version(&self, tenant_id: &str) -> (u64, Option<TenantDelivery>) {
        let policy = self.policy.peek();
        (policy.version(), policy.tenant(tenant_id).map(of_tenant))
    }
}

impl TenantDeliverySource for PolicyTenantDelivery {
    fn tenant_delivery(&self, tenant_id: &str) -> Option<TenantDelivery> {
        self.policy.peek().tenant(tenant_id).map(of_tenant)
    }
}

fn of_tenant(t: &petrel_policy::Tenant) -> TenantDelivery {
    TenantDelivery {
        egress_pool: t.egress_pool.clone(),
        delivery_weight: t.delivery_weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_policy::{PolicySnapshot, PolicyStore, Tenant};

    fn tenant(id: &str, pool: Option<&str>, weight: u32) -> Tenant {
        Tenant {
            id: id.into(),
            name: id.into(),
            suspended: false,
            messages_per_second_max: None,
            messages_per_day_max: None,
            allow_unverified_domains: false,
            new_tenant_cap: None,
            sending_disabled: None,
            reputation_warning: None,
            list_unsubscribe: false,
            arc_seal: false,
            egress_pool: pool.map(str::to_string),
            delivery_weight: weight,
        }
    }

    #[test]
    fn each_tenant_reads_its_own_settings_and_a_new_snapshot_applies_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PolicyStore::open(dir.path(), None));
        let source = PolicyTenantDelivery {
            policy: Arc::clone(&store),
        };
        assert_eq!(source.tenant_delivery("ten_a"), None, "no policy yet");
        let mut snapshot = PolicySnapshot {
            version: 1,
            tenants: vec![tenant("ten_a", Some("warm"), 5), tenant("ten_b", None, 1)],
            ..PolicySnapshot::default()
        };
        store.apply(snapshot.clone()).unwrap();
        assert_eq!(
            source.tenant_delivery("ten_a"),
            Some(TenantDelivery {
                egress_pool: Some("warm".into()),
                delivery_weight: 5
            })
        );
        assert_eq!(
            source.tenant_delivery("ten_b"),
            Some(TenantDelivery {
                egress_pool: None,
                delivery_weight: 1
            })
        );
        assert_eq!(source.tenant_delivery("ten_unknown"), None);
        snapshot.version = 2;
        snapshot.tenants[0].egress_pool = Some("cold".into());
        store.apply(snapshot).unwrap();
        let (version, a) = source.with_version("ten_a");
        assert_eq!(version, 2);
        assert_eq!(a.and_then(|d| d.egress_pool).as_deref(), Some("cold"));
    }
}
