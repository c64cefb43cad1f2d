//! Format 3 of the snapshot (`PTRLSNP3`): the tenants before `Tenant::arc_seal` (and format 5's
//! delivery settings). rkyv's archive has no optional fields, so an older layout is read
//! through a copy of its types and converted; every other type is unchanged and shared.

use super::{
    DefaultLimits, DeletedTenant, DestinationLimit, NewTenantCap, PolicySnapshot, ReturnPath,
    SendingDomain, Tenant,
};
use crate::error::PolicyError;
use crate::snapshot::Credential;

/// The magic of format 3.
pub(super) const MAGIC: &[u8; 8] = b"PTRLSNP3";

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct PolicySnapshotV3 {
    pub version: u64,
    pub generated_unix_ms: u64,
    pub tenants: Vec<TenantV3>,
    pub domains: Vec<SendingDomain>,
    pub credentials: Vec<Credential>,
    pub destination_limits: Vec<DestinationLimit>,
    pub defaults: DefaultLimits,
    pub return_path: ReturnPath,
    pub deleted_tenants: Vec<DeletedTenant>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct TenantV3 {
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
}

/// Validates and deserializes a format-3 payload (aligned), as the current format with
/// `arc_seal` off and the default delivery settings for every tenant.
pub(super) fn from_bytes(aligned: &[u8]) -> Result<PolicySnapshot, PolicyError> {
    let old = rkyv::from_bytes::<PolicySnapshotV3, rkyv::rancor::Error>(aligned)
        .map_err(|e| PolicyError::corrupt(format!("archive validation (format 3): {e}")))?;
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

impl From<TenantV3> for Tenant {
    fn from(t: TenantV3) -> Tenant {
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
            arc_seal: false,
            egress_pool: None,
            delivery_weight: super::DELIVERY_WEIGHT_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{decode, tests::sample, SNAPSHOT_HEADER_BYTES};

    /// What an engine of format 3 kept on disk (or a control plane of format 3 pushes).
    fn encode_v3(s: &PolicySnapshot) -> Vec<u8> {
        let old = PolicySnapshotV3 {
            version: s.version,
            generated_unix_ms: s.generated_unix_ms,
            tenants: s
                .tenants
                .iter()
                .map(|t| TenantV3 {
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
    fn a_format_3_snapshot_decodes_with_arc_sealing_off() {
        let mut s = sample();
        let decoded = decode(&encode_v3(&s)).expect("format 3 decodes");
        assert!(decoded.tenants.iter().all(|t| !t.arc_seal));
        for t in &mut s.tenants {
            t.arc_seal = false;
            t.egress_pool = None;
            t.delivery_weight = crate::snapshot::DELIVERY_WEIGHT_DEFAULT;
        }
        assert!(
            !s.shaping.is_empty() && decoded.shaping.is_empty(),
            "no overlay"
        );
        s.shaping.clear();
        assert_eq!(decoded, s);
    }
}
