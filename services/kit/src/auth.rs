//! Access tokens: verification, the typed caller, and development keys.
//!
//! Access tokens are Ed25519-signed JWTs (RFC 9068 profile, `typ: at+jwt`) issued by the
//! identity service. Every service verifies them itself against a JWKS — defence in depth
//! behind the gateway. The [`AuthLayer`] verifies a bearer token once per call and leaves a
//! [`Caller`] (or the reason for rejection) in the request extensions; methods that need a
//! caller use [`caller`], so public methods keep working for clients holding a stale token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

use crate::{Error, Result};

/// The `typ` header of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// What a caller may do, in increasing power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A customer of a tenant.
    User,
    /// Administers one tenant.
    TenantAdmin,
    /// Operates the whole platform.
    PlatformAdmin,
}

/// A FlatRender service, as named in a service credential's `svc` claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceName {
    /// identity.
    Identity,
    /// content.
    Content,
    /// studio.
    Studio,
    /// render (and the node agents it speaks for).
    Render,
    /// file.
    File,
    /// notification.
    Notification,
    /// The gateway in its own process: its credential only exchanges API keys and records API
    /// requests at identity ([`GATEWAY_METHODS`]); every other call with it is PERMISSION_DENIED.
    Gateway,
}

/// What a gateway credential may call.
pub const GATEWAY_METHODS: &[&str] = &[
    "/flatrender.identity.v1.ApiKeyService/AuthenticateApiKey",
    "/flatrender.identity.v1.UsageService/RecordApiRequests",
];

impl ServiceName {
    /// The lower-case name used in tokens and database columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Content => "content",
            Self::Studio => "studio",
            Self::Render => "render",
            Self::File => "file",
            Self::Notification => "notification",
            Self::Gateway => "gateway",
        }
    }

    /// The service of a lower-case name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Identity, Self::Content, Self::Studio, Self::Render, Self::File, Self::Notification, Self::Gateway]
            .into_iter()
            .find(|service| service.as_str() == name)
    }
}

/// The claims of a FlatRender access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id (UUID).
    pub sub: Uuid,
    /// The user's tenant (UUID).
    pub tid: Uuid,
    /// The user's role.
    pub role: Role,
    /// The session (refresh-token family) the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// Set only in a service credential: the calling service. Such a token names no tenant
    /// (`tid` is the nil UUID, each request names the tenant it acts for) and has role `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svc: Option<ServiceName>,
    /// Set only in a tenant API key's token: the key's id (also its `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub akid: Option<Uuid>,
    /// With `akid`: the key's scopes, space-separated (`render:write files:read`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Unique token id.
    pub jti: Uuid,
}

impl AccessClaims {
    /// A service credential of `service`, valid for `lifetime` from now (with 5 s of slack for
    /// clocks behind ours).
    pub fn service(service: ServiceName, issuer: &str, audience: &str, lifetime: std::time::Duration) -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self {
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            sub: Uuid::nil(),
            tid: Uuid::nil(),
            role: Role::User,
            sid: None,
            svc: Some(service),
            akid: None,
            scp: None,
            exp: now + lifetime.as_secs(),
            nbf: now.saturating_sub(5),
            iat: now,
            jti: Uuid::new_v4(),
        }
    }
}

/// The verified caller of a gRPC method: put in the request extensions by [`AuthLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant every query of this call is scoped to.
    pub tenant_id: Uuid,
    /// The user.
    pub user_id: Uuid,
    /// The user's role.
    pub role: Role,
    /// The session, when the token names one.
    pub session_id: Option<Uuid>,
    /// The calling service, for a service credential; `tenant_id` and `user_id` are then nil.
    pub service: Option<ServiceName>,
    /// The tenant API key, for a call made with one (`user_id` is then the key's id).
    pub api_key_id: Option<Uuid>,
    /// The API key's scopes; empty for users and services, whose role decides instead.
    pub scopes: Vec<String>,
}

