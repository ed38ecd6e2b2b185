//! A KMS wrapper that bounds how long and how often Custos waits for its KMS.
//!
//! The KMS sits on the produce path whenever a DEK must be generated or
//! unwrapped. A slow or dead KMS must not hang client requests or pile up
//! retries against a service that is already failing, so every call gets a
//! timeout, a few retries with exponential backoff (only for errors that may
//! go away), and a circuit breaker that fails fast after repeated failures and
//! lets one trial call through after a cool-down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey, DEK_LEN};

/// How [`GuardedKms`] bounds KMS calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Longest wait for one attempt.
    pub timeout: Duration,
    /// Extra attempts after a retryable failure (0: try once).
    pub max_retries: u32,
    /// Wait before the first retry; doubles with each further retry.
    pub backoff_base: Duration,
    /// Consecutive retryable failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a trial call.
    pub breaker_cooldown: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            max_retries: 2,
            backoff_base: Duration::from_millis(50),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// Receives one event per KMS attempt, for metrics.
pub trait KmsObserver: Send + Sync {
    /// `op` is "generate_data_key", "decrypt_data_key" or "rewrap"; `outcome`
    /// is "ok", "error", "timeout" or "circuit_open" (no call was made).
    fn call(&self, kms: &str, op: &'static str, outcome: &'static str, elapsed: Duration);
}

/// The breaker's state, as [`GuardedKms::breaker_state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through; this many retryable failures in a row so far.
    Closed {
        /// Consecutive retryable failures.
        failures: u32,
    },
    /// Calls fail fast until the cool-down ends.
    Open,
    /// One trial call is in flight; others fail fast.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// Wraps any [`Kms`] with a timeout, bounded retries and a circuit breaker.
pub struct GuardedKms {
    inner: Arc<dyn Kms>,
    config: GuardConfig,
    observer: Option<Arc<dyn KmsObserver>>,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for GuardedKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedKms")
            .field("kms", &self.inner.name())
            .field("config", &self.config)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

/// Longest backoff, whatever the retry count.
const MAX_BACKOFF_FACTOR: u32 = 64;

impl GuardedKms {
    /// Guards `inner` with `config`.
    pub fn new(inner: Arc<dyn Kms>, config: GuardConfig) -> Self {
        Self {
            inner,
            config,
            observer: None,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
        }
    }

