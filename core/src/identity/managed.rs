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

use crate::identity::app_service::{AppService, AppServiceLegacy};
use crate::identity::arc::AzureArc;
use crate::identity::azure_ml::AzureMl;
use crate::identity::cloud_shell::CloudShell;
use crate::identity::env::{self, EnvSource};
use crate::identity::imds::Imds;
use crate::identity::service_fabric::ServiceFabric;

/// A managed-identity endpoint, one variant per kind of Azure host
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentity {
    /// Azure VM, VM scale set, AKS node: the Instance Metadata Service
    Imds(Imds),
    /// App Service, Functions, Automation (2019-08-01)
    AppService(AppService),
    /// App Service's legacy protocol (2017-09-01); never detected, only configured
    AppServiceLegacy(AppServiceLegacy),
    /// Azure Arc-enabled server
    AzureArc(AzureArc),
    /// Azure Machine Learning
    AzureMl(AzureMl),
    /// Azure Cloud Shell
    CloudShell(CloudShell),
    /// Service Fabric
    ServiceFabric(ServiceFabric),
}

impl ManagedIdentity {
    /// Picks the endpoint from the environment (azure-protocols §0.4, the Azure SDK for
    /// Python's order), asking for `id`:
    ///
    /// | variables set | host |
    /// |---|---|
    /// | `IDENTITY_ENDPOINT`, `IDENTITY_HEADER`, `IDENTITY_SERVER_THUMBPRINT` | Service Fabric |
    /// | `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` | App Service / Functions |
    /// | `IDENTITY_ENDPOINT`, `IMDS_ENDPOINT` | Azure Arc |
    /// | `MSI_ENDPOINT`, `MSI_SECRET` | Azure ML |
    /// | `MSI_ENDPOINT` | Cloud Shell |
    /// | none of these | IMDS (honouring `AZURE_POD_IDENTITY_AUTHORITY_HOST`) |
    ///
    /// An Arc server whose agent did not export `IDENTITY_ENDPOINT` / `IMDS_ENDPOINT` is not
    /// detected (that needs a file-system check); configure [`AzureArc`] explicitly there.
    ///
    /// # Errors
    /// A [`ConfigError`] when the variables of the detected host are invalid, when
    /// `IDENTITY_ENDPOINT` is set alone, or when the host cannot select `id`.
    pub fn detect(env: &dyn EnvSource, id: ManagedIdentityId) -> Result<Self, ConfigError> {
        let has = |name| env::var(env, name).is_some();
        if has(env::IDENTITY_ENDPOINT) {
            if has(env::IDENTITY_HEADER) {
                if has(env::IDENTITY_SERVER_THUMBPRINT) {
                    return ServiceFabric::from_env(env, &id).map(Self::ServiceFabric);
                }
                return AppService::from_env(env, id).map(Self::AppService);
            }
            if has(env::IMDS_ENDPOINT) {
                return AzureArc::from_env(env, id).map(Self::AzureArc);
            }
            return Err(ConfigError::new(
                env::IDENTITY_ENDPOINT,
                "is set without IDENTITY_HEADER (App Service) or IMDS_ENDPOINT (Azure Arc), so \
                 no managed identity endpoint can be chosen",
            ));
        }
        if has(env::MSI_ENDPOINT) {
            if has(env::MSI_SECRET) {
                return AzureMl::from_env(env, id).map(Self::AzureMl);
            }
            return CloudShell::from_env(env, &id).map(Self::CloudShell);
        }
        id.validate()?;
        Imds::from_env(env, id).map(Self::Imds)
    }

    /// The host kind, for messages
    pub fn host_name(&self) -> &'static str {
        match self {
            ManagedIdentity::Imds(_) => "IMDS",
            ManagedIdentity::AppService(_) => "App Service",
            ManagedIdentity::AppServiceLegacy(_) => "App Service (2017-09-01)",
            ManagedIdentity::AzureArc(_) => "Azure Arc",
            ManagedIdentity::AzureMl(_) => "Azure ML",
            ManagedIdentity::CloudShell(_) => "Cloud Shell",
            ManagedIdentity::ServiceFabric(_) => "Service Fabric",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn detect(vars: &[(&'static str, &'static str)]) -> Result<&'static str, ConfigError> {
        let map: BTreeMap<&str, &str> = vars.iter().copied().collect();
        ManagedIdentity::detect(&map, ManagedIdentityId::SystemAssigned).map(|m| m.host_name())
    }

    #[test]
    fn hosts_are_detected_in_the_sdk_order() {
        let endpoint = (env::IDENTITY_ENDPOINT, "https://localhost:2377/token");
        let header = (env::IDENTITY_HEADER, "h");
        let thumb = (
            env::IDENTITY_SERVER_THUMBPRINT,
            "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
        );
        assert_eq!(detect(&[endpoint, header, thumb]), Ok("Service Fabric"));
        assert_eq!(detect(&[endpoint, header]), Ok("App Service"));
        assert_eq!(
            detect(&[endpoint, (env::IMDS_ENDPOINT, "http://localhost:40342")]),
            Ok("Azure Arc")
        );
        let msi = (env::MSI_ENDPOINT, "http://localhost:50342/oauth2/token");
        assert_eq!(detect(&[msi, (env::MSI_SECRET, "s")]), Ok("Azure ML"));
        assert_eq!(detect(&[msi]), Ok("Cloud Shell"));
        assert_eq!(detect(&[]), Ok("IMDS"));
        assert!(detect(&[endpoint]).is_err_and(|e| e.field == env::IDENTITY_ENDPOINT));
        // empty values count as unset, as in the SDKs
        assert_eq!(
            detect(&[(env::IDENTITY_ENDPOINT, ""), (env::MSI_ENDPOINT, " ")]),
            Ok("IMDS")
        );
    }

    #[test]
    fn blank_user_assigned_ids_are_rejected() {
        let map: BTreeMap<&str, &str> = BTreeMap::new();
        let blank = ManagedIdentity::detect(&map, ManagedIdentityId::ClientId(" ".into()));
        assert!(blank.is_err_and(|e| e.field == "managed_identity"));
    }
}