impl Caller {
    /// Fails with `PERMISSION_DENIED` unless the caller is a user with at least `role`. Service
    /// credentials never pass: a method open to services admits them explicitly.
    pub fn require(&self, role: Role) -> Result<(), Status> {
        if self.service.is_some() {
            Err(Status::permission_denied("this call is not open to service credentials"))
        } else if self.role >= role {
            Ok(())
        } else {
            Err(Status::permission_denied(format!("this call needs the {role:?} role")))
        }
    }
}

/// Why a presented token was refused; kept in the extensions so [`caller`] can say why.
#[derive(Clone, Debug)]
pub struct Rejection(pub String);

/// A valid API key token used for a method outside the key's scopes.
#[derive(Clone, Debug)]
pub struct OutOfScope {
    /// Why the key may not call the method.
    pub reason: String,
    /// The key's caller, for logs and limits (never for access).
    pub caller: Caller,
}

/// The verified caller of `request`, or `UNAUTHENTICATED` (`PERMISSION_DENIED` for an API key
/// outside its scopes).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    if let Some(caller) = request.extensions().get::<Caller>() {
        return Ok(caller);
    }
    if let Some(OutOfScope { reason, .. }) = request.extensions().get::<OutOfScope>() {
        return Err(Status::permission_denied(reason.clone()));
    }
    match request.extensions().get::<Rejection>() {
        Some(Rejection(reason)) => Err(Status::unauthenticated(reason.clone())),
        None => Err(Status::unauthenticated("this call needs a bearer access token")),
    }
}

/// Verifies access tokens against Ed25519 public keys: fixed ones (a JWKS file, e.g. the key
/// services sign their own credentials with) and the ones the identity service publishes, which
/// it replaces as it rotates keys ([`TokenVerifier::publish`]). Clones share the key set.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<RwLock<KeySet>>,
    validation: Arc<Validation>,
    /// Tokens verified recently: a client sends the same token on every call for its whole
    /// life, and the Ed25519 check is most of a call's cost. Emptied whenever the keys change,
    /// so a revoked key's tokens are checked (and refused) again at once.
    recent: Arc<std::sync::Mutex<HashMap<String, (Caller, u64)>>>,
}

/// Tokens remembered at most; past it the memory starts afresh.
const RECENT_CAPACITY: usize = 16_384;

#[derive(Default)]
struct KeySet {
    // Shared so a verification clones a pointer, not the key, out of the lock.
    fixed: HashMap<String, Arc<DecodingKey>>,
    published: HashMap<String, Arc<DecodingKey>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.debug_struct("TokenVerifier")
            .field("fixed", &keys.fixed.keys().collect::<Vec<_>>())
            .field("published", &keys.published.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The Ed25519 keys of `jwks` by kid (other key types are ignored).
fn ed25519_keys(jwks: &JwkSet) -> Result<HashMap<String, Arc<DecodingKey>>> {
    let mut keys = HashMap::new();
    for jwk in &jwks.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) = &jwk.algorithm {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| Error::Keys(format!("JWK {kid}: {e}")))?;
            keys.insert(kid, Arc::new(key));
        }
    }
    Ok(keys)
}

impl TokenVerifier {
    /// A verifier for the Ed25519 keys of `jwks`, which must hold at least one.
    pub fn new(jwks: &JwkSet, issuer: &str, audience: &str) -> Result<Self> {
        let keys = ed25519_keys(jwks)?;
        if keys.is_empty() {
            return Err(Error::Keys("the JWKS holds no Ed25519 key with a kid".into()));
        }
        let verifier = Self::without_keys(issuer, audience);
        verifier.write_keys().fixed = keys;
        Ok(verifier)
    }

    /// A verifier that accepts nothing until keys are published to it.
    pub fn without_keys(issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Self {
            keys: Arc::new(RwLock::new(KeySet::default())),
            validation: Arc::new(validation),
            recent: Arc::default(),
        }
    }

    /// Replaces the published keys with those of `jwks` (the identity service's current set):
    /// a key left out, revoked or expired, stops verifying at once. Returns how many it holds.
    pub fn publish(&self, jwks: &JwkSet) -> Result<usize> {
        let keys = ed25519_keys(jwks)?;
        let count = keys.len();
        self.write_keys().published = keys;
        self.forget_recent();
        Ok(count)
    }

