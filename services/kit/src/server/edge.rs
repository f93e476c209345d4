//! A hook in front of every call, for the gateway's edge work (CORS, API keys, rate limits,
//! request logs) without the kit knowing the gateway.
//!
//! The edge runs outermost, before grpc-web translation, on every listener of the process. It
//! receives each request with the rest of the stack as `next` and either answers itself (a
//! CORS preflight, a refusal) or calls `next`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tower::util::BoxCloneService;

/// The rest of the stack, as the edge calls it.
pub type Next = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// The answer an edge gives.
pub type EdgeFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Work done in front of every call.
pub trait Edge: Send + Sync + std::fmt::Debug + 'static {
    /// Handles `request`, calling `next` to let it through.
    fn handle(&self, request: Request<Body>, next: Next) -> EdgeFuture;
}

/// Puts an optional [`Edge`] in front of a service.
#[derive(Clone, Default)]
pub(crate) struct EdgeLayer {
    edge: Option<Arc<dyn Edge>>,
}

impl EdgeLayer {
    pub(crate) fn new(edge: Option<Arc<dyn Edge>>) -> Self {
        Self { edge }
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService { inner, edge: self.edge.clone() }
    }
}

/// The service made by [`EdgeLayer`].
#[derive(Clone)]
pub(crate) struct EdgeService<S> {
    inner: S,
    edge: Option<Arc<dyn Edge>>,
}

impl<S> tower::Service<Request<Body>> for EdgeService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match &self.edge {
            None => Box::pin(self.inner.call(request)),
            Some(edge) => {
                // The ready clone goes to the edge; this one waits for the next poll_ready.
                let ready = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, ready);
                let answer = edge.handle(request, BoxCloneService::new(ready));
                Box::pin(async move { Ok(answer.await) })
            }
        }
    }
}
