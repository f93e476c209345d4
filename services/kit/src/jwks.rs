//! Following the identity service's published keys from another process.
//!
//! A process without identity (a gateway or a service in its own Deployment) fetches the JWKS
//! with `AuthService.GetJwks` at start and again after each cache period, and publishes it to
//! its verifier, so tokens of a newly rotated key verify and those of a revoked key stop.

use std::time::Duration;

use flatrender_proto::flatrender::identity::v1 as pb;
use jsonwebtoken::jwk::JwkSet;
use tonic::transport::Channel;

use crate::auth::TokenVerifier;
use crate::shutdown::ShutdownSignal;

/// The shortest and longest wait between fetches.
const MIN_PERIOD: Duration = Duration::from_secs(5);
const MAX_PERIOD: Duration = Duration::from_secs(300);
/// The wait after a failed fetch.
const RETRY: Duration = Duration::from_secs(5);

/// Keeps `verifier`'s published keys equal to identity's until `signal`.
pub async fn follow(verifier: TokenVerifier, identity: Channel, signal: ShutdownSignal) {
    let mut client = pb::auth_service_client::AuthServiceClient::new(identity);
    let stop = signal.wait();
    tokio::pin!(stop);
    loop {
        let wait = match fetch(&mut client).await {
            Ok((jwks, max_age)) => match verifier.publish(&jwks) {
                Ok(keys) => {
                    tracing::debug!(keys, "followed the identity service's keys");
                    max_age.clamp(MIN_PERIOD, MAX_PERIOD)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the identity service published unusable keys");
                    RETRY
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the identity service's keys; retrying");
                RETRY
            }
        };
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn fetch(client: &mut pb::auth_service_client::AuthServiceClient<Channel>) -> Result<(JwkSet, Duration), String> {
    let response = client.get_jwks(pb::GetJwksRequest {}).await.map_err(|s| s.message().to_owned())?.into_inner();
    let keys: Vec<serde_json::Value> = response
        .keys
        .iter()
        .map(
            |k| serde_json::json!({ "kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.r#use }),
        )
        .collect();
    let jwks = serde_json::from_value(serde_json::json!({ "keys": keys })).map_err(|e| e.to_string())?;
    Ok((jwks, Duration::from_secs(u64::from(response.cache_max_age_seconds))))
}
