//! Password policy and Argon2id hashing on a bounded worker pool.
//!
//! Each hash or verification costs about 19 MiB and tens of milliseconds of CPU. Running them on
//! Tokio's blocking pool behind a semaphore keeps a burst of logins from occupying every core (and
//! the async workers), so other calls keep being served; excess logins wait their turn instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::Error as HashError;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::{OnceCell, Semaphore};

/// Why a password could not be accepted, hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The password breaks the policy; the message is fit to show the user.
    #[error("{0}")]
    Policy(String),
    /// The stored hash cannot be parsed, is not Argon2, or asks for more than [`Argon2Params`]
    /// allows; treated as data corruption, never as a mismatch.
    #[error("stored password hash is malformed")]
    MalformedHash,
    /// Argon2 parameters below the product's minimum (a configuration error).
    #[error("invalid Argon2 parameters: {0}")]
    InvalidParams(String),
    /// The worker pool or Argon2 itself failed.
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// What a new password must satisfy. Lengths count characters, not bytes, so non-Latin
/// passwords are not penalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters.
    pub min_chars: usize,
    /// Most characters; bounds the work a single request can ask for.
    pub max_chars: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_chars: 10, max_chars: 128 }
    }
}

impl PasswordPolicy {
    /// Checks a password being set (not one being verified: old passwords must keep working).
    pub fn check(&self, password: &str) -> Result<(), PasswordError> {
        let chars = password.chars().count();
        if chars < self.min_chars {
            return Err(PasswordError::Policy(format!("password must have at least {} characters", self.min_chars)));
        }
        if chars > self.max_chars {
            return Err(PasswordError::Policy(format!("password must have at most {} characters", self.max_chars)));
        }
        // Control characters cannot be typed reliably on every device and break logs and forms.
        if password.chars().any(char::is_control) {
            return Err(PasswordError::Policy("password must not contain control characters".into()));
        }
        if password.chars().all(char::is_whitespace) {
            return Err(PasswordError::Policy("password must not be only whitespace".into()));
        }
        Ok(())
    }
}

/// Argon2id cost parameters, never below the product's minimum (OWASP's 19 MiB, t=2, p=1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    params: Params,
}

impl Argon2Params {
    /// Least memory, in KiB.
    pub const MIN_MEMORY_KIB: u32 = 19_456;
    /// Fewest passes.
    pub const MIN_ITERATIONS: u32 = 2;
    /// Lanes: fixed at one, since the pool already spreads work across cores.
    pub const PARALLELISM: u32 = 1;
    /// Most memory a stored hash may ask for (1 GiB): a corrupt row must not exhaust the host.
    pub const MAX_MEMORY_KIB: u32 = 1 << 20;
    /// Most passes a stored hash may ask for, for the same reason.
    pub const MAX_ITERATIONS: u32 = 64;

    /// Parameters for new hashes; refuses anything weaker than the minimum or above the caps.
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, PasswordError> {
        let invalid = |why: String| Err(PasswordError::InvalidParams(why));
        if !(Self::MIN_MEMORY_KIB..=Self::MAX_MEMORY_KIB).contains(&memory_kib) {
            return invalid(format!(
                "memory must be {} to {} KiB, not {memory_kib}",
                Self::MIN_MEMORY_KIB,
                Self::MAX_MEMORY_KIB
            ));
        }
        if !(Self::MIN_ITERATIONS..=Self::MAX_ITERATIONS).contains(&iterations) {
            return invalid(format!(
                "iterations must be {} to {}, not {iterations}",
                Self::MIN_ITERATIONS,
                Self::MAX_ITERATIONS
            ));
        }
        if parallelism != Self::PARALLELISM {
            return invalid(format!("parallelism must be {}, not {parallelism}", Self::PARALLELISM));
        }
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| PasswordError::InvalidParams(e.to_string()))?;
        Ok(Self { params })
    }

    /// Memory cost in KiB.
    pub fn memory_kib(&self) -> u32 {
        self.params.m_cost()
    }

    /// Number of passes.
    pub fn iterations(&self) -> u32 {
        self.params.t_cost()
    }

    /// Number of lanes (always 1).
    pub fn parallelism(&self) -> u32 {
        self.params.p_cost()
    }
}

