//! Shared wire helpers: lenient numbers, legacy dates, `Retry-After`, error bodies, retry rules

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};
use zeroize::Zeroize;

use crate::error::{EntraErrorBody, ResponseError};
use crate::token::{AccessToken, TokenResponse};

/// Longest `Retry-After` we believe (one hour, MSAL-Py's cap)
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest server text copied into an error message
const MAX_TEXT: usize = 512;

/// An integer, or a string holding a (possibly signed) decimal integer; `None` otherwise
pub(crate) fn int_or_string(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64().and_then(|f| {
                // Saturating float to int cast; NaN never reaches here (JSON has no NaN).
                f.is_finite().then_some(f as i64)
            })
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// `expires_on` in any shape seen in the wild, as Unix seconds
///
/// Accepts a number, a numeric string, `MM/DD/YYYY HH:MM:SS +00:00` (Linux App Service),
/// `M/D/YYYY h:MM:SS AM +00:00` (Windows App Service), `MM/DD/YYYY HH:MM:SS` and
/// `YYYY-MM-DD HH:MM:SS` (UTC assumed, as MSAL-Go does) and RFC 3339.
pub(crate) fn expires_on(value: &Value) -> Option<i64> {
    if let Some(n) = int_or_string(value) {
        return Some(n);
    }
    let text = value.as_str()?.trim();
    parse_date(text)
}

/// A date string in one of the legacy formats, as Unix seconds
pub(crate) fn parse_date(text: &str) -> Option<i64> {
    if text.len() > 64 {
        return None;
    }
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let with_offset_24h = format_description!(
        "[month padding:none]/[day padding:none]/[year] [hour padding:none]:[minute]:[second] [offset_hour sign:mandatory]:[offset_minute]"
    );
    let with_offset_12h = format_description!(
        "[month padding:none]/[day padding:none]/[year] [hour repr:12 padding:none]:[minute]:[second] [period case_sensitive:false] [offset_hour sign:mandatory]:[offset_minute]"
    );
    for format in [with_offset_24h, with_offset_12h] {
        if let Ok(t) = OffsetDateTime::parse(text, format) {
            return Some(t.unix_timestamp());
        }
    }
    let utc_slash = format_description!(
        "[month padding:none]/[day padding:none]/[year] [hour]:[minute]:[second]"
    );
    let utc_dash = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    for format in [utc_slash, utc_dash] {
        if let Ok(t) = PrimitiveDateTime::parse(text, format) {
            return Some(t.assume_utc().unix_timestamp());
        }
    }
    None
}

/// Azure CLI's `expiresOn`: `YYYY-MM-DD HH:MM:SS[.ffffff]` in the machine's local time zone
pub(crate) fn parse_local_date(text: &str, offset: UtcOffset) -> Option<i64> {
    if text.len() > 64 {
        return None;
    }
    let with_fraction =
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
    let without = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    for format in [with_fraction, without] {
        if let Ok(t) = PrimitiveDateTime::parse(text.trim(), format) {
            return Some(t.assume_offset(offset).unix_timestamp());
        }
    }
    None
}

/// The wait a response asks for: `retry-after-ms`, `x-ms-retry-after-ms`, then `Retry-After`
///
/// `Retry-After` may be delta-seconds or an HTTP date; a date is measured against the
/// response's own `Date` header (so no clock is read) and ignored without one. Capped at one hour.
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = header_str(headers, name).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER));
        }
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    let now: SystemTime = httpdate::parse_http_date(header_str(headers, "date")?.trim()).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// A header's value when it is visible ASCII
pub(crate) fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Server text cut to a readable length on a character boundary
pub(crate) fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_TEXT).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// A parsed JSON object whose string values are zeroized when it is dropped
///
/// Token answers (and the CLIs' output) hold the access token: the one copy kept is the
/// [`AccessToken`] taken out of it, so the parsed map must not linger in freed memory.
/// (serde_json's own scratch buffer, used only for strings with escapes, is out of reach.)
pub(crate) struct JsonObject(Map<String, Value>);

