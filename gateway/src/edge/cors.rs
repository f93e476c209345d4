//! CORS for browsers calling the API from another origin (the frontend's, a reseller's).
//!
//! Preflights are answered here; other responses get the allow and expose headers when their
//! origin is allowed. grpc-web clients need `grpc-status`, `grpc-message` and
//! `grpc-status-details-bin` exposed, or an error sent in the headers reads as "unknown".

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tonic::body::Body;

/// Request headers browsers may send.
const ALLOW_HEADERS: &str = "authorization, content-type, x-api-key, x-grpc-web, x-user-agent, grpc-timeout, \
     connect-protocol-version, connect-timeout-ms";
/// Response headers browsers may read.
const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, grpc-encoding, retry-after, \
     grpc-retry-pushback-ms";
/// How long a browser may cache a preflight, in seconds.
const MAX_AGE: &str = "600";

/// Which origins may call.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<HeaderValue>,
}

impl Cors {
    /// `origins` are exact origins (`https://app.example.com`), or `*` for any.
    pub fn new(origins: &[String]) -> Self {
        let any = origins.iter().any(|o| o == "*");
        let origins = origins
            .iter()
            .filter(|o| *o != "*")
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        Self { any, origins }
    }

    fn allowed<'a>(&self, origin: &'a HeaderValue) -> Option<&'a HeaderValue> {
        (self.any || self.origins.iter().any(|o| o == origin)).then_some(origin)
    }

    /// The answer to a preflight, or `None` when `request` is none.
    pub fn preflight<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        let headers = request.headers();
        if request.method() != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let mut response = Response::new(Body::empty());
        match self.allowed(origin) {
            Some(origin) => {
                *response.status_mut() = StatusCode::NO_CONTENT;
                let out = response.headers_mut();
                out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, GET, OPTIONS"));
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
                out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
                out.insert(header::VARY, HeaderValue::from_static("origin"));
            }
            None => *response.status_mut() = StatusCode::FORBIDDEN,
        }
        Some(response)
    }

    /// Adds the CORS headers for a request from `origin` to `response`.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        let Some(origin) = origin.and_then(|o| self.allowed(o)) else { return };
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
        response.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight(origin: &str) -> Request<()> {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/flatrender.identity.v1.AuthService/Login")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(())
            .unwrap()
    }

    #[test]
    fn preflights_of_allowed_origins_pass() {
        let cors = Cors::new(&["https://app.example.com/".into()]);
        let ok = cors.preflight(&preflight("https://app.example.com")).unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert!(ok.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("x-grpc-web"));
        assert_eq!(cors.preflight(&preflight("https://evil.example")).unwrap().status(), StatusCode::FORBIDDEN);
        let post = Request::builder().method(Method::POST).uri("/x").body(()).unwrap();
        assert!(cors.preflight(&post).is_none());
        assert_eq!(
            Cors::new(&["*".into()]).preflight(&preflight("http://127.0.0.1:9")).unwrap().status(),
            StatusCode::NO_CONTENT
        );
    }

    #[test]
    fn responses_expose_the_grpc_status_only_to_allowed_origins() {
        let cors = Cors::new(&["https://app.example.com".into()]);
        let mut headers = HeaderMap::new();
        cors.decorate(Some(&HeaderValue::from_static("https://app.example.com")), &mut headers);
        assert!(headers[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap().contains("grpc-status"));
        let mut other = HeaderMap::new();
        cors.decorate(Some(&HeaderValue::from_static("https://evil.example")), &mut other);
        cors.decorate(None, &mut other);
        assert!(other.is_empty());
    }
}