    /// Adds a metrics observer.
    pub fn with_observer(mut self, observer: Arc<dyn KmsObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        match *self.lock() {
            Breaker::Closed { failures } => BreakerState::Closed { failures },
            Breaker::Open { until } if Instant::now() < until => BreakerState::Open,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an attempt may go out now; `Err` carries the fail-fast error.
    fn admit(&self) -> Result<(), KmsError> {
        let now = Instant::now();
        let mut b = self.lock();
        match *b {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } if now < until => Err(KmsError::CircuitOpen {
                retry_in_ms: millis(until - now),
            }),
            Breaker::Open { .. } => {
                *b = Breaker::HalfOpen { since: now };
                Ok(())
            }
            // Each attempt ends within `timeout`; a trial older than that was
            // abandoned (its caller dropped the future), so allow another.
            Breaker::HalfOpen { since } if now.duration_since(since) < self.config.timeout => {
                Err(KmsError::CircuitOpen {
                    retry_in_ms: millis(self.config.timeout - now.duration_since(since)),
                })
            }
            Breaker::HalfOpen { .. } => {
                *b = Breaker::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    /// Feeds an attempt's outcome to the breaker. Non-retryable errors
    /// (rejected key, access denied) mean the KMS answered, so they count as
    /// healthy.
    fn record(&self, failed: bool) {
        let now = Instant::now();
        let mut b = self.lock();
        *b = match (*b, failed) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::HalfOpen { .. }, true) | (Breaker::Open { .. }, true) => Breaker::Open {
                until: now + self.config.breaker_cooldown,
            },
            (Breaker::Closed { failures }, true) => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.breaker_threshold.max(1) {
                    Breaker::Open {
                        until: now + self.config.breaker_cooldown,
                    }
                } else {
                    Breaker::Closed { failures }
                }
            }
        };
    }

    fn observe(&self, op: &'static str, outcome: &'static str, elapsed: Duration) {
        if let Some(o) = &self.observer {
            o.call(self.inner.name(), op, outcome, elapsed);
        }
    }

    /// Runs `attempt` under the timeout, retry and breaker rules.
    async fn guarded<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T, KmsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, KmsError>>,
    {
        let mut tries = 0u32;
        loop {
            if let Err(e) = self.admit() {
                self.observe(op, "circuit_open", Duration::ZERO);
                return Err(e);
            }
            let started = Instant::now();
            let result = tokio::time::timeout(self.config.timeout, attempt()).await;
            let e = match result {
                Ok(Ok(v)) => {
                    self.observe(op, "ok", started.elapsed());
                    self.record(false);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    self.observe(op, "error", started.elapsed());
                    e
                }
                Err(_) => {
                    self.observe(op, "timeout", started.elapsed());
                    KmsError::Unavailable(format!(
                        "{} {op} timed out after {} ms",
                        self.inner.name(),
                        millis(self.config.timeout)
                    ))
                }
            };
            let retryable = e.retryable();
            self.record(retryable);
            if !retryable || tries >= self.config.max_retries {
                return Err(e);
            }
            let factor = 1u32
                .checked_shl(tries)
                .unwrap_or(MAX_BACKOFF_FACTOR)
                .min(MAX_BACKOFF_FACTOR);
            tokio::time::sleep(self.config.backoff_base * factor).await;
            tries += 1;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Kms for GuardedKms {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn generate_data_key(
        &self,
        kek_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.guarded("generate_data_key", || {
            self.inner.generate_data_key(kek_id, context)
        })
        .await
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError> {
        self.guarded("decrypt_data_key", || {
            self.inner.decrypt_data_key(wrapped, context)
        })
        .await
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        to_kek_id: Option<&str>,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        self.guarded("rewrap", || self.inner.rewrap(wrapped, to_kek_id, context))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// What the fake does on each call.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Ok,
        Unavailable,
        Denied,
        Hang,
    }

    struct FakeKms {
        mode: Mutex<Mode>,
        calls: AtomicU32,
    }

    impl FakeKms {
        fn new(mode: Mode) -> Arc<Self> {
            Arc::new(Self {
                mode: Mutex::new(mode),
                calls: AtomicU32::new(0),
            })
        }
        fn set(&self, mode: Mode) {
            *self.mode.lock().expect("lock") = mode;
        }
        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Kms for FakeKms {
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn generate_data_key(
            &self,
            kek_id: &str,
            _context: &EncryptionContext,
        ) -> Result<DataKey, KmsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mode = *self.mode.lock().expect("lock");
            match mode {
                Mode::Ok => Ok(DataKey {
                    plaintext: Zeroizing::new([1; DEK_LEN]),
                    wrapped: WrappedKey {
                        kek_id: kek_id.to_owned(),
                        kek_version: 1,
                        blob: vec![1],
                    },
                }),
                Mode::Unavailable => Err(KmsError::Unavailable("down".to_owned())),
                Mode::Denied => Err(KmsError::AccessDenied("no".to_owned())),
                Mode::Hang => {
                    std::future::pending::<()>().await;
                    Err(KmsError::Other("unreachable".to_owned()))
                }
            }
        }
        async fn decrypt_data_key(
            &self,
            _wrapped: &WrappedKey,
            _context: &EncryptionContext,
        ) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError> {
            Err(KmsError::Other("unused".to_owned()))
        }
        async fn rewrap(
            &self,
            _wrapped: &WrappedKey,
            _to: Option<&str>,
            _context: &EncryptionContext,
        ) -> Result<WrappedKey, KmsError> {
            Err(KmsError::Other("unused".to_owned()))
        }
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<(String, &'static str, &'static str)>>);

    impl KmsObserver for Events {
        fn call(&self, kms: &str, op: &'static str, outcome: &'static str, _e: Duration) {
            self.0
                .lock()
                .expect("lock")
                .push((kms.to_owned(), op, outcome));
        }
    }

    impl Events {
        fn outcomes(&self) -> Vec<&'static str> {
            self.0.lock().expect("lock").iter().map(|e| e.2).collect()
        }
    }

    fn config() -> GuardConfig {
        GuardConfig {
            timeout: Duration::from_millis(100),
            max_retries: 2,
            backoff_base: Duration::from_millis(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_millis(300),
        }
    }

    async fn gen(g: &GuardedKms) -> Result<DataKey, KmsError> {
        g.generate_data_key("k", &EncryptionContext::new()).await
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_fire_and_retries_are_bounded() {
        let fake = FakeKms::new(Mode::Hang);
        let events = Arc::new(Events::default());
        let g = GuardedKms::new(fake.clone(), config()).with_observer(events.clone());
        let started = tokio::time::Instant::now();
        let err = gen(&g).await.expect_err("hangs");
        assert_eq!(
            err,
            KmsError::Unavailable("fake generate_data_key timed out after 100 ms".to_owned())
        );
        assert_eq!(fake.calls(), 3);
        // 3 timeouts + backoff 10 ms + 20 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(330));
        assert_eq!(events.outcomes(), vec!["timeout"; 3]);
        assert_eq!(
            events.0.lock().expect("lock")[0],
            ("fake".to_owned(), "generate_data_key", "timeout")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_errors_are_not_retried_and_keep_the_breaker_closed() {
        let fake = FakeKms::new(Mode::Denied);
        let g = GuardedKms::new(fake.clone(), config());
        for _ in 0..10 {
            assert!(matches!(gen(&g).await, Err(KmsError::AccessDenied(_))));
        }
        assert_eq!(fake.calls(), 10);
        assert_eq!(g.breaker_state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_to_success() {
        let fake = FakeKms::new(Mode::Unavailable);
        let g = Arc::new(GuardedKms::new(fake.clone(), config()));
        let g2 = g.clone();
        let task = tokio::spawn(async move { gen(&g2).await.map(|d| d.wrapped.kek_version) });
        // First attempt fails at once; heal the KMS during the backoff.
        tokio::time::sleep(Duration::from_millis(5)).await;
        fake.set(Mode::Ok);
        assert_eq!(task.await.expect("join").expect("ok"), 1);
        assert_eq!(fake.calls(), 2);
        assert_eq!(g.breaker_state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_fails_fast_and_recovers() {
        let fake = FakeKms::new(Mode::Unavailable);
        let events = Arc::new(Events::default());
        let g = GuardedKms::new(
            fake.clone(),
            GuardConfig {
                max_retries: 0,
                ..config()
            },
        )
        .with_observer(events.clone());
        for i in 1..5 {
            assert!(matches!(gen(&g).await, Err(KmsError::Unavailable(_))));
            assert_eq!(g.breaker_state(), BreakerState::Closed { failures: i });
        }
        assert!(matches!(gen(&g).await, Err(KmsError::Unavailable(_))));
        assert_eq!(g.breaker_state(), BreakerState::Open);
        assert_eq!(fake.calls(), 5);

        // Open: no call is made.
        let err = gen(&g).await.expect_err("open");
        assert_eq!(err, KmsError::CircuitOpen { retry_in_ms: 300 });
        assert!(err.retryable());
        assert_eq!(fake.calls(), 5);
        assert_eq!(events.outcomes().last(), Some(&"circuit_open"));

        // After the cool-down a failing trial re-opens it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(g.breaker_state(), BreakerState::HalfOpen);
        assert!(matches!(gen(&g).await, Err(KmsError::Unavailable(_))));
        assert_eq!(fake.calls(), 6);
        assert_eq!(g.breaker_state(), BreakerState::Open);

        // A successful trial closes it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        fake.set(Mode::Ok);
        gen(&g).await.expect("trial succeeds");
        assert_eq!(g.breaker_state(), BreakerState::Closed { failures: 0 });
        gen(&g).await.expect("closed");
        assert_eq!(fake.calls(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_one_trial_at_a_time() {
        let fake = FakeKms::new(Mode::Unavailable);
        let g = Arc::new(GuardedKms::new(
            fake.clone(),
            GuardConfig {
                max_retries: 0,
                breaker_threshold: 1,
                ..config()
            },
        ));
        assert!(gen(&g).await.is_err());
        tokio::time::sleep(Duration::from_millis(300)).await;
        fake.set(Mode::Hang);
        let g2 = g.clone();
        let trial = tokio::spawn(async move { gen(&g2).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(matches!(
            gen(&g).await,
            Err(KmsError::CircuitOpen { retry_in_ms: 90 })
        ));
        // The hanging trial times out and re-opens the breaker.
        assert!(trial.await.expect("join").is_err());
        assert_eq!(g.breaker_state(), BreakerState::Open);
        assert_eq!(fake.calls(), 2);
    }
}
