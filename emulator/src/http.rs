//! The identity endpoints (IMDS, App Service, Entra v2 token endpoint) and the control API, over
//! HTTP/1.1 with hyper, plain and TLS.

use std::collections::HashMap;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rsa::RsaPublicKey;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::counters::{bump, CounterCells};
use crate::faults::{Endpoint, Fault, FaultKind, Faults};
use crate::identity::{guid, Identities, ManagedIdentity, Subject};
use crate::issuer::{Issued, Issuer, TokenSpec, TOKEN_EXCHANGE_AUDIENCE};
use crate::jwt::{now_secs, Alg, Decoded};

/// Path of the App Service identity endpoint (`IDENTITY_ENDPOINT`).
pub(crate) const APP_SERVICE_PATH: &str = "/msi/token";
/// Path of the IMDS token endpoint.
pub(crate) const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const MAX_BODY: usize = 1 << 20;
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client certificate registered for the service principal.
#[derive(Clone)]
pub(crate) struct RegisteredCert {
    pub(crate) x5t: String,
    pub(crate) x5t_s256: String,
    pub(crate) key: RsaPublicKey,
}

/// Everything the HTTP endpoints need.
pub(crate) struct HttpState {
    pub(crate) issuer: Issuer,
    pub(crate) identities: Identities,
    pub(crate) identity_header: String,
    pub(crate) certs: Vec<RegisteredCert>,
    pub(crate) federated_issuer: String,
    pub(crate) counters: Arc<CounterCells>,
    pub(crate) faults: Faults,
}

/// Returned by the service to make hyper drop the connection without an answer.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: close connection")
    }
}

impl std::error::Error for DropConnection {}

type Resp = Response<Full<Bytes>>;

/// Accepts connections forever, each served by its own task.
pub(crate) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<HttpState>) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                // As the Azure front ends do: without it a response the server writes in two
                // segments waits for the client's delayed ACK (up to 40 ms on Linux).
                let _ = s.set_nodelay(true);
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => serve_connection(TokioIo::new(s), state, scheme).await,
                    Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                },
                None => serve_connection(TokioIo::new(stream), state, scheme).await,
            }
        });
    }
}

async fn serve_connection<I>(io: I, state: Arc<HttpState>, scheme: &'static str)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { route(&state, scheme, req).await }
    });
    if let Err(e) = http1::Builder::new().serve_connection(io, svc).await {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn query_map(req: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn route(
    state: &HttpState,
    scheme: &'static str,
    req: Request<Incoming>,
) -> Result<Resp, DropConnection> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, path.as_str()) {
        (Method::GET, IMDS_PATH) => token_endpoint(state, Endpoint::Imds, scheme, req).await,
        (Method::GET, APP_SERVICE_PATH) => {
            token_endpoint(state, Endpoint::AppService, scheme, req).await
        }
        (Method::POST, _)
            if segments.len() == 4 && segments[1..] == ["oauth2", "v2.0", "token"] =>
        {
            token_endpoint(state, Endpoint::Entra, scheme, req).await
        }
        (_, p) if p.starts_with("/_emulator/") => Ok(control(state, req).await),
        (_, IMDS_PATH) | (_, APP_SERVICE_PATH) => Ok(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed", "error_description": "Method not allowed"}),
        )),
        _ => Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "error_description": "Not found"}),
        )),
    }
}

