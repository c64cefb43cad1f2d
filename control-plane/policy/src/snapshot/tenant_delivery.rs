//! A tenant's delivery settings (issue 15, "delivery by site"): the egress pool its mail leaves
//! from and its weight when tenants share a site. The control plane decides them per tenant
//! (`PATCH /v1/tenants/{id}`); the engine maps a pool name to its `[[delivery.pools]]` and
//! reads both once per delivery batch. One definition of the rules, so the admin API refuses
//! exactly what an engine would refuse in a snapshot.

use crate::error::PolicyError;

/// Longest egress pool name, in bytes.
pub const EGRESS_POOL_NAME_MAX_BYTES: usize = 64;
/// A tenant's delivery weight: 1 (every tenant's share alike, the default) to 100.
pub const DELIVERY_WEIGHT_MIN: u32 = 1;
pub const DELIVERY_WEIGHT_MAX: u32 = 100;
pub const DELIVERY_WEIGHT_DEFAULT: u32 = 1;

const _: () = assert!(
    DELIVERY_WEIGHT_MIN <= DELIVERY_WEIGHT_DEFAULT
        && DELIVERY_WEIGHT_DEFAULT <= DELIVERY_WEIGHT_MAX
);

/// serde's default of `Tenant::delivery_weight` (a snapshot in JSON that predates it).
pub(crate) fn default_delivery_weight() -> u32 {
    DELIVERY_WEIGHT_DEFAULT
}

/// True for a pool name: 1 to [`EGRESS_POOL_NAME_MAX_BYTES`] of `[a-z0-9_-]` (it appears in
/// the engine's configuration, its logs and metric labels, so nothing that needs quoting).
pub fn is_egress_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= EGRESS_POOL_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks one tenant's settings (`tenant` names it in the error).
pub(crate) fn check(
    tenant: &str,
    egress_pool: Option<&str>,
    delivery_weight: u32,
) -> Result<(), PolicyError> {
    if let Some(pool) = egress_pool {
        if !is_egress_pool_name(pool) {
            return Err(PolicyError::invalid(format!(
                "tenant {tenant}: bad egress pool {pool:?} (1..={EGRESS_POOL_NAME_MAX_BYTES} of [a-z0-9_-])"
            )));
        }
    }
    if !(DELIVERY_WEIGHT_MIN..=DELIVERY_WEIGHT_MAX).contains(&delivery_weight) {
        return Err(PolicyError::invalid(format!(
            "tenant {tenant}: delivery weight {delivery_weight} (must be {DELIVERY_WEIGHT_MIN}..={DELIVERY_WEIGHT_MAX})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names() {
        for good in [
            "a",
            "pool-1",
            "ip_warm",
            &"x".repeat(EGRESS_POOL_NAME_MAX_BYTES),
        ] {
            assert!(is_egress_pool_name(good), "{good}");
        }
        for bad in [
            "",
            "Pool",
            "pool one",
            "pool.1",
            "pööl",
            "a\n",
            &"x".repeat(EGRESS_POOL_NAME_MAX_BYTES + 1),
        ] {
            assert!(!is_egress_pool_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn weights_and_pools_are_checked() {
        assert!(check("t", None, DELIVERY_WEIGHT_DEFAULT).is_ok());
        assert!(check("t", Some("warm"), DELIVERY_WEIGHT_MAX).is_ok());
        assert!(check("t", None, 0).is_err());
        assert!(check("t", None, DELIVERY_WEIGHT_MAX + 1).is_err());
        assert!(check("t", Some("Warm"), 1).is_err());
    }
}
