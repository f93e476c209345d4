//! Plain HTTP routes beside gRPC on the one listener (e.g. the file service's download links).
//!
//! tonic-web answers every HTTP/1.1 request that is not grpc-web with `400 Bad Request`, which is
//! right for the gRPC paths but would refuse a browser's plain `GET`. So the server puts
//! [`PlainHttpLayer`] where the grpc-web layer was: a request whose path lies under a declared
//! plain prefix goes straight to the routes (still through metrics and token checks), every
//! other request through grpc-web translation exactly as before.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::Layer;

/// Plain HTTP routes a service serves on the gRPC listener, all under one path prefix.
#[derive(Debug)]
pub struct HttpRoutes {
    /// The prefix every route starts with, with leading and trailing `/` (e.g. `/files/v1/`).
    /// Requests under it skip grpc-web translation; it must not start like a gRPC path
    /// (`/package.Service/`).
    pub prefix: &'static str,
    /// The routes. They must stay under `prefix`, and set neither a fallback (it would clash
    /// with the gRPC router's) nor a catch-all for the whole prefix (the server adds one).
    pub router: axum::Router,
}

impl HttpRoutes {
    /// Routes under `prefix`.
    pub fn new(prefix: &'static str, router: axum::Router) -> Self {
        Self { prefix, router }
    }

    /// The routes, with `404 Not Found` for every other path under the prefix (the gRPC
    /// router's fallback would answer them in gRPC).
    pub(crate) fn into_router(self) -> axum::Router {
        let not_found = || async { (http::StatusCode::NOT_FOUND, "not found\n") };
        self.router
            .route(self.prefix, axum::routing::any(not_found))
            .route(&format!("{}{{*rest}}", self.prefix), axum::routing::any(not_found))
    }
}

/// Sends requests under the plain prefixes around grpc-web (see the module documentation).
#[derive(Clone, Debug, Default)]
pub(crate) struct PlainHttpLayer {
    prefixes: Arc<[&'static str]>,
}

impl PlainHttpLayer {
    /// Plain HTTP under `prefixes`, grpc-web everywhere else.
    pub(crate) fn new(prefixes: Vec<&'static str>) -> Self {
        Self { prefixes: prefixes.into() }
    }
}

impl<S: Clone> Layer<S> for PlainHttpLayer {
    type Service = PlainHttp<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PlainHttp { grpc_web: GrpcWebLayer::new().layer(inner.clone()), plain: inner, prefixes: self.prefixes.clone() }
    }
}

/// The service made by [`PlainHttpLayer`].
#[derive(Clone, Debug)]
pub(crate) struct PlainHttp<S> {
    grpc_web: GrpcWebService<S>,
    plain: S,
    prefixes: Arc<[&'static str]>,
}

impl<S> PlainHttp<S> {
    fn is_plain(&self, path: &str) -> bool {
        self.prefixes.iter().any(|prefix| path.starts_with(prefix))
    }
}

impl<S> tower::Service<Request<Body>> for PlainHttp<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Either may take the call, so both must be ready.
        match tower::Service::<Request<Body>>::poll_ready(&mut self.grpc_web, cx) {
            Poll::Ready(Ok(())) => self.plain.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if self.is_plain(request.uri().path()) {
            Box::pin(self.plain.call(request))
        } else {
            Box::pin(self.grpc_web.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use http::{Method, StatusCode, Version};
    use tower::ServiceExt as _;

    /// Routes with one plain route and the tonic fallback, behind the layer.
    fn service() -> PlainHttp<tonic::service::Routes> {
        let plain = axum::Router::new().route("/plain/v1/hello", get(|| async { "hello" }));
        let plain = HttpRoutes::new("/plain/v1/", plain).into_router();
        let routes = tonic::service::Routes::default().into_axum_router().merge(plain);
        PlainHttpLayer::new(vec!["/plain/v1/"]).layer(tonic::service::Routes::from(routes))
    }

    fn request(method: Method, path: &str, version: Version, content_type: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path).version(version);
        if let Some(content_type) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        builder.body(Body::empty()).unwrap()
    }

    async fn answer(request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = service().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), usize::MAX).await.unwrap();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn plain_http1_requests_reach_their_routes() {
        for version in [Version::HTTP_11, Version::HTTP_10, Version::HTTP_2] {
            let (status, body) = answer(request(Method::GET, "/plain/v1/hello", version, None)).await;
            assert_eq!((status, body.as_slice()), (StatusCode::OK, b"hello".as_slice()), "{version:?}");
        }
        let (status, body) = answer(request(Method::HEAD, "/plain/v1/hello", Version::HTTP_11, None)).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 0));
        // Other paths under the prefix are plain 404s, not gRPC answers.
        for path in ["/plain/v1/", "/plain/v1/other", "/plain/v1/hello/more"] {
            let (status, body) = answer(request(Method::GET, path, Version::HTTP_11, None)).await;
            assert_eq!((status, body.as_slice()), (StatusCode::NOT_FOUND, b"not found\n".as_slice()), "{path}");
        }
    }

    #[tokio::test]
    async fn other_requests_are_translated_as_before() {
        // grpc-web still refuses a plain HTTP/1.1 request outside the prefixes...
        let (status, _) = answer(request(Method::GET, "/wp-login.php", Version::HTTP_11, None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // ...and a grpc-web request that is not a POST...
        let web = Some("application/grpc-web+proto");
        let (status, _) = answer(request(Method::GET, "/pkg.Service/Method", Version::HTTP_11, web)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        // ...and answers grpc-web calls in grpc-web (here: the fallback's UNIMPLEMENTED).
        let response = service().oneshot(request(Method::POST, "/pkg.Service/Method", Version::HTTP_11, web)).await;
        let response = response.unwrap();
        assert_eq!(response.headers().get(http::header::CONTENT_TYPE).unwrap(), "application/grpc-web+proto");
        assert_eq!(response.headers().get("grpc-status").unwrap(), "12");
    }
}
