//! Managed identity: which identity to ask for, and which host's endpoint to ask
//!
//! [`ManagedIdentityId`] selects system-assigned or one user-assigned identity.
//! [`ManagedIdentity::detect`] picks the endpoint from the environment in the Azure SDKs' order
//! (azure-protocols §0.4): Service Fabric, App Service, Azure Arc, Azure ML, Cloud Shell, IMDS.

use crate::error::ConfigError;

/// Which managed identity to ask for
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentityId {
    /// The host's system-assigned identity
    #[default]
    SystemAssigned,
    /// A user-assigned identity by client (application) id
    ClientId(String),
    /// A user-assigned identity by object (principal) id: the `oid` Redis sees
    ObjectId(String),
    /// A user-assigned identity by ARM resource id
    ResourceId(String),
}

impl ManagedIdentityId {
    /// The query parameter selecting this identity; `resource_id_name` is the host's spelling of
    /// the resource-id parameter (`msi_res_id` for IMDS and Arc, `mi_res_id` for App Service)
    pub(crate) fn query_pair<'a>(
        &'a self,
        resource_id_name: &'static str,
    ) -> Option<(&'static str, &'a str)> {
        match self {
            ManagedIdentityId::SystemAssigned => None,
            ManagedIdentityId::ClientId(id) => Some(("client_id", id)),
            ManagedIdentityId::ObjectId(id) => Some(("object_id", id)),
            ManagedIdentityId::ResourceId(id) => Some((resource_id_name, id)),
        }
    }

    /// Whether this is the system-assigned identity
    pub fn is_system_assigned(&self) -> bool {
        matches!(self, ManagedIdentityId::SystemAssigned)
    }

    /// Checks that a user-assigned id is not empty
    ///
    /// # Errors
    /// A [`ConfigError`] on field `managed_identity` when the id is empty or blank.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            ManagedIdentityId::SystemAssigned => Ok(()),
            ManagedIdentityId::ClientId(id)
            | ManagedIdentityId::ObjectId(id)
            | ManagedIdentityId::ResourceId(id) => {
                if id.trim().is_empty() {
                    Err(ConfigError::new(
                        "managed_identity",
                        "a user-assigned identity needs a non-empty client id, object id or resource id",
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            ManagedIdentityId::SystemAssigned => "system-assigned identity".to_owned(),
            ManagedIdentityId::ClientId(id) => {
                format!("user-assigned identity with client id {id}")
            }
            ManagedIdentityId::ObjectId(id) => {
                format!("user-assigned identity with object id {id}")
            }
            ManagedIdentityId::ResourceId(id) => format!("user-assigned identity {id}"),
        }
    }
}