impl Default for Argon2Params {
    /// m=19456, t=2, p=1: argon2's own defaults, which are the product's minimum.
    fn default() -> Self {
        Self { params: Params::DEFAULT }
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The password is correct.
    pub matches: bool,
    /// The stored hash is weaker than current settings (or not Argon2id v19): on a match, the
    /// caller should store a fresh [`PasswordHasher::hash`] of the password it just checked.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords, at most `workers` at a time. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    argon2: Argon2<'static>,
    params: Argon2Params,
    permits: Arc<Semaphore>,
    workers: usize,
    queued: AtomicUsize,
    /// A hash of a fixed password at current settings, for [`PasswordHasher::verify_dummy`].
    dummy: OnceCell<String>,
    #[cfg(test)]
    probe: Option<Arc<tests::Probe>>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.inner.params)
            .field("workers", &self.inner.workers)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// Counts a caller as queued until it holds a permit, including when its future is dropped.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PasswordHasher {
    /// A hasher running at most `workers` hashes at once (at least one; zero would deadlock).
    pub fn new(params: Argon2Params, workers: usize) -> Self {
        let workers = workers.clamp(1, Semaphore::MAX_PERMITS);
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.params.clone());
        let inner = Inner {
            argon2,
            params,
            permits: Arc::new(Semaphore::new(workers)),
            workers,
            queued: AtomicUsize::new(0),
            dummy: OnceCell::new(),
            #[cfg(test)]
            probe: None,
        };
        Self { inner: Arc::new(inner) }
    }

    /// How many hashes may run at once.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Callers waiting for a worker, for metrics (a snapshot, approximate under load).
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Hashes a new password into a PHC string (`$argon2id$v=19$m=…,t=…,p=1$salt$hash`) with a
    /// fresh 16-byte salt from the OS. The caller checks [`PasswordPolicy`] first.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let password = password.to_owned();
        self.run(move |inner| inner.argon2.hash_password(password.as_bytes()))
            .await?
            .map(|hash| hash.to_string())
            .map_err(|e| PasswordError::Internal(e.to_string()))
    }

    /// Checks a password against a stored PHC string, at the stored hash's own parameters.
    pub async fn verify(&self, phc: &str, password: &str) -> Result<Verified, PasswordError> {
        // Parsed and vetted before queueing: a corrupt row costs nothing and takes no worker.
        let stored = PasswordHash::new(phc).map_err(|_| PasswordError::MalformedHash)?;
        let needs_rehash = self.vet(&stored)?;
        let password = password.to_owned();
        match self.run(move |inner| inner.argon2.verify_password(password.as_bytes(), &stored)).await? {
            Ok(()) => Ok(Verified { matches: true, needs_rehash }),
            Err(HashError::PasswordInvalid) => Ok(Verified { matches: false, needs_rehash }),
            Err(
                HashError::Algorithm
                | HashError::EncodingInvalid
                | HashError::OutputSize
                | HashError::ParamInvalid { .. }
                | HashError::ParamsInvalid
                | HashError::SaltInvalid
                | HashError::Version,
            ) => Err(PasswordError::MalformedHash),
            Err(e) => Err(PasswordError::Internal(e.to_string())),
        }
    }

    /// One verification against a fixed hash at current settings, so a login for an unknown
    /// account costs as long as one for a known account and does not reveal which it was.
    ///
    /// The fixed hash is made on first use; call this once at startup to keep that first extra
    /// hash out of any login.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), PasswordError> {
        let dummy = self.inner.dummy.get_or_try_init(|| self.hash("flatrender dummy password")).await?;
        self.verify(dummy, password).await.map(|_| ())
    }

    /// Refuses hashes this hasher cannot or will not run; returns whether to rehash on success.
    fn vet(&self, stored: &PasswordHash) -> Result<bool, PasswordError> {
        let algorithm = Algorithm::new(stored.algorithm.as_str()).map_err(|_| PasswordError::MalformedHash)?;
        let version = match stored.version {
            Some(v) => Version::try_from(v).map_err(|_| PasswordError::MalformedHash)?,
            None => Version::V0x13,
        };
        let params = Params::try_from(stored).map_err(|_| PasswordError::MalformedHash)?;
        let (Some(_), Some(output)) = (&stored.salt, &stored.hash) else {
            return Err(PasswordError::MalformedHash);
        };
        if params.m_cost() > Argon2Params::MAX_MEMORY_KIB || params.t_cost() > Argon2Params::MAX_ITERATIONS {
            return Err(PasswordError::MalformedHash);
        }
        let current = &self.inner.params;
        Ok(algorithm != Algorithm::Argon2id
            || version != Version::V0x13
            || params.m_cost() < current.memory_kib()
            || params.t_cost() < current.iterations()
            || output.len() < Params::DEFAULT_OUTPUT_LEN)
    }

    /// Runs `job` on the blocking pool once a worker is free.
    async fn run<T, F>(&self, job: F) -> Result<T, PasswordError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> T + Send + 'static,
    {
        let permit = {
            let _queued = Queued::enter(&self.inner.queued);
            Arc::clone(&self.inner.permits)
                .acquire_owned()
                .await
                .map_err(|_| PasswordError::Internal("password worker pool closed".into()))?
        };
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // Held by the blocking task, so the worker stays counted until the work really ends,
            // even if the caller stopped waiting for it.
            let _permit = permit;
            #[cfg(test)]
            let _probe = inner.probe.as_ref().map(|probe| probe.enter());
            job(&inner)
        })
        .await
        .map_err(|e| PasswordError::Internal(format!("password worker failed: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    use super::*;

    const PASSWORD: &str = "correct horse battery staple";

    /// Test-only instrumentation of the blocking section: counts sections running at once and
    /// holds each one until the test releases it, so overlap would be observed, not raced.
    pub(super) struct Probe {
        running: AtomicUsize,
        peak: AtomicUsize,
        entered: UnboundedSender<()>,
        gate: Mutex<mpsc::Receiver<()>>,
    }

    pub(super) struct ProbeGuard<'a>(&'a Probe);

    impl Probe {
        pub(super) fn enter(&self) -> ProbeGuard<'_> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            self.entered.send(()).unwrap();
            self.gate.lock().unwrap().recv().unwrap();
            ProbeGuard(self)
        }
    }

    impl Drop for ProbeGuard<'_> {
        fn drop(&mut self) {
            self.0.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn hasher() -> PasswordHasher {
        PasswordHasher::new(Argon2Params::default(), 2)
    }

    /// Yields (no sleeping) until `done` holds; fails rather than hangs if it never does.
    async fn yield_until(mut done: impl FnMut() -> bool) {
        for _ in 0..1_000_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition never reached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hash_then_verify() {
        let hasher = hasher();
        let phc = hasher.hash(PASSWORD).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let ok = hasher.verify(&phc, PASSWORD).await.unwrap();
        assert_eq!(ok, Verified { matches: true, needs_rehash: false });
        let bad = hasher.verify(&phc, "correct horse battery stapler").await.unwrap();
        assert_eq!(bad, Verified { matches: false, needs_rehash: false });
        // Salted: the same password never hashes the same way twice.
        assert_ne!(hasher.hash(PASSWORD).await.unwrap(), phc);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn weaker_stored_hash_needs_rehash() {
        let phc = hasher().hash(PASSWORD).await.unwrap();
        let stronger = PasswordHasher::new(Argon2Params::new(19_456, 3, 1).unwrap(), 1);
        let result = stronger.verify(&phc, PASSWORD).await.unwrap();
        assert_eq!(result, Verified { matches: true, needs_rehash: true });
        assert!(stronger.verify(&phc, "wrong password!").await.unwrap().needs_rehash);
        // A stronger stored hash is verified at its own cost and is not downgraded.
        let strong_phc = stronger.hash(PASSWORD).await.unwrap();
        assert!(strong_phc.starts_with("$argon2id$v=19$m=19456,t=3,p=1$"), "{strong_phc}");
        assert_eq!(
            hasher().verify(&strong_phc, PASSWORD).await.unwrap(),
            Verified { matches: true, needs_rehash: false }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_argon2_variant_needs_rehash() {
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::DEFAULT);
        let phc = argon2i.hash_password_with_salt(PASSWORD.as_bytes(), b"sixteen byte slt").unwrap().to_string();
        assert!(phc.starts_with("$argon2i$"), "{phc}");
        assert_eq!(hasher().verify(&phc, PASSWORD).await.unwrap(), Verified { matches: true, needs_rehash: true });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_hash_is_an_error() {
        let hasher = hasher();
        let phc = hasher.hash(PASSWORD).await.unwrap();
        let truncated = &phc[..phc.len() - 10];
        let huge = phc.replace("m=19456", "m=4000000");
        let no_hash = phc.rsplit_once('$').unwrap().0.to_owned();
        let inputs = [
            "",
            "not a hash",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "$argon2id$v=99$m=19456,t=2,p=1$c2l4dGVlbiBieXRlIHNsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            truncated,
            &huge,
            &no_hash,
        ];
        for input in inputs {
            let result = hasher.verify(input, PASSWORD).await;
            assert!(matches!(result, Err(PasswordError::MalformedHash)), "{input:?}: {result:?}");
        }
        assert_eq!(hasher.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dummy_verification_runs() {
        let hasher = hasher();
        hasher.verify_dummy(PASSWORD).await.unwrap();
        hasher.verify_dummy("anything at all").await.unwrap();
        let dummy = hasher.inner.dummy.get().unwrap();
        assert!(dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{dummy}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pool_never_runs_more_than_its_workers() {
        let phc = hasher().hash(PASSWORD).await.unwrap();
        let (entered_tx, mut entered) = unbounded_channel();
        let (release, gate) = mpsc::channel();
        let probe = Arc::new(Probe {
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            entered: entered_tx,
            gate: Mutex::new(gate),
        });
        let mut hasher = PasswordHasher::new(Argon2Params::default(), 1);
        Arc::get_mut(&mut hasher.inner).unwrap().probe = Some(Arc::clone(&probe));
        assert_eq!(hasher.workers(), 1);

        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (hasher, phc) = (hasher.clone(), phc.clone());
                tokio::spawn(async move { hasher.verify(&phc, PASSWORD).await })
            })
            .collect();

        // The first admitted section is held inside the worker; the other three must all be
        // parked on the semaphore rather than running beside it.
        entered.recv().await.unwrap();
        yield_until(|| hasher.queued() == 3).await;
        for waiting in [3, 2, 1, 0] {
            assert_eq!(probe.running.load(Ordering::SeqCst), 1);
            assert_eq!(hasher.queued(), waiting);
            release.send(()).unwrap();
            if waiting > 0 {
                // The next one enters only after the previous section ended and freed the permit.
                entered.recv().await.unwrap();
            }
        }
        for task in tasks {
            assert!(task.await.unwrap().unwrap().matches);
        }
        assert_eq!(probe.peak.load(Ordering::SeqCst), 1);
        assert_eq!(hasher.queued(), 0);
    }

    #[test]
    fn zero_workers_means_one() {
        assert_eq!(PasswordHasher::new(Argon2Params::default(), 0).workers(), 1);
    }

    #[test]
    fn params_below_minimum_refused() {
        let default = Argon2Params::default();
        assert_eq!((default.memory_kib(), default.iterations(), default.parallelism()), (19_456, 2, 1));
        assert_eq!(Argon2Params::new(19_456, 2, 1).unwrap(), default);
        for (m, t, p) in
            [(19_455, 2, 1), (19_456, 1, 1), (19_456, 2, 2), (19_456, 2, 0), (1 << 21, 2, 1), (19_456, 65, 1)]
        {
            assert!(matches!(Argon2Params::new(m, t, p), Err(PasswordError::InvalidParams(_))), "{m},{t},{p}");
        }
    }

    #[test]
    fn policy_messages() {
        let policy = PasswordPolicy::default();
        let message = |p: &str| policy.check(p).unwrap_err().to_string();
        assert_eq!(message("short"), "password must have at least 10 characters");
        assert_eq!(message(&"x".repeat(129)), "password must have at most 128 characters");
        assert_eq!(message("ten chars\n"), "password must not contain control characters");
        assert_eq!(message("tab\tinside pw"), "password must not contain control characters");
        assert_eq!(message("            "), "password must not be only whitespace");
        assert_eq!(
            message("\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}"),
            "password must not be only whitespace"
        );
        // Characters, not bytes: ten two-byte characters pass, 128 four-byte ones too.
        assert!(policy.check("éééééééééé").is_ok());
        assert!(policy.check(&"🦀".repeat(128)).is_ok());
        assert!(policy.check("ééééééééé").is_err());
        assert!(policy.check(PASSWORD).is_ok());
    }
}
