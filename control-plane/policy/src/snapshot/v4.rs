//! Format 4 of the snapshot (`PTRLSNP4`): the tenants before `Tenant::egress_pool` and
//! `Tenant::delivery_weight` (issue 15). rkyv's archive has no optional fields, so an older
//! layout is read through a copy of its types and converted; every other type is unchanged and
//! shared.

use super::{
    DefaultLimits, DeletedTenant, DestinationLimit, NewTenantCap, PolicySnapshot, ReturnPath,
    SendingDomain, Tenant, DELIVERY_WEIGHT_DEFAULT,
};
use crate::error::PolicyError;
use crate::snapshot::Credential;

/// The magic of format 4.
pub(super) const MAGIC: &[u8; 8] = b"PTRLSNP4";

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct PolicySnapshotV4 {
    pub version: u64,
    pub generated_unix_ms: u64,
    pub tenants: Vec<TenantV4>,
    pub domains: Vec<SendingDomain>,
    pub credentials: Vec<Credential>,
    pub destination_limits: Vec<DestinationLimit>,
    pub defaults: DefaultLimits,
    pub return_path: ReturnPath,
    pub deleted_tenants: Vec<DeletedTenant>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct TenantV4 {
    pub id: String,
    pub name: String,
    pub suspended: bool,
    pub messages_per_second_max: Option<u32>,
    pub messages_per_day_max: Option<u64>,
    pub allow_unverified_domains: bool,
    pub new_tenant_cap: Option<NewTenantCap>,
    pub sending_disabled: Option<String>,
    pub reputation_warning: Option<String>,
    pub list_unsubscribe: bool,
    pub arc_seal: bool,
}

/// Validates and deserializes a format-4 payload (aligned), as the current format with every
/// tenant on the engine's default pool at the default weight.
pub(super) fn from_bytes(aligned: &[u8]) -> Result<PolicySnapshot, PolicyError> {
    let old = rkyv::from_bytes::<PolicySnapshotV4, rkyv::rancor::Error>(aligned)
        .map_err(|e| PolicyError::corrupt(format!("archive validation (format 4): {e}")))?;
    Ok(PolicySnapshot {
        version: old.version,
        generated_unix_ms: old.generated_unix_ms,
        tenants: old.tenants.into_iter().map(Tenant::from).collect(),
        domains: old.domains,
        credentials: old.credentials,
        destination_limits: old.destination_limits,
        defaults: old.defaults,
        return_path: old.return_path,
        deleted_tenants: old.deleted_tenants,
        shaping: Vec::new(),
    })
}

impl From<TenantV4> for Tenant {
    fn from(t: TenantV4) -> Tenant {
        Tenant {
            id: t.id,
            name: t.name,
            suspended: t.suspended,
            messages_per_second_max: t.messages_per_second_max,
            messages_per_day_max: t.messages_per_day_max,
            allow_unverified_domains: t.allow_unverified_domains,
            new_tenant_cap: t.new_tenant_cap,
            sending_disabled: t.sending_disabled,
            reputation_warning: t.reputation_warning,
            list_unsubscribe: t.list_unsubscribe,
            arc_seal: t.arc_seal,
            egress_pool: None,
            delivery_weight: DELIVERY_WEIGHT_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{decode, tests::sample, SNAPSHOT_HEADER_BYTES};

    /// What an engine of format 4 kept on disk (or a control plane of format 4 pushes).
    fn encode_v4(s: &PolicySnapshot) -> Vec<u8> {
        let old = PolicySnapshotV4 {
            version: s.version,
            generated_unix_ms: s.generated_unix_ms,
            tenants: s
                .tenants
                .iter()
                .map(|t| TenantV4 {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    suspended: t.suspended,
                    messages_per_second_max: t.messages_per_second_max,
                    messages_per_day_max: t.messages_per_day_max,
                    allow_unverified_domains: t.allow_unverified_domains,
                    new_tenant_cap: t.new_tenant_cap,
                    sending_disabled: t.sending_disabled.clone(),
                    reputation_warning: t.reputation_warning.clone(),
                    list_unsubscribe: t.list_unsubscribe,
                    arc_seal: t.arc_seal,
                })
                .collect(),
            domains: s.domains.clone(),
            credentials: s.credentials.clone(),
            destination_limits: s.destination_limits.clone(),
            defaults: s.defaults.clone(),
            return_path: s.return_path.clone(),
            deleted_tenants: s.deleted_tenants.clone(),
        };
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn a_format_4_snapshot_decodes_with_default_delivery_settings() {
        let mut s = sample();
        assert!(s.tenants[0].egress_pool.is_some() && s.tenants[0].delivery_weight > 1);
        let decoded = decode(&encode_v4(&s)).expect("format 4 decodes");
        assert!(decoded.tenants[0].arc_seal, "format 4's own field kept");
        for t in &mut s.tenants {
            t.egress_pool = None;
            t.delivery_weight = DELIVERY_WEIGHT_DEFAULT;
        }
        assert!(
            !s.shaping.is_empty() && decoded.shaping.is_empty(),
            "no overlay"
        );
        s.shaping.clear();
        assert_eq!(decoded, s);
    }

    /// Formats move forward only: a format this engine does not know is refused whole, never
    /// read as the nearest one it knows.
    #[test]
    fn a_later_format_is_refused() {
        let mut later = crate::snapshot::encode(&sample()).unwrap();
        later[..8].copy_from_slice(b"PTRLSNP6");
        let err = decode(&later).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