impl std::ops::Deref for JsonObject {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for JsonObject {
    fn drop(&mut self) {
        wipe_strings(&mut self.0);
    }
}

/// Zeroizes every string value of `map`, however deep
fn wipe_strings(map: &mut Map<String, Value>) {
    fn wipe(value: &mut Value) {
        match value {
            Value::String(s) => s.zeroize(),
            Value::Array(items) => items.iter_mut().for_each(wipe),
            Value::Object(map) => map.values_mut().for_each(wipe),
            _ => {}
        }
    }
    map.values_mut().for_each(wipe);
}

/// The JSON object in a body, if it is one
pub(crate) fn json_object(body: &[u8]) -> Option<JsonObject> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(JsonObject(map)),
        _ => None,
    }
}

fn string_field(map: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| match map.get(*name) {
        Some(Value::String(s)) if !s.is_empty() => Some(clip(s)),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Reads every error shape the identity endpoints use into one [`EntraErrorBody`]
///
/// - Entra: `{"error": "...", "error_description": "...", "error_codes": [..], "correlation_id", "trace_id"}`
/// - App Service / MSAL-NET: `{"statusCode": 400, "message": "...", "correlationId": "..."}`
/// - Service Fabric / Cloud Shell: `{"error": {"code": "...", "message": "...", "correlationId": "..."}}`
pub(crate) fn error_body(body: &[u8]) -> Option<EntraErrorBody> {
    let map = json_object(body)?;
    let (nested, top) = match map.get("error") {
        Some(Value::Object(inner)) => (Some(inner), &map),
        _ => (None, &map),
    };
    let mut out = EntraErrorBody {
        error: match nested {
            Some(inner) => string_field(inner, &["code", "error"]),
            None => string_field(top, &["error", "code"]),
        },
        error_description: nested
            .and_then(|inner| string_field(inner, &["message", "error_description"]))
            .or_else(|| string_field(top, &["error_description", "message", "Message"])),
        correlation_id: nested
            .and_then(|inner| string_field(inner, &["correlationId", "correlation_id"]))
            .or_else(|| string_field(top, &["correlation_id", "correlationId"])),
        trace_id: string_field(top, &["trace_id", "traceId"]),
        ..EntraErrorBody::default()
    };
    if let Some(Value::Array(codes)) = top.get("error_codes") {
        out.error_codes = codes.iter().filter_map(Value::as_i64).take(16).collect();
    }
    let empty = out.error.is_none()
        && out.error_description.is_none()
        && out.correlation_id.is_none()
        && out.error_codes.is_empty();
    (!empty).then_some(out)
}

/// Reads a 2xx token body: `access_token` required, lifetimes optional and lenient
///
/// `token_field` is `access_token` for HTTP endpoints; the CLIs use other names.
pub(crate) fn token_body(
    body: &[u8],
    source: &str,
    status: u16,
) -> Result<TokenResponse, ResponseError> {
    let Some(map) = json_object(body) else {
        return Err(ResponseError::new(
            format!(
                "{source} answered {status} but the body ({} bytes) is not a JSON object; \
                 something other than the identity endpoint may be listening",
                body.len()
            ),
            false,
        )
        .with_status(status));
    };
    token_from_map(&map, "access_token", source).map_err(|e| e.with_status(status))
}

/// Reads a 2xx HTTP token answer: the body as [`token_body`], plus the server's clock from the
/// `Date` header (ignored when missing or not an HTTP date)
pub(crate) fn token_response(
    response: &http::Response<Vec<u8>>,
    source: &str,
) -> Result<TokenResponse, ResponseError> {
    let mut token = token_body(response.body(), source, response.status().as_u16())?;
    token.server_date = server_date(response.headers());
    Ok(token)
}

/// The `Date` header as a time, if it is a valid HTTP date
pub(crate) fn server_date(headers: &http::HeaderMap) -> Option<SystemTime> {
    httpdate::parse_http_date(header_str(headers, "date")?.trim()).ok()
}

/// A token response from a JSON object whose token sits under `token_field`
pub(crate) fn token_from_map(
    map: &Map<String, Value>,
    token_field: &str,
    source: &str,
) -> Result<TokenResponse, ResponseError> {
    let token = match map.get(token_field) {
        Some(Value::String(t)) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            return Err(ResponseError::new(
                format!("{source} answered without a `{token_field}`; the response cannot be used"),
                false,
            ))
        }
    };
    let mut response = TokenResponse::new(AccessToken::new(token));
    response.expires_in = map.get("expires_in").and_then(int_or_string);
    response.expires_on = map.get("expires_on").and_then(expires_on);
    response.refresh_in = map.get("refresh_in").and_then(int_or_string);
    response.token_type = match map.get("token_type") {
        Some(Value::String(t)) => Some(clip(t)),
        _ => None,
    };
    Ok(response)
}

/// Which retry table applies to a failed status (azure-protocols §11)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryRules {
    /// IMDS and Arc after the challenge: 404, 408, 410, 429, 5xx
    Imds,
    /// App Service / Functions: 408, 429, 5xx
    AppService,
    /// Service Fabric: 408, 429 and 5xx; 404 is a misconfiguration
    ServiceFabric,
    /// Cloud Shell, Azure ML: 408, 429 and 5xx
    LocalDefault,
    /// Entra token endpoint: 408, 429, 5xx, or `temporarily_unavailable`
    Entra,
}

