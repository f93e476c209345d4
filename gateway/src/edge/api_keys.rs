//! `x-api-key`: a tenant API key, exchanged at identity for a short-lived scoped token.
//!
//! Exchanges are cached by the key's SHA-256 (never the key) for at most ten seconds, so a
//! revoked key stops working within that time and a busy key costs one exchange per period.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flatrender_kit::auth::{AccessClaims, ServiceName, TokenSigner};
use flatrender_proto::flatrender::identity::v1 as identity_pb;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// How long an exchange is reused.
const CACHE_FOR: Duration = Duration::from_secs(10);
/// Keys cached at most; past it the cache is emptied (a burst of distinct keys is rare).
const CACHE_CAPACITY: usize = 100_000;

/// What identity answers for a valid key.
#[derive(Clone, Debug)]
pub struct ExchangedKey {
    /// The token to call the services with.
    pub access_token: String,
    /// How long that token stays valid from now.
    pub valid_for: Duration,
    /// The key.
    pub key_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its own per-minute limit, if it has one.
    pub rate_limit_per_minute: Option<u32>,
}

/// The future of one exchange.
pub type ExchangeFuture = Pin<Box<dyn Future<Output = Result<ExchangedKey, tonic::Status>> + Send>>;

/// Exchanges a presented key (and the client's address) at identity.
pub type Exchange = Arc<dyn Fn(String, Option<IpAddr>) -> ExchangeFuture + Send + Sync>;

/// Exchanges by the presented key's SHA-256, each with the instant it stops being reused.
type Cache = HashMap<[u8; 32], (Instant, ExchangedKey)>;

/// The exchange with its cache.
#[derive(Clone)]
pub struct ApiKeys {
    exchange: Exchange,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// Keys checked by `exchange`.
    pub fn new(exchange: Exchange) -> Self {
        Self { exchange, cache: Arc::default() }
    }

    /// The token for `presented`, from the cache or a fresh exchange.
    pub async fn token_for(&self, presented: &str, client: Option<IpAddr>) -> Result<ExchangedKey, tonic::Status> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let now = Instant::now();
        if let Some((until, key)) = self.lock().get(&digest)
            && *until > now
        {
            return Ok(key.clone());
        }
        let key = (self.exchange)(presented.to_owned(), client).await?;
        // Reused for the shorter of the cache period and the token's life less a margin.
        let until = now + CACHE_FOR.min(key.valid_for.saturating_sub(Duration::from_secs(30)));
        let mut cache = self.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(digest, (until, key.clone()));
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long one exchange at a remote identity may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the gateway's credential for one exchange lives.
const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(60);

/// Where the identity service of another process is, and how the gateway proves who it is there.
#[derive(Clone)]
pub struct RemoteIdentity {
    /// A channel to identity (lazy: identity may start after the gateway).
    pub channel: tonic::transport::Channel,
    /// Signs the gateway's service credential; identity must trust its public key.
    pub signer: TokenSigner,
    /// `iss` and `aud` of the credential (identity's own).
    pub issuer: String,
    pub audience: String,
}

impl RemoteIdentity {
    /// `message` as a call to identity: the gateway's credential, a deadline, and the client's
    /// address as `x-forwarded-for` when there is one.
    pub fn request<T>(&self, message: T, client: Option<IpAddr>) -> Result<tonic::Request<T>, tonic::Status> {
        let claims = AccessClaims::service(ServiceName::Gateway, &self.issuer, &self.audience, CREDENTIAL_LIFETIME);
        let token = self
            .signer
            .sign(&claims)
            .map_err(|e| tonic::Status::internal(format!("the gateway cannot sign its credential: {e}")))?;
        let header = |value: String| {
            value.parse().map_err(|_| tonic::Status::internal("a header the gateway made is not ASCII"))
        };
        let mut request = tonic::Request::new(message);
        request.set_timeout(REMOTE_TIMEOUT);
        request.metadata_mut().insert("authorization", header(format!("Bearer {token}"))?);
        if let Some(ip) = client {
            request.metadata_mut().insert("x-forwarded-for", header(ip.to_string())?);
        }
        Ok(request)
    }
}

/// Exchanges at an identity service in another process: `AuthenticateApiKey` over gRPC with a
/// gateway service credential (good for little else), the client's address passed on for
/// identity's records.
pub fn remote(identity: RemoteIdentity) -> Exchange {
    Arc::new(move |presented: String, client: Option<IpAddr>| {
        let identity = identity.clone();
        Box::pin(async move {
            let request = identity.request(identity_pb::AuthenticateApiKeyRequest { secret: presented }, client)?;
            let mut api = identity_pb::api_key_service_client::ApiKeyServiceClient::new(identity.channel);
            let call = api.authenticate_api_key(request);
            // Also bounds connecting, which the call's own deadline does not.
            let answer = match tokio::time::timeout(REMOTE_TIMEOUT, call).await {
                Ok(Ok(answer)) => answer.into_inner(),
                // The key is not valid: the client's to hear.
                Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => return Err(status),
                // Anything else is the gateway's or identity's trouble, not the key's.
                Ok(Err(status)) => {
                    tracing::error!(code = ?status.code(), message = status.message(), "identity refused the API key exchange");
                    return Err(tonic::Status::unavailable("API keys cannot be checked right now; retry shortly"));
                }
                Err(_) => {
                    tracing::warn!("identity did not answer an API key exchange in time");
                    return Err(tonic::Status::unavailable("API keys cannot be checked right now; retry shortly"));
                }
            };
            let malformed = || tonic::Status::internal("identity answered a malformed API key exchange");
            let key = answer.api_key.ok_or_else(malformed)?;
            let expires = answer.access_token_expires_at.ok_or_else(malformed)?;
            let expires = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(expires.seconds).unwrap_or(0));
            Ok(ExchangedKey {
                access_token: answer.access_token,
                valid_for: expires.duration_since(std::time::SystemTime::now()).unwrap_or_default(),
                key_id: key.id.parse().map_err(|_| malformed())?,
                tenant_id: key.tenant_id.parse().map_err(|_| malformed())?,
                rate_limit_per_minute: key.rate_limit_per_minute,
            })
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn exchanges_are_cached_and_failures_are_not() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let keys = ApiKeys::new(Arc::new(move |presented: String, _| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if presented == "good" {
                    Ok(ExchangedKey {
                        access_token: "t".into(),
                        valid_for: Duration::from_secs(300),
                        key_id: Uuid::nil(),
                        tenant_id: Uuid::nil(),
                        rate_limit_per_minute: None,
                    })
                } else {
                    Err(tonic::Status::unauthenticated("the API key is not valid"))
                }
            })
        }));
        for _ in 0..3 {
            assert_eq!(keys.token_for("good", None).await.unwrap().access_token, "t");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for _ in 0..2 {
            assert!(keys.token_for("bad", None).await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
