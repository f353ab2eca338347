//! An arbitrary HTTP response: any status, any headers, any body

use arbitrary::Arbitrary;

#[derive(Arbitrary, Debug)]
pub struct RawResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl RawResponse {
    /// The response, skipping header names or values `http` cannot hold
    pub fn to_http(&self) -> http::Response<Vec<u8>> {
        let mut response = http::Response::new(self.body.clone());
        if let Ok(status) = http::StatusCode::from_u16(self.status) {
            *response.status_mut() = status;
        }
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}
