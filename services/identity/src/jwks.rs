//! `/.well-known/jwks.json`: the public keys as a plain JSON document, for verifiers that are
//! not FlatRender services (a reseller's backend, an API gateway in front of ours).

use axum::extract::State;
use axum::response::IntoResponse;
use flatrender_kit::server::HttpRoutes;
use http::header;

use crate::keys;
use crate::service::Identity;

/// The route, served on the gRPC listener.
pub fn routes(identity: Identity) -> HttpRoutes {
    let router = axum::Router::new().route("/.well-known/jwks.json", axum::routing::get(jwks)).with_state(identity);
    HttpRoutes::new("/.well-known/", router)
}

async fn jwks(State(identity): State<Identity>) -> axum::response::Response {
    let document = identity.ring.published().await.and_then(|published| keys::jwks(&published));
    match document.map(|set| serde_json::to_vec(&set)) {
        Ok(Ok(body)) => {
            let max_age = format!("public, max-age={}", identity.settings.keys.jwks_max_age.as_secs());
            ([(header::CONTENT_TYPE, "application/jwk-set+json".to_owned()), (header::CACHE_CONTROL, max_age)], body)
                .into_response()
        }
        Ok(Err(e)) => unavailable(&e),
        Err(e) => unavailable(&e),
    }
}

fn unavailable(err: &dyn std::error::Error) -> axum::response::Response {
    tracing::warn!(error = %err, "cannot serve the JWKS");
    (http::StatusCode::SERVICE_UNAVAILABLE, "the keys cannot be read right now; retry shortly\n").into_response()
}