/// Counts, applies faults, then answers a token request.
async fn token_endpoint(
    state: &HttpState,
    endpoint: Endpoint,
    scheme: &'static str,
    req: Request<Incoming>,
) -> Result<Resp, DropConnection> {
    let c = &state.counters;
    bump(match endpoint {
        Endpoint::Imds => &c.imds_requests,
        Endpoint::AppService => &c.app_service_requests,
        Endpoint::Entra => &c.entra_requests,
    });
    let mut shape = TokenShape::default();
    if let Some(kind) = state.faults.take(endpoint) {
        bump(&c.faults_served);
        tracing::info!(?endpoint, fault = ?kind, "serving injected fault");
        match kind {
            FaultKind::Delay { millis } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
            }
            FaultKind::CloseConnection => return Err(DropConnection),
            FaultKind::MalformedBody => {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    b"<html><body>this is not JSON {\"access_token\":</body></html>",
                )));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(r);
            }
            FaultKind::Status { status } => {
                return Ok(fault_error(endpoint, status_of(status), None));
            }
            FaultKind::TooManyRequests { retry_after_secs } => {
                return Ok(fault_error(
                    endpoint,
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(retry_after_secs),
                ));
            }
            FaultKind::InvalidClient => {
                return Ok(entra_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                ));
            }
            FaultKind::TokenWithoutOid => shape.without_oid = true,
            FaultKind::ExpiredToken => shape.expired = true,
        }
    }
    Ok(match endpoint {
        Endpoint::Imds => imds(state, &req, shape),
        Endpoint::AppService => app_service(state, &req, shape),
        Endpoint::Entra => entra(state, scheme, req, shape).await,
    })
}

#[derive(Default, Clone, Copy)]
struct TokenShape {
    without_oid: bool,
    expired: bool,
}

fn issue(
    state: &HttpState,
    subject: &Subject,
    resource: &str,
    appidacr: &str,
    shape: TokenShape,
) -> Issued {
    bump(&state.counters.tokens_issued);
    state.issuer.issue(
        subject,
        resource,
        appidacr,
        shape.without_oid,
        shape.expired,
    )
}

fn fault_error(endpoint: Endpoint, status: StatusCode, retry_after: Option<u64>) -> Resp {
    let mut r = match endpoint {
        Endpoint::Imds => imds_error(status, imds_code(status), imds_text(status)),
        Endpoint::AppService => app_service_error(status, imds_text(status)),
        Endpoint::Entra => {
            let (err, code, text) = match status.as_u16() {
                429 => ("temporarily_unavailable", 50196, "The server terminated an operation because it encountered a client request loop."),
                503 => ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
                400 => ("invalid_request", 900144, "The request is not valid."),
                404 => ("invalid_request", 90002, "Tenant not found."),
                _ => ("server_error", 50000, "There was an error issuing a token or an issue with our sign-in service."),
            };
            entra_error(status, err, code, text)
        }
    };
    if let Some(secs) = retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn imds_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        410 => "service_unavailable",
        429 => "too_many_requests",
        503 => "service_unavailable",
        _ => "server_error",
    }
}

fn imds_text(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "IMDS endpoint is updating",
        410 => "IMDS is going through updates",
        429 => "Too many requests",
        503 => "Service unavailable",
        _ => "Internal server error",
    }
}