    fn forget_recent(&self) {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// Stops trusting the published key `kid` at once (a revocation), before the next publish.
    pub fn forget(&self, kid: &str) {
        self.write_keys().published.remove(kid);
        self.forget_recent();
    }

    fn write_keys(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        // The set is replaced whole, so a panic elsewhere cannot leave it half-written.
        self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads a JWKS document from `path`.
    pub fn from_file(path: &Path, issuer: &str, audience: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Keys(format!("cannot read JWKS {}: {e}", path.display())))?;
        let jwks: JwkSet = serde_json::from_str(&text)
            .map_err(|e| Error::Keys(format!("JWKS {} is not valid JSON Web Key Set: {e}", path.display())))?;
        Self::new(&jwks, issuer, audience)
    }

    /// Verifies `token` and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((caller, exp)) = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(token)
            && now <= exp.saturating_add(LEEWAY_SECONDS)
        {
            return Ok(caller.clone());
        }
        let (caller, exp) = self.verify_signed(token)?;
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= RECENT_CAPACITY {
            recent.clear();
        }
        recent.insert(token.to_owned(), (caller.clone(), exp));
        Ok(caller)
    }

    /// The full check of a token: header, key, signature and claims; with its expiry.
    fn verify_signed(&self, token: &str) -> Result<(Caller, u64)> {
        let unauthenticated = |msg: &str| Error::Unauthenticated(msg.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed token"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(unauthenticated("token algorithm must be EdDSA"));
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(unauthenticated("not an access token"));
        }
        let kid = header.kid.ok_or_else(|| unauthenticated("token has no key id"))?;
        if kid.len() > 128 || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(unauthenticated("token key id is malformed"));
        }
        let key = {
            let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.published.get(&kid).or_else(|| keys.fixed.get(&kid)).cloned()
        };
        let key = key.ok_or_else(|| unauthenticated("token signed by an unknown key"))?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Error::Unauthenticated(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not valid yet",
                    ErrorKind::InvalidAudience => "token is for another audience",
                    ErrorKind::InvalidIssuer => "token from an unknown issuer",
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    _ => "token is invalid",
                }
                .to_owned(),
            )
        })?;
        let claims = data.claims;
        // A service credential acts for whichever tenant a request names, so it must not also
        // carry a tenant or a role of its own that code could mistake for a user's.
        if claims.svc.is_some() && (!claims.tid.is_nil() || claims.role != Role::User) {
            return Err(unauthenticated("service credential carries a tenant or a role"));
        }
        // An API key acts for its tenant within its scopes, never as a person or a service.
        let scopes = match (claims.akid, &claims.scp) {
            (Some(key), Some(scp)) if key == claims.sub && claims.svc.is_none() && !claims.tid.is_nil() => {
                scp.split_whitespace().map(str::to_owned).collect()
            }
            (None, None) => Vec::new(),
            _ => return Err(unauthenticated("API key token is malformed")),
        };
        let caller = Caller {
            tenant_id: claims.tid,
            user_id: claims.sub,
            role: claims.role,
            session_id: claims.sid,
            service: claims.svc,
            api_key_id: claims.akid,
            scopes,
        };
        Ok((caller, claims.exp))
    }
}