impl RetryRules {
    fn status_is_retryable(self, status: u16) -> bool {
        let server = (500..600).contains(&status);
        match self {
            RetryRules::Imds => matches!(status, 404 | 408 | 410 | 429) || server,
            // 408 is retryable on every managed-identity host: MSAL (NET, Go, Python) retries
            // 408, 429, 500, 502, 503 and 504 whatever the host, and azure-core's default policy
            // retries 408. Treating it as final would also make the default chain read it as
            // "no identity here" and fall through to the CLIs.
            RetryRules::AppService
            | RetryRules::ServiceFabric
            | RetryRules::LocalDefault
            | RetryRules::Entra => matches!(status, 408 | 429) || server,
        }
    }
}

/// The error for a non-2xx answer, classified by `rules`
pub(crate) fn status_error(
    response: &http::Response<Vec<u8>>,
    source: &str,
    rules: RetryRules,
) -> ResponseError {
    let status = response.status().as_u16();
    let body = error_body(response.body());
    let mut retryable = rules.status_is_retryable(status);
    if rules == RetryRules::Entra
        && body
            .as_ref()
            .and_then(|b| b.error.as_deref())
            .is_some_and(|e| e == "temporarily_unavailable")
    {
        retryable = true;
    }
    let advice = advice(rules, status, body.as_ref());
    let mut error = ResponseError::new(
        format!("{source} refused the token request: {advice}"),
        retryable,
    )
    .with_status(status);
    if let Some(after) = retry_after(response.headers()) {
        error = error.with_retry_after(after);
    }
    if let Some(body) = body {
        error = error.with_entra(body);
    }
    error
}

fn advice(rules: RetryRules, status: u16, body: Option<&EntraErrorBody>) -> &'static str {
    let code = body.and_then(|b| b.error.as_deref()).unwrap_or("");
    match (rules, status, code) {
        (_, 408, _) => "the endpoint timed out waiting for the request; try again",
        (_, 429, _) => "throttled; wait and try again",
        (_, 500..=599, _) | (RetryRules::Entra, _, "temporarily_unavailable") => {
            "the service had a transient failure; try again"
        }
        (RetryRules::Imds, 400, _) => {
            "no such identity on this host: assign a managed identity to the VM, or fix the \
             client_id / object_id / resource id you selected"
        }
        (RetryRules::Imds, 404 | 410, _) => "the metadata service is updating; try again shortly",
        (RetryRules::ServiceFabric, 404, _) => {
            "the application has no managed identity configured (do not retry; fix the cluster \
             or application manifest)"
        }
        (RetryRules::Entra, _, "invalid_client") => {
            "the client credential was rejected: check the client id, secret or certificate \
             registered on the app"
        }
        (RetryRules::Entra, _, "unauthorized_client") => {
            "the application is not known in this tenant or not allowed to use this grant"
        }
        (RetryRules::Entra, _, "invalid_grant") => {
            "the assertion or grant was rejected: check the federated credential (issuer, \
             subject, audience) or the assertion's validity period"
        }
        (RetryRules::Entra, _, "invalid_scope" | "invalid_resource") => {
            "the scope is not valid: it must be a single resource ending in /.default, e.g. \
             https://redis.azure.com/.default"
        }
        (_, 400, _) => "bad request: check the configuration (identity selector, resource)",
        (_, 401 | 403, _) => "not authorized: check the identity and its permissions",
        _ => "unexpected status",
    }
}