fn imds_error(status: StatusCode, error: &str, description: &str) -> Resp {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn app_service_error(status: StatusCode, message: &str) -> Resp {
    json_response(
        status,
        &json!({"statusCode": status.as_u16(), "message": message, "correlationId": guid()}),
    )
}

/// Entra's error body: `error`, `error_description`, `error_codes`, `timestamp`, `trace_id`,
/// `correlation_id`, `error_uri`.
fn entra_error(status: StatusCode, error: &str, code: u32, text: &str) -> Resp {
    let trace = guid();
    let corr = guid();
    let ts = timestamp(now_secs());
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

/// `YYYY-MM-DD HH:MM:SSZ` for Unix seconds (UTC).
pub(crate) fn timestamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Finds the managed identity selected by at most one of the selector parameters.
fn select_identity<'a>(
    ids: &'a Identities,
    q: &HashMap<String, String>,
    resource_param: &str,
    object_params: &[&str],
) -> Result<&'a ManagedIdentity, &'static str> {
    let mut selectors = Vec::new();
    if let Some(v) = q.get("client_id") {
        selectors.push((0, v));
    }
    for p in object_params {
        if let Some(v) = q.get(*p) {
            selectors.push((1, v));
        }
    }
    if let Some(v) = q.get(resource_param) {
        selectors.push((2, v));
    }
    let all = ids.system_assigned.iter().chain(ids.user_assigned.iter());
    match selectors.as_slice() {
        [] => ids
            .system_assigned
            .as_ref()
            .ok_or("Identity not found"),
        [(kind, v)] => {
            let mut all = all;
            all.find(|m| match kind {
                0 => m.client_id.eq_ignore_ascii_case(v),
                1 => m.object_id.eq_ignore_ascii_case(v),
                _ => m.resource_id.eq_ignore_ascii_case(v),
            })
            .ok_or("Identity not found")
        }
        _ => Err("Multiple identity selectors specified; at most one of client_id, object_id and the resource id is allowed"),
    }
}

fn imds(state: &HttpState, req: &Request<Incoming>, shape: TokenShape) -> Resp {
    let bad = |desc: &str| imds_error(StatusCode::BAD_REQUEST, "invalid_request", desc);
    if req.headers().get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "bad_request_102",
            "Required metadata header not specified",
        );
    }
    if req.headers().contains_key("x-forwarded-for") {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Requests with X-Forwarded-For are not allowed",
        );
    }
    let q = query_map(req);
    match q.get("api-version").map(String::as_str) {
        None => return bad("Required query variable 'api-version' is missing"),
        Some(v) if v < "2018-02-01" => return bad("Invalid API version"),
        Some(_) => {}
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return bad("Required query variable 'resource' is missing");
    };
    let mi = match select_identity(&state.identities, &q, "msi_res_id", &["object_id"]) {
        Ok(mi) => mi,
        Err(e) => return bad(e),
    };
    let issued = issue(state, &Subject::from(mi), resource, "2", shape);
    let life = issued.expires_in().to_string();
    let mut body = json!({
        "access_token": issued.token,
        "client_id": mi.client_id,
        "expires_in": life,
        "expires_on": issued.exp.to_string(),
        "ext_expires_in": life,
        "not_before": issued.nbf.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    });
    if let (Some(v), Value::Object(m)) = (q.get("object_id"), &mut body) {
        m.insert("object_id".into(), Value::from(v.clone()));
    }
    if let (Some(v), Value::Object(m)) = (q.get("msi_res_id"), &mut body) {
        m.insert("msi_res_id".into(), Value::from(v.clone()));
    }
    json_response(StatusCode::OK, &body)
}

fn app_service(state: &HttpState, req: &Request<Incoming>, shape: TokenShape) -> Resp {
    let header = req
        .headers()
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if header != Some(state.identity_header.as_str()) {
        return app_service_error(
            StatusCode::BAD_REQUEST,
            "The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER",
        );
    }
    let q = query_map(req);
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return app_service_error(StatusCode::BAD_REQUEST, "api-version must be 2019-08-01");
    }
    if q.contains_key("msi_res_id") {
        return app_service_error(
            StatusCode::BAD_REQUEST,
            "App Service selects a resource id with mi_res_id, not msi_res_id",
        );
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return app_service_error(StatusCode::BAD_REQUEST, "resource is required");
    };
    let mi = match select_identity(
        &state.identities,
        &q,
        "mi_res_id",
        &["object_id", "principal_id"],
    ) {
        Ok(mi) => mi,
        Err(e) => return app_service_error(StatusCode::BAD_REQUEST, e),
    };
    let issued = issue(state, &Subject::from(mi), resource, "2", shape);
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": issued.token,
            "expires_on": issued.exp.to_string(),
            "not_before": issued.nbf.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": mi.client_id,
        }),
    )
}

