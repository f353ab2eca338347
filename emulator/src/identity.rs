//! The identities the emulator knows: managed identities (system- and user-assigned) and a
//! service principal (app registration) with a secret, certificates and a federated credential.

use std::fmt;

/// A random GUID-shaped identifier (version-4 layout).
pub(crate) fn guid() -> String {
    use rand_core::RngCore as _;
    let a = rand_core::OsRng.next_u64();
    let b = rand_core::OsRng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0x0fff) as u16,
        ((b >> 48) as u16 & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// A string that is never shown by `Debug` or `Display` (client secrets, tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A managed identity (system-assigned or user-assigned).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ManagedIdentity {
    /// Client (application) ID: `client_id` selector, `appid` claim.
    pub client_id: String,
    /// Object (principal) ID: `object_id` selector, `oid` claim, the Redis username.
    pub object_id: String,
    /// ARM resource ID: `msi_res_id` (IMDS) / `mi_res_id` (App Service) selector, `xms_mirid` claim.
    pub resource_id: String,
}

impl ManagedIdentity {
    /// A user-assigned identity called `name` with fresh random IDs.
    pub fn user_assigned(name: &str) -> Self {
        Self {
            client_id: guid(),
            object_id: guid(),
            resource_id: format!(
                "/subscriptions/{}/resourcegroups/emulator/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
                guid()
            ),
        }
    }

    /// A system-assigned identity with fresh random IDs.
    pub fn system_assigned() -> Self {
        Self {
            client_id: guid(),
            object_id: guid(),
            resource_id: format!(
                "/subscriptions/{}/resourcegroups/emulator/providers/Microsoft.Compute/virtualMachines/emulator-vm",
                guid()
            ),
        }
    }
}

/// The service principal (app registration) of the Entra token endpoint.
#[derive(Clone, Debug)]
pub struct ServicePrincipal {
    /// Application (client) ID: `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// Object ID of the service principal: the `oid` of its tokens and its Redis username.
    pub object_id: String,
    /// Its client secret: `AZURE_CLIENT_SECRET`.
    pub client_secret: Secret,
    /// The `sub` a federated (workload identity) assertion must carry.
    pub federated_subject: String,
}

impl ServicePrincipal {
    /// A service principal with fresh random IDs and secret.
    pub fn random() -> Self {
        Self {
            client_id: guid(),
            object_id: guid(),
            client_secret: Secret::new(format!("emu~{}", guid().replace('-', ""))),
            federated_subject: "system:serviceaccount:default:workload-identity-sa".into(),
        }
    }
}

/// Everything the emulator knows about identities; read it from
/// [`Emulator::identities`](crate::Emulator::identities).
#[derive(Clone, Debug)]
pub struct Identities {
    /// Tenant ID (`tid`, `AZURE_TENANT_ID`).
    pub tenant_id: String,
    /// The system-assigned managed identity, if enabled.
    pub system_assigned: Option<ManagedIdentity>,
    /// The user-assigned managed identities.
    pub user_assigned: Vec<ManagedIdentity>,
    /// The service principal for client secret, certificate and workload identity.
    pub service_principal: ServicePrincipal,
}

/// Which identity a token is for (decides `oid`, `appid` and `xms_mirid`).
#[derive(Clone, Debug)]
pub(crate) struct Subject {
    pub(crate) oid: String,
    pub(crate) appid: String,
    pub(crate) mirid: Option<String>,
}

impl From<&ManagedIdentity> for Subject {
    fn from(m: &ManagedIdentity) -> Self {
        Self {
            oid: m.object_id.clone(),
            appid: m.client_id.clone(),
            mirid: Some(m.resource_id.clone()),
        }
    }
}

impl From<&ServicePrincipal> for Subject {
    fn from(s: &ServicePrincipal) -> Self {
        Self {
            oid: s.object_id.clone(),
            appid: s.client_id.clone(),
            mirid: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_guid_shaped_and_secrets_are_redacted() {
        let g = guid();
        assert_eq!(g.len(), 36);
        assert_eq!(g.matches('-').count(), 4);
        assert_eq!(&g[14..15], "4");
        assert!(!format!("{:?}", Secret::new("hunter2")).contains("hunter2"));
    }
}