/// `base` with `pairs` appended as a form-encoded query, keeping any query `base` already has
pub(crate) fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, value);
    }
    let query = query.finish();
    let separator = match base.rfind('?') {
        None => "?",
        Some(i) if i + 1 == base.len() || base.ends_with('&') => "",
        Some(_) => "&",
    };
    format!("{base}{separator}{query}")
}

/// A form-encoded body from `pairs`
pub(crate) fn form_body(pairs: &[(&str, &str)]) -> Vec<u8> {
    // Sized for the worst case (every byte percent-encoded), so the buffer never grows: a
    // growing buffer would leave partial copies of the secret or assertion in freed memory.
    let capacity = pairs
        .iter()
        .map(|(name, value)| 3 * (name.len() + value.len()) + 2)
        .sum();
    let mut form = form_urlencoded::Serializer::new(String::with_capacity(capacity));
    for (name, value) in pairs {
        form.append_pair(name, value);
    }
    form.finish().into_bytes()
}

/// A header for a request; `sensitive` ones are hidden by `http`'s own `Debug`
pub(crate) struct Header<'a> {
    pub(crate) name: &'static str,
    pub(crate) value: &'a str,
    pub(crate) sensitive: bool,
}

impl<'a> Header<'a> {
    pub(crate) fn plain(name: &'static str, value: &'a str) -> Self {
        Self {
            name,
            value,
            sensitive: false,
        }
    }

    pub(crate) fn secret(name: &'static str, value: &'a str) -> Self {
        Self {
            name,
            value,
            sensitive: true,
        }
    }
}