/// Signs access tokens with an Ed25519 key: the identity service's job, also used for
/// development and tests.
#[derive(Clone)]
pub struct TokenSigner {
    kid: String,
    key: EncodingKey,
    public: [u8; 32],
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh random key.
    pub fn generate(kid: impl Into<String>) -> Result<Self> {
        Self::from_signing_key(kid.into(), &SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// A key from PKCS#8 PEM text.
    pub fn from_pem(kid: impl Into<String>, pem: &str) -> Result<Self> {
        let key =
            SigningKey::from_pkcs8_pem(pem).map_err(|e| Error::Keys(format!("invalid Ed25519 PKCS#8 key: {e}")))?;
        Self::from_signing_key(kid.into(), &key)
    }

    /// A key from its raw 32-byte Ed25519 seed, as the identity service stores it.
    pub fn from_seed(kid: impl Into<String>, seed: &[u8; 32]) -> Result<Self> {
        Self::from_signing_key(kid.into(), &SigningKey::from_bytes(seed))
    }

    fn from_signing_key(kid: String, key: &SigningKey) -> Result<Self> {
        let der = key.to_pkcs8_der().map_err(|e| Error::Keys(e.to_string()))?;
        Ok(Self { kid, key: EncodingKey::from_ed_der(der.as_bytes()), public: key.verifying_key().to_bytes() })
    }

    /// The key id written into every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWKS document.
    pub fn jwks(&self) -> Result<JwkSet> {
        let value = serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "use": "sig",
                "alg": "EdDSA",
                "kid": self.kid,
                "x": URL_SAFE_NO_PAD.encode(self.public),
            }]
        });
        serde_json::from_value(value).map_err(|e| Error::Keys(format!("cannot build the JWKS: {e}")))
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Signs `claims` as an access token.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String> {
        self.sign_typed(ACCESS_TOKEN_TYPE, claims)
    }

    /// Signs other claims under another `typ` (e.g. identity's MFA challenges), which no access
    /// token verifier accepts.
    pub fn sign_typed<C: Serialize>(&self, typ: &str, claims: &C) -> Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.into());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| Error::Keys(e.to_string()))
    }
}

/// Paths of the development key pair under the data directory.
#[derive(Clone, Debug)]
pub struct DevKeyFiles {
    /// The private key, PKCS#8 PEM, readable only by its owner.
    pub private_key: PathBuf,
    /// The public JWKS.
    pub jwks: PathBuf,
}

impl DevKeyFiles {
    /// The standard locations under `data_dir`.
    pub fn under(data_dir: &Path) -> Self {
        let dir = data_dir.join("keys");
        Self { private_key: dir.join("dev-signing-key.pem"), jwks: dir.join("jwks.json") }
    }

    /// Creates the key pair when missing; returns whether it was created.
    pub fn ensure(&self) -> Result<bool> {
        if self.private_key.exists() && self.jwks.exists() {
            return Ok(false);
        }
        let io = |e: std::io::Error| Error::Keys(format!("cannot write development keys: {e}"));
        if let Some(dir) = self.private_key.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let kid = format!("dev-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| Error::Keys(e.to_string()))?;
        let signer = TokenSigner::from_signing_key(kid.clone(), &key)?;
        write_private(&self.private_key, format!("# kid: {kid}\n{}", pem.as_str()).as_bytes()).map_err(io)?;
        let jwks = serde_json::to_vec_pretty(&signer.jwks()?).map_err(|e| Error::Keys(e.to_string()))?;
        std::fs::write(&self.jwks, jwks).map_err(io)?;
        Ok(true)
    }

    /// Loads the signer written by [`DevKeyFiles::ensure`].
    pub fn signer(&self) -> Result<TokenSigner> {
        let text = std::fs::read_to_string(&self.private_key)
            .map_err(|e| Error::Keys(format!("cannot read {}: {e}", self.private_key.display())))?;
        let kid = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# kid: "))
            .ok_or_else(|| Error::Keys(format!("{} lacks its `# kid:` line", self.private_key.display())))?
            .to_owned();
        let pem: String = text.lines().skip(1).collect::<Vec<_>>().join("\n");
        TokenSigner::from_pem(kid, &pem)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// Verifies the bearer token of every call and leaves a [`Caller`] or a [`Rejection`] in the
/// request extensions. Identity metadata a client sends is never trusted: only the token is.
/// A node credential ([`NODE_CREDENTIAL_PREFIX`]) is not parsed as a JWT; the call reaches the
/// service with its header untouched and no caller, and the render service verifies it.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    verifier: Option<TokenVerifier>,
}

impl AuthLayer {
    /// With `None`, every presented token is rejected (no keys configured).
    pub fn new(verifier: Option<TokenVerifier>) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, verifier: self.verifier.clone() }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    verifier: Option<TokenVerifier>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        identify(&mut request, self.verifier.as_ref());
        self.inner.call(request)
    }
}

