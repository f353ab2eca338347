//! Arbitrary responses into every managed-identity parser (IMDS, App Service current and legacy,
//! Azure ML, Cloud Shell, Service Fabric, Arc's final answer): none may panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use redis_entraid_core::identity::app_service::{AppService, AppServiceLegacy};
use redis_entraid_core::identity::arc::{ArcPlatform, AzureArc};
use redis_entraid_core::identity::azure_ml::AzureMl;
use redis_entraid_core::identity::cloud_shell::CloudShell;
use redis_entraid_core::identity::imds::Imds;
use redis_entraid_core::identity::managed::ManagedIdentityId;
use redis_entraid_core::identity::service_fabric::ServiceFabric;
use redis_entraid_core::secret::SecretString;

fuzz_target!(|input: common::RawResponse| {
    let response = input.to_http();
    let system = ManagedIdentityId::SystemAssigned;
    let user = ManagedIdentityId::ClientId("c1".into());
    let _ = Imds::new(user.clone()).parse_response(&response);
    let _ = Imds::parse_probe_response(&response);
    let endpoint = "http://127.0.0.1:1/token";
    if let Ok(app) = AppService::new(endpoint, SecretString::new("h"), system.clone()) {
        let _ = app.parse_response(&response);
    }
    if let Ok(legacy) = AppServiceLegacy::new(endpoint, SecretString::new("s"), system.clone()) {
        let _ = legacy.parse_response(&response);
    }
    if let Ok(ml) = AzureMl::new(endpoint, SecretString::new("s"), system.clone(), None) {
        let _ = ml.parse_response(&response);
    }
    if let Ok(shell) = CloudShell::new(endpoint, &system) {
        let _ = shell.parse_response(&response);
    }
    if let Ok(fabric) = ServiceFabric::new(
        "https://127.0.0.1:2377/token",
        SecretString::new("s"),
        "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
        &system,
    ) {
        let _ = fabric.parse_response(&response);
    }
    if let Ok(arc) = AzureArc::new(endpoint, user, ArcPlatform::Linux) {
        let _ = arc.parse_response(&response);
    }
});