/// Builds a request; the only failures are an invalid URL or a header value with control bytes
pub(crate) fn request(
    method: http::Method,
    url: &str,
    headers: &[Header<'_>],
    body: Vec<u8>,
    field: &'static str,
) -> Result<crate::identity::IdentityRequest, crate::error::ConfigError> {
    let uri: http::Uri = url.parse().map_err(|_| {
        crate::error::ConfigError::new(field, format!("`{}` is not a valid URL", clip(url)))
    })?;
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    for header in headers {
        let mut value = http::HeaderValue::from_str(header.value).map_err(|_| {
            crate::error::ConfigError::new(
                field,
                format!(
                    "the value for header {} contains characters not allowed in HTTP headers                      (newline or control character)",
                    header.name
                ),
            )
        })?;
        value.set_sensitive(header.sensitive);
        request
            .headers_mut()
            .insert(http::HeaderName::from_static(header.name), value);
    }
    Ok(crate::identity::IdentityRequest::new(request))
}

/// Checks an identity endpoint taken from the environment: an absolute http(s) URL
/// (`https` only when `require_https`)
pub(crate) fn endpoint_url(
    field: &'static str,
    text: &str,
    require_https: bool,
) -> Result<String, crate::error::ConfigError> {
    let text = text.trim();
    let ok = match text.parse::<http::Uri>() {
        Ok(uri) => match uri.scheme_str() {
            Some("https") => uri.host().is_some(),
            Some("http") => !require_https && uri.host().is_some(),
            _ => false,
        },
        Err(_) => false,
    };
    if ok {
        Ok(text.to_owned())
    } else {
        let wanted = if require_https {
            "an https URL"
        } else {
            "an http(s) URL"
        };
        Err(crate::error::ConfigError::new(
            field,
            format!("`{}` is not {wanted}", clip(text)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_token_answer_is_wiped_down_to_every_nested_string() {
        let mut map = match serde_json::json!({
            "access_token": "eyJ.secret.token",
            "nested": {"refresh": ["inner-secret", 1]},
            "expires_in": 3600
        }) {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        wipe_strings(&mut map);
        let text = Value::Object(map).to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("3600"), "{text}");
    }
    use serde_json::json;

    #[test]
    fn numbers_and_numeric_strings_both_parse() {
        assert_eq!(int_or_string(&json!(3599)), Some(3599));
        assert_eq!(int_or_string(&json!("3599")), Some(3599));
        assert_eq!(int_or_string(&json!(" -5 ")), Some(-5));
        assert_eq!(int_or_string(&json!(3599.0)), Some(3599));
        assert_eq!(int_or_string(&json!(1e300)), Some(i64::MAX));
        assert_eq!(int_or_string(&json!("soon")), None);
        assert_eq!(int_or_string(&json!(null)), None);
        assert_eq!(int_or_string(&json!(["1"])), None);
    }

    #[test]
    fn legacy_date_formats_parse_to_unix_seconds() {
        // 2019-06-20T02:57:58Z
        assert_eq!(
            expires_on(&json!("06/20/2019 02:57:58 +00:00")),
            Some(1_560_999_478)
        );
        // 2020-01-16T05:24:12Z
        assert_eq!(
            expires_on(&json!("1/16/2020 5:24:12 AM +00:00")),
            Some(1_579_152_252)
        );
        assert_eq!(
            expires_on(&json!("1/16/2020 5:24:12 PM +00:00")),
            Some(1_579_152_252 + 12 * 3600)
        );
        assert_eq!(
            expires_on(&json!("2006-01-02 15:04:05")),
            Some(1_136_214_245)
        );
        assert_eq!(
            expires_on(&json!("01/02/2006 15:04:05")),
            Some(1_136_214_245)
        );
        assert_eq!(
            expires_on(&json!("2006-01-02T15:04:05Z")),
            Some(1_136_214_245)
        );
        assert_eq!(
            expires_on(&json!("2006-01-02T17:04:05+02:00")),
            Some(1_136_214_245)
        );
        assert_eq!(expires_on(&json!("1136214245")), Some(1_136_214_245));
        assert_eq!(expires_on(&json!(1_136_214_245)), Some(1_136_214_245));
        assert_eq!(expires_on(&json!("13/45/2019 99:00:00 +00:00")), None);
        assert_eq!(expires_on(&json!("")), None);
    }

    #[test]
    fn cli_local_time_uses_the_given_offset() {
        let offset = UtcOffset::from_hms(2, 0, 0).unwrap_or(UtcOffset::UTC);
        assert_eq!(
            parse_local_date("2006-01-02 17:04:05.123456", offset),
            Some(1_136_214_245)
        );
        assert_eq!(
            parse_local_date("2006-01-02 15:04:05", UtcOffset::UTC),
            Some(1_136_214_245)
        );
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_http_dates() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after", http::HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            "retry-after",
            http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            retry_after(&headers),
            None,
            "a date needs the response Date"
        );
        headers.insert(
            "date",
            http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:07 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(30)));
        headers.insert(
            "x-ms-retry-after-ms",
            http::HeaderValue::from_static("1500"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn token_answers_carry_the_server_date_when_it_is_valid() {
        let body = br#"{"access_token":"eyJ.a.b","expires_in":"3599"}"#.to_vec();
        let mut response = http::Response::new(body);
        assert_eq!(token_response(&response, "test").unwrap().server_date, None);
        response.headers_mut().insert(
            "date",
            http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            token_response(&response, "test").unwrap().server_date,
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        response
            .headers_mut()
            .insert("date", http::HeaderValue::from_static("yesterday"));
        let token = token_response(&response, "test").unwrap();
        assert_eq!(token.server_date, None, "a bad Date is ignored");
        assert_eq!(token.expires_in, Some(3599));
    }

    #[test]
    fn every_error_body_shape_is_read() {
        let entra = error_body(
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: bad","error_codes":[7000215],"trace_id":"t","correlation_id":"c"}"#,
        );
        assert_eq!(
            entra,
            Some(
                EntraErrorBody::new("invalid_client")
                    .with_description("AADSTS7000215: bad")
                    .with_codes(vec![7_000_215])
                    .with_trace_id("t")
                    .with_correlation_id("c")
            )
        );
        let nested = error_body(
            br#"{"error":{"correlationId":"c","code":"SecretHeaderNotFound","message":"Secret is not found"}}"#,
        );
        assert_eq!(
            nested,
            Some(
                EntraErrorBody::new("SecretHeaderNotFound")
                    .with_description("Secret is not found")
                    .with_correlation_id("c")
            )
        );
        let app_service =
            error_body(br#"{"statusCode":400,"message":"Unable to load the proper Managed Identity.","correlationId":"c"}"#);
        assert_eq!(
            app_service.and_then(|b| b.error_description),
            Some("Unable to load the proper Managed Identity.".to_owned())
        );
        assert_eq!(error_body(b"<html>"), None);
        assert_eq!(error_body(b"{}"), None);
    }
}