/// Verifies the bearer token of `request`, once: leaves a [`Caller`], a [`Rejection`] or an
/// [`OutOfScope`] in its extensions, or nothing when it carries no `authorization`. A request
/// identified before (by the gateway's edge, which needs the caller for its limits) is left as
/// it is; extensions cannot come from a client, so this trusts nothing the client sent.
pub fn identify<B>(request: &mut http::Request<B>, verifier: Option<&TokenVerifier>) {
    let extensions = request.extensions();
    if extensions.get::<Caller>().is_some()
        || extensions.get::<Rejection>().is_some()
        || extensions.get::<OutOfScope>().is_some()
    {
        return;
    }
    // Only the verified token decides who calls; identity headers a client sends mean nothing.
    let Some(value) = request.headers().get(http::header::AUTHORIZATION) else { return };
    match verify_header(value.to_str().ok(), verifier) {
        Ok(caller) if caller.service == Some(ServiceName::Gateway) => {
            if GATEWAY_METHODS.contains(&request.uri().path()) {
                request.extensions_mut().insert(caller);
            } else {
                let reason = "a gateway credential only exchanges API keys and records requests".to_string();
                request.extensions_mut().insert(OutOfScope { reason, caller });
            }
        }
        Ok(caller) if caller.api_key_id.is_some() => match crate::scopes::check(request.uri().path(), &caller.scopes) {
            Ok(()) => {
                request.extensions_mut().insert(caller);
            }
            Err(reason) => {
                request.extensions_mut().insert(OutOfScope { reason, caller });
            }
        },
        Ok(caller) => {
            request.extensions_mut().insert(caller);
        }
        Err(rejection) => {
            request.extensions_mut().insert(rejection);
        }
    }
}

/// The prefix of a render node's credential (`frn1.<node id>.<secret>`). Such a bearer token is
/// not a JWT: the layer leaves it to the render service, which verifies it against its own
/// table, and records only that it is no access token (no [`Caller`]).
pub const NODE_CREDENTIAL_PREFIX: &str = "frn1.";

