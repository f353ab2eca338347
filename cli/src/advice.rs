//! One sentence of advice for each cause of failure a user can meet

use redis_entraid_core::error::FetchError;

/// What to do about a failed token request; `imds` when the source was the VM's Instance
/// Metadata Service (an unreachable IMDS means this is not an Azure host)
pub(crate) fn for_fetch(error: &FetchError, imds: bool) -> String {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    match error {
        FetchError::Response(_) if lower.contains("no credential in the default chain") => {
            "no identity is configured here: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (service principal), run on an Azure host with a managed identity, or sign in with `az login` (each step's reason is in the error)".to_owned()
        }
        FetchError::Response(_) if lower.contains("aadsts7000215") || lower.contains("invalid_client") => {
            "Entra rejected the service principal's credential: the client secret or certificate is wrong or expired; create a new one for AZURE_CLIENT_ID".to_owned()
        }
        FetchError::Response(e) if e.status == Some(400) && (lower.contains("identity not found") || lower.contains("no such identity")) => {
            "the managed-identity endpoint has no such identity: assign a managed identity to this host, or check AZURE_CLIENT_ID names a user-assigned identity attached to it".to_owned()
        }
        FetchError::Response(e) if matches!(e.status, Some(429)) => {
            "the identity endpoint is throttling this host: wait for Retry-After; the library backs off by itself".to_owned()
        }
        FetchError::Response(e) if matches!(e.status, Some(s) if s >= 500) => {
            "the identity endpoint failed on its side (a 5xx): retry; if it lasts, check Azure status for managed identity in this region".to_owned()
        }
        FetchError::Response(_) => {
            "the identity provider refused the request: read its message above (AADSTS codes are documented by Microsoft)".to_owned()
        }
        FetchError::Transport(_) if lower.contains("is not installed") => {
            "the developer CLI is not installed here: install and sign in to it, or pick another --source".to_owned()
        }
        FetchError::Transport(_) if lower.contains("az login") || lower.contains("azd auth login") || lower.contains("not logged in") => {
            "the developer CLI is not signed in: run `az login` (or `azd auth login`) as the user the application runs as".to_owned()
        }
        FetchError::Transport(_) | FetchError::TimedOut { .. } if imds || lower.contains("169.254.169.254") => {
            "the Instance Metadata Service (IMDS) is unreachable: this is not an Azure VM/VMSS/AKS host with a managed identity (or a firewall blocks 169.254.169.254); elsewhere use a service principal or `az login`".to_owned()
        }
        FetchError::Transport(_) if lower.contains("could not connect") || lower.contains("no answer") => {
            "the identity endpoint is unreachable from here: check the endpoint variable it was built from (AZURE_POD_IDENTITY_AUTHORITY_HOST, IDENTITY_ENDPOINT, AZURE_AUTHORITY_HOST), DNS, proxies and firewalls".to_owned()
        }
        FetchError::Transport(_) if lower.contains("certificate") || lower.contains("tls") => {
            "TLS to the identity endpoint failed: trust its CA (SSL_CERT_FILE) or fix the host's clock".to_owned()
        }
        FetchError::Transport(_) => {
            "the token request got no usable answer: check the network path to the identity endpoint".to_owned()
        }
        FetchError::TimedOut { .. } => {
            "the identity endpoint did not answer in time: check its reachability, or raise --timeout".to_owned()
        }
        FetchError::Token(_) => {
            "the token is unusable for Redis (no oid claim, or not a JWT): request it for the Redis scope https://redis.azure.com/.default with an identity that has an object id".to_owned()
        }
        FetchError::NoLifetime => {
            "the identity endpoint sent a token without any lifetime: a non-standard endpoint; use a supported flow".to_owned()
        }
        FetchError::AlreadyExpired => {
            "the token was already expired when it arrived: fix this host's clock (NTP) or the endpoint's cache".to_owned()
        }
        _ => "read the error above".to_owned(),
    }
}

/// What to do when Redis refused `AUTH`
pub(crate) fn for_auth_reply(reply: &str, oid: Option<&str>, audience_ok: bool) -> String {
    let user = oid.unwrap_or("(the token has no oid)");
    if reply.starts_with("WRONGPASS") {
        if !audience_ok {
            return "Redis refused a token that is not for Redis: request the scope https://redis.azure.com/.default (resource https://redis.azure.com)".to_owned();
        }
        return format!(
            "the identity's object id {user} is not an access-policy user of this cache (or the token is from another tenant): add {user} under the cache's Authentication > Microsoft Entra ID users with a data access policy"
        );
    }
    if reply.starts_with("NOPERM") {
        return format!("user {user} authenticated but its access policy forbids this command: give it a policy that allows it");
    }
    "Redis refused the authentication: read its reply above".to_owned()
}
