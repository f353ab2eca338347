//! The environment as an explicit map: the core never reads the process environment
//!
//! Runtimes implement [`EnvSource`] over the process environment, reading only the variables
//! a flow asks for (a copy of the whole environment would hold `AZURE_CLIENT_SECRET` and
//! `IDENTITY_HEADER` in plain, never-wiped strings); tests pass a [`BTreeMap`]. Names and
//! meanings are the Azure SDKs' (azure-protocols §8.2, §0.4). An empty value counts as unset,
//! as in the SDKs.

use std::collections::BTreeMap;

use zeroize::Zeroize;

/// Read access to environment variables
pub trait EnvSource {
    /// The value of `name`, or `None` when unset
    fn get(&self, name: &str) -> Option<String>;
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl EnvSource for BTreeMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).map(|v| (*v).to_owned())
    }
}

impl<T: EnvSource + ?Sized> EnvSource for &T {
    fn get(&self, name: &str) -> Option<String> {
        (**self).get(name)
    }
}

/// The value of `name` with surrounding spaces removed; empty counts as unset
///
/// Values may be secrets (`AZURE_CLIENT_SECRET`, `IDENTITY_HEADER`, ...): an untrimmed
/// original is zeroized rather than left behind in freed memory.
pub(crate) fn var(env: &dyn EnvSource, name: &str) -> Option<String> {
    let mut value = env.get(name)?;
    let trimmed = value.trim();
    let out = if trimmed.len() == value.len() {
        value
    } else {
        let copy = trimmed.to_owned();
        value.zeroize();
        copy
    };
    (!out.is_empty()).then_some(out)
}

/// `"1"` or case-insensitive `"true"` (the Go and Rust SDKs' reading of boolean variables)
#[cfg_attr(not(feature = "certificate"), allow(dead_code))]
pub(crate) fn flag(env: &dyn EnvSource, name: &str) -> bool {
    var(env, name).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Tenant of the app registration / workload identity
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// Client (application) id; also the user-assigned managed identity in the default chain
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// Client secret of a service principal
pub const AZURE_CLIENT_SECRET: &str = "AZURE_CLIENT_SECRET";
/// Path of a PEM or PKCS#12 client certificate
pub const AZURE_CLIENT_CERTIFICATE_PATH: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
/// Password of the PKCS#12 client certificate
pub const AZURE_CLIENT_CERTIFICATE_PASSWORD: &str = "AZURE_CLIENT_CERTIFICATE_PASSWORD";
/// `1`/`true`: send the `x5c` certificate chain (subject name / issuer authentication)
pub const AZURE_CLIENT_SEND_CERTIFICATE_CHAIN: &str = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN";
/// Regional Entra endpoint for confidential clients (secret, certificate, workload identity):
/// a region name such as `westus2`, or `TryAutoDetect` to read [`REGION_NAME`]
pub const AZURE_REGIONAL_AUTHORITY_NAME: &str = "AZURE_REGIONAL_AUTHORITY_NAME";
/// The region Azure hosting sets (Functions, App Service), e.g. `West US 2`; read only for
/// `AZURE_REGIONAL_AUTHORITY_NAME=TryAutoDetect`
pub const REGION_NAME: &str = "REGION_NAME";
/// Entra authority host (sovereign cloud, emulator)
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Projected service-account token of AKS workload identity
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// AAD Pod Identity: replaces the IMDS host
pub const AZURE_POD_IDENTITY_AUTHORITY_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
/// Restricts the default chain: `dev`, `prod` or one credential name
pub const AZURE_TOKEN_CREDENTIALS: &str = "AZURE_TOKEN_CREDENTIALS";
/// App Service / Functions / Service Fabric / Arc identity endpoint
pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// App Service / Service Fabric request secret
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
/// Service Fabric: SHA-1 thumbprint of the identity endpoint's certificate
pub const IDENTITY_SERVER_THUMBPRINT: &str = "IDENTITY_SERVER_THUMBPRINT";
/// Service Fabric: api-version override
pub const IDENTITY_API_VERSION: &str = "IDENTITY_API_VERSION";
/// Azure Arc: the agent's IMDS endpoint (its presence marks an Arc host)
pub const IMDS_ENDPOINT: &str = "IMDS_ENDPOINT";
/// Legacy App Service, Azure ML, Cloud Shell endpoint
pub const MSI_ENDPOINT: &str = "MSI_ENDPOINT";
/// Legacy App Service, Azure ML request secret
pub const MSI_SECRET: &str = "MSI_SECRET";
/// Azure ML: client id of the default identity
pub const DEFAULT_IDENTITY_CLIENT_ID: &str = "DEFAULT_IDENTITY_CLIENT_ID";
/// Windows: base of the Arc token directory (`%ProgramData%\AzureConnectedMachineAgent\Tokens`)
pub const PROGRAM_DATA: &str = "ProgramData";