/// The caller an `authorization` header value proves, or why it proves none.
fn verify_header(value: Option<&str>, verifier: Option<&TokenVerifier>) -> Result<Caller, Rejection> {
    match (value.and_then(bearer_token).map(str::trim), verifier) {
        (None, _) => Err(Rejection("authorization must be `Bearer <access token>`".into())),
        (Some(token), _) if token.starts_with(NODE_CREDENTIAL_PREFIX) => {
            Err(Rejection("a node credential is not an access token".into()))
        }
        (Some(_), None) => Err(Rejection("this server has no token keys configured".into())),
        (Some(token), Some(verifier)) => verifier.verify(token).map_err(|e| Rejection(strip(&e))),
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn strip(err: &Error) -> String {
    match err {
        Error::Unauthenticated(msg) => msg.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "flatrender";
    const AUD: &str = "flatrender-api";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: Uuid::new_v4(),
            tid: Uuid::new_v4(),
            role: Role::User,
            sid: None,
            svc: None,
            akid: None,
            scp: None,
            exp: now() + 300,
            nbf: now(),
            iat: now(),
            jti: Uuid::new_v4(),
        }
    }

    fn setup() -> (TokenSigner, TokenVerifier) {
        let signer = TokenSigner::generate("k1").unwrap();
        let verifier = TokenVerifier::new(&signer.jwks().unwrap(), ISS, AUD).unwrap();
        (signer, verifier)
    }

    fn b64(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn valid_token_yields_the_caller() {
        let (signer, verifier) = setup();
        let c = claims();
        let caller = verifier.verify(&signer.sign(&c).unwrap()).unwrap();
        assert_eq!(caller.user_id, c.sub);
        assert_eq!(caller.tenant_id, c.tid);
        assert_eq!(caller.role, Role::User);
    }

    #[test]
    fn attacks_are_rejected() {
        let (signer, verifier) = setup();
        let good = signer.sign(&claims()).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let payload = parts[1];

        let alg_none = format!("{}.{payload}.", b64(&serde_json::json!({"alg":"none","typ":"at+jwt","kid":"k1"})));
        // The classic key confusion: HMAC-SHA256 keyed with the Ed25519 public key itself.
        let hs256 = {
            let mut forged = Header::new(Algorithm::HS256);
            forged.kid = Some("k1".into());
            forged.typ = Some(ACCESS_TOKEN_TYPE.into());
            jsonwebtoken::encode(&forged, &claims(), &EncodingKey::from_secret(&signer.public).unwrap()).unwrap()
        };
        let path_kid = format!(
            "{}.{payload}.{}",
            b64(&serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"../../etc/passwd"})),
            parts[2]
        );
        let mut tampered_claims = claims();
        tampered_claims.role = Role::PlatformAdmin;
        let tampered = format!("{}.{}.{}", parts[0], b64(&serde_json::to_value(&tampered_claims).unwrap()), parts[2]);
        let other_key = TokenSigner::generate("k1").unwrap().sign(&claims()).unwrap();
        let unknown_kid = TokenSigner::generate("k2").unwrap().sign(&claims()).unwrap();
        let expired = signer.sign(&AccessClaims { exp: now() - 120, nbf: now() - 600, ..claims() }).unwrap();
        let future = signer.sign(&AccessClaims { nbf: now() + 120, ..claims() }).unwrap();
        let wrong_aud = signer.sign(&AccessClaims { aud: "other".into(), ..claims() }).unwrap();
        let wrong_iss = signer.sign(&AccessClaims { iss: "evil".into(), ..claims() }).unwrap();
        let refresh_typ = {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some("k1".into());
            header.typ = Some("refresh+jwt".into());
            jsonwebtoken::encode(&header, &claims(), &signer.key).unwrap()
        };

        for (name, token) in [
            ("alg none", alg_none),
            ("HS256", hs256),
            ("kid with path characters", path_kid),
            ("tampered payload", tampered),
            ("signed by another key", other_key),
            ("unknown kid", unknown_kid),
            ("expired", expired),
            ("not yet valid", future),
            ("wrong audience", wrong_aud),
            ("wrong issuer", wrong_iss),
            ("not an access token", refresh_typ),
            ("garbage", "a.b.c".into()),
        ] {
            let result = verifier.verify(&token);
            assert!(matches!(result, Err(Error::Unauthenticated(_))), "{name}: {result:?}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn node_credentials_pass_through_without_a_caller() {
        let (signer, verifier) = setup();
        let credential = format!("Bearer {NODE_CREDENTIAL_PREFIX}{}.{}", Uuid::new_v4(), "A".repeat(43));
        let Err(Rejection(reason)) = verify_header(Some(&credential), Some(&verifier)) else {
            panic!("a node credential must not yield a caller");
        };
        assert_eq!(reason, "a node credential is not an access token");
        // Also without keys: the render service verifies node credentials itself.
        assert!(verify_header(Some(&credential), None).is_err());
        // Access tokens are still verified, and a JWT never passes as a node credential.
        let token = signer.sign(&claims()).unwrap();
        assert!(verify_header(Some(&format!("Bearer {token}")), Some(&verifier)).is_ok());
        let Err(Rejection(reason)) = verify_header(Some("Bearer frn2.x"), Some(&verifier)) else {
            panic!("garbage must not yield a caller");
        };
        assert_eq!(reason, "malformed token");
        assert!(verify_header(None, Some(&verifier)).is_err());
    }

    #[test]
    fn remembered_tokens_are_forgotten_when_the_keys_change() {
        let signer = TokenSigner::generate("k1").unwrap();
        let verifier = TokenVerifier::without_keys(ISS, AUD);
        verifier.publish(&signer.jwks().unwrap()).unwrap();
        let token = signer.sign(&claims()).unwrap();
        assert!(verifier.verify(&token).is_ok());
        assert!(verifier.verify(&token).is_ok(), "from memory");
        verifier.forget("k1");
        assert!(verifier.verify(&token).is_err(), "a revoked key's token is refused at once");
        verifier.publish(&signer.jwks().unwrap()).unwrap();
        assert!(verifier.verify(&token).is_ok());
        let other = TokenSigner::generate("k2").unwrap();
        verifier.publish(&other.jwks().unwrap()).unwrap();
        assert!(verifier.verify(&token).is_err(), "a key left out of a new set is refused at once");
    }

    #[test]
    fn leeway_is_thirty_seconds() {
        let (signer, verifier) = setup();
        let recently_expired = signer.sign(&AccessClaims { exp: now() - 10, nbf: now() - 600, ..claims() }).unwrap();
        assert!(verifier.verify(&recently_expired).is_ok());
    }

    #[test]
    fn roles_are_ordered() {
        let caller = Caller {
            tenant_id: Uuid::nil(),
            user_id: Uuid::nil(),
            role: Role::TenantAdmin,
            session_id: None,
            service: None,
            api_key_id: None,
            scopes: Vec::new(),
        };
        assert!(caller.require(Role::User).is_ok());
        assert!(caller.require(Role::TenantAdmin).is_ok());
        assert_eq!(caller.require(Role::PlatformAdmin).unwrap_err().code(), tonic::Code::PermissionDenied);
        let service = Caller { role: Role::User, service: Some(ServiceName::Render), ..caller.clone() };
        assert_eq!(service.require(Role::User).unwrap_err().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn service_credentials_name_no_tenant() {
        let (signer, verifier) = setup();
        let service = AccessClaims { svc: Some(ServiceName::Render), tid: Uuid::nil(), ..claims() };
        let caller = verifier.verify(&signer.sign(&service).unwrap()).unwrap();
        assert_eq!(caller.service, Some(ServiceName::Render));
        let with_tenant = AccessClaims { svc: Some(ServiceName::Render), ..claims() };
        assert!(verifier.verify(&signer.sign(&with_tenant).unwrap()).is_err());
        let admin =
            AccessClaims { svc: Some(ServiceName::Render), tid: Uuid::nil(), role: Role::PlatformAdmin, ..claims() };
        assert!(verifier.verify(&signer.sign(&admin).unwrap()).is_err());
        assert_eq!(ServiceName::parse("render"), Some(ServiceName::Render));
        assert_eq!(ServiceName::parse("nope"), None);
    }

    #[test]
    fn a_gateway_credential_reaches_only_the_gateway_methods() {
        let (signer, verifier) = setup();
        let token = signer
            .sign(&AccessClaims::service(ServiceName::Gateway, ISS, AUD, std::time::Duration::from_secs(60)))
            .unwrap();
        let request = |path: &str| {
            let mut request = http::Request::builder()
                .uri(path)
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .body(())
                .unwrap();
            identify(&mut request, Some(&verifier));
            request
        };
        for path in GATEWAY_METHODS {
            let allowed = request(path);
            assert_eq!(
                allowed.extensions().get::<Caller>().and_then(|c| c.service),
                Some(ServiceName::Gateway),
                "{path}"
            );
        }
        for path in ["/flatrender.identity.v1.BillingService/GetPlanLimits", "/flatrender.file.v1.FileService/GetFile"]
        {
            let refused = request(path);
            assert!(refused.extensions().get::<Caller>().is_none(), "{path}");
            assert!(refused.extensions().get::<OutOfScope>().is_some(), "{path}: PERMISSION_DENIED");
        }
        // Another service's credential is not confined.
        let render = signer
            .sign(&AccessClaims::service(ServiceName::Render, ISS, AUD, std::time::Duration::from_secs(60)))
            .unwrap();
        let mut request = http::Request::builder()
            .uri("/flatrender.identity.v1.BillingService/GetPlanLimits")
            .header(http::header::AUTHORIZATION, format!("Bearer {render}"))
            .body(())
            .unwrap();
        identify(&mut request, Some(&verifier));
        assert!(request.extensions().get::<Caller>().is_some());
    }

    #[test]
    fn dev_keys_round_trip() {
        let dir = std::env::temp_dir().join(format!("flatrender-keys-{}", Uuid::new_v4()));
        let files = DevKeyFiles::under(&dir);
        assert!(files.ensure().unwrap());
        assert!(!files.ensure().unwrap(), "existing keys are kept");
        let signer = files.signer().unwrap();
        let verifier = TokenVerifier::from_file(&files.jwks, ISS, AUD).unwrap();
        assert!(verifier.verify(&signer.sign(&claims()).unwrap()).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&files.private_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the private key is private");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