async fn entra(
    state: &HttpState,
    scheme: &'static str,
    req: Request<Incoming>,
    shape: TokenShape,
) -> Resp {
    let bad =
        |err: &str, code: u32, text: &str| entra_error(StatusCode::BAD_REQUEST, err, code, text);
    let unauthorized =
        |code: u32, text: &str| entra_error(StatusCode::UNAUTHORIZED, "invalid_client", code, text);
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req.uri().path().to_string();
    let token_url = format!("{scheme}://{host}{path}");
    let tenant = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return bad(
                "invalid_request",
                900144,
                "The request body is too large or unreadable.",
            )
        }
    };
    if !is_form {
        return bad(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if ["common", "organizations", "consumers"].contains(&tenant.as_str()) {
        return bad("invalid_request", 50059, "No tenant-identifying information found in either the request or implied by any provided credentials.");
    }
    if !tenant.eq_ignore_ascii_case(&state.identities.tenant_id) {
        return bad(
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    match form.get("grant_type").map(String::as_str) {
        None => {
            return bad(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        }
        Some("client_credentials") => {}
        Some(_) => {
            return bad(
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            )
        }
    }
    let Some(client_id) = form.get("client_id") else {
        return bad(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(scope) = form.get("scope") else {
        return bad(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let Some(resource) = scope
        .strip_suffix("/.default")
        .filter(|r| !r.is_empty() && !r.contains(' '))
    else {
        return bad("invalid_scope", 1002012, &format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."));
    };
    let sp = &state.identities.service_principal;
    let (subject, appidacr) = if let Some(secret) = form.get("client_secret") {
        if !client_id.eq_ignore_ascii_case(&sp.client_id) {
            return bad(
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory."
                ),
            );
        }
        if secret != sp.client_secret.expose() {
            return unauthorized(7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.");
        }
        (Subject::from(sp), "1")
    } else if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
            return bad("invalid_request", 50027, "Invalid JWT token: client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.");
        }
        let Ok(d) = Decoded::parse(assertion) else {
            return bad(
                "invalid_request",
                50027,
                "Invalid JWT token. Token format not valid.",
            );
        };
        if d.claim_str("iss") == Some(state.federated_issuer.as_str()) {
            match verify_federated(state, &d, client_id) {
                Ok(s) => (s, "2"),
                Err(r) => return *r,
            }
        } else {
            if !client_id.eq_ignore_ascii_case(&sp.client_id) {
                return bad(
                    "unauthorized_client",
                    700016,
                    &format!(
                        "Application with identifier '{client_id}' was not found in the directory."
                    ),
                );
            }
            if let Err(r) = verify_certificate_assertion(state, &d, client_id, &token_url) {
                return *r;
            }
            (Subject::from(sp), "2")
        }
    } else {
        return unauthorized(7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
    };
    let issued = issue(state, &subject, resource, appidacr, shape);
    let life = issued.expires_in();
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": life,
            "ext_expires_in": life,
            "access_token": issued.token,
        }),
    )
}

fn verify_certificate_assertion(
    state: &HttpState,
    d: &Decoded<'_>,
    client_id: &str,
    token_url: &str,
) -> Result<(), Box<Resp>> {
    let unauthorized = |code: u32, text: &str| {
        Box::new(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            text,
        ))
    };
    let s256 = d.header.get("x5t#S256").and_then(Value::as_str);
    let s1 = d.header.get("x5t").and_then(Value::as_str);
    let cert = state.certs.iter().find(|c| {
        s256.is_some_and(|t| t.trim_end_matches('=') == c.x5t_s256)
            || s1.is_some_and(|t| t.trim_end_matches('=') == c.x5t)
    });
    let Some(cert) = cert else {
        return Err(unauthorized(700027, "Client assertion failed signature validation: the key was not found (no registered certificate has this x5t / x5t#S256)."));
    };
    if d.verify(&cert.key, &[Alg::Ps256, Alg::Rs256]).is_err() {
        return Err(unauthorized(
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    if !d.has_audience(token_url) {
        return Err(unauthorized(
            700023,
            &format!(
                "Client assertion audience claim does not match the token endpoint '{token_url}'."
            ),
        ));
    }
    if d.claim_str("iss") != Some(client_id) || d.claim_str("sub") != Some(client_id) {
        return Err(unauthorized(700021, "Client assertion application identifier doesn't match 'client_id' parameter (iss and sub must both be the client id)."));
    }
    match d.claim_num("exp") {
        Some(exp) if exp > now_secs() => Ok(()),
        _ => Err(unauthorized(
            700024,
            "Client assertion is not within its valid time range.",
        )),
    }
}

fn verify_federated(
    state: &HttpState,
    d: &Decoded<'_>,
    client_id: &str,
) -> Result<Subject, Box<Resp>> {
    let fail = |code: u32, text: &str| {
        Box::new(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            code,
            text,
        ))
    };
    let ids = &state.identities;
    let sp = &ids.service_principal;
    let subject = if client_id.eq_ignore_ascii_case(&sp.client_id) {
        Subject::from(sp)
    } else if let Some(mi) = ids
        .user_assigned
        .iter()
        .find(|m| m.client_id.eq_ignore_ascii_case(client_id))
    {
        Subject::from(mi)
    } else {
        return Err(Box::new(entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        )));
    };
    if d.verify(state.issuer.signer.public_key(), &[Alg::Rs256])
        .is_err()
    {
        return Err(fail(
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    if !d.has_audience(TOKEN_EXCHANGE_AUDIENCE) {
        return Err(fail(
            700212,
            "No matching federated identity record found for presented assertion audience.",
        ));
    }
    if d.claim_str("sub") != Some(sp.federated_subject.as_str()) {
        return Err(fail(
            70021,
            "No matching federated identity record found for presented assertion.",
        ));
    }
    match d.claim_num("exp") {
        Some(exp) if exp > now_secs() => Ok(subject),
        _ => Err(fail(
            700024,
            "Client assertion is not within its valid time range.",
        )),
    }
}

/// The control API: `GET /_emulator/counters`, `GET|POST|DELETE /_emulator/faults`,
/// `POST /_emulator/token`, `GET /_emulator/signing-key`.
async fn control(state: &HttpState, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unreadable body"}),
            )
        }
    };
    let bad = |e: String| json_response(StatusCode::BAD_REQUEST, &json!({"error": e}));
    match (method, path.as_str()) {
        (Method::GET, "/_emulator/counters") => json_response(
            StatusCode::OK,
            &serde_json::to_value(state.counters.snapshot()).unwrap_or(Value::Null),
        ),
        (Method::GET, "/_emulator/faults") => json_response(
            StatusCode::OK,
            &serde_json::to_value(state.faults.pending()).unwrap_or(Value::Null),
        ),
        (Method::POST, "/_emulator/faults") => {
            let parsed: Result<Vec<Fault>, _> = serde_json::from_slice::<Fault>(&body)
                .map(|f| vec![f])
                .or_else(|_| serde_json::from_slice::<Vec<Fault>>(&body));
            match parsed {
                Ok(faults) => {
                    for f in faults {
                        state.faults.inject(f);
                    }
                    json_response(
                        StatusCode::OK,
                        &serde_json::to_value(state.faults.pending()).unwrap_or(Value::Null),
                    )
                }
                Err(e) => bad(format!("invalid fault: {e}")),
            }
        }
        (Method::DELETE, "/_emulator/faults") => {
            state.faults.clear();
            json_response(StatusCode::OK, &json!([]))
        }
        (Method::POST, "/_emulator/token") => {
            let v: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return bad(format!("invalid JSON: {e}")),
                }
            };
            let default_oid = state
                .identities
                .system_assigned
                .as_ref()
                .map(|m| m.object_id.clone())
                .unwrap_or_else(|| state.identities.service_principal.object_id.clone());
            let mut spec = TokenSpec::for_oid(
                v.get("oid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or(default_oid),
            );
            if let Some(aud) = v.get("audience").and_then(Value::as_str) {
                spec = spec.audience(aud);
            }
            if let Some(secs) = v.get("lifetime_secs").and_then(Value::as_u64) {
                spec = spec.lifetime(Duration::from_secs(secs));
            }
            if v.get("expired").and_then(Value::as_bool) == Some(true) {
                spec = spec.expired();
            }
            if v.get("without_oid").and_then(Value::as_bool) == Some(true) {
                spec = spec.without_oid();
            }
            let issued = state.issuer.mint(&spec);
            json_response(
                StatusCode::OK,
                &json!({"access_token": issued.token, "expires_on": issued.exp}),
            )
        }
        (Method::GET, "/_emulator/signing-key") => {
            let mut r = Response::new(Full::new(Bytes::from(state.issuer.signer.public_key_pem())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            r
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown control endpoint"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_entra_shaped() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(timestamp(1_767_225_599), "2025-12-31 23:59:59Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00Z");
    }
}
