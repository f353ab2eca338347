//! Validated settings of the machine: when to refresh, how to retry, how long a request may take
//!
//! Every builder returns [`ConfigError`] naming the field and the allowed range; a built
//! [`Config`] is always valid. The defaults follow Azure's guidance and are pinned by a test:
//!
//! | setting | default | allowed |
//! |---|---|---|
//! | refresh ratio | 0.7 | (0, 1] |
//! | refresh lower bound | 3 min (Azure: re-AUTH at least 3 min before expiry) | 0 ..= 30 days |
//! | minimum interval between fetches | 10 s | 1 ms ..= 1 h |
//! | refresh jitter | 0 (off) | 0 ..= 0.5 of the refresh delay, only ever earlier |
//! | retry: attempts before `RetriesExhausted` | 5 | 1 ..= 1000 |
//! | retry: initial delay | 1 s | 1 ms ..= max delay |
//! | retry: multiplier | 2 | 1 ..= 100 |
//! | retry: max delay | 30 s | initial delay ..= 1 h |
//! | retry: jitter | ±20 % | 0 ..= 0.9 |
//! | request timeout | 10 s, never past the token's remaining validity | 1 ms ..= 10 min |
//! | clock skew tolerance | 5 min (see [`ConfigBuilder::clock_skew_tolerance`]) | 1 s ..= 30 days |
//! | jitter seed | unset: each runtime draws one from the OS per provider; core alone falls back to [`FALLBACK_RNG_SEED`] | any `u64` |

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, FetchError};

/// Tokens are never trusted to live longer than this; larger lifetimes are clamped.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);

const MAX_MIN_INTERVAL: Duration = Duration::from_secs(60 * 60);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60 * 60);
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const ONE_MS: Duration = Duration::from_millis(1);

/// The jitter seed of a [`Config`] whose seed was never set, neither by the user
/// ([`ConfigBuilder::rng_seed`]) nor by a runtime ([`Config::with_seed_if_unset`])
///
/// Every process using it jitters identically, so a fleet would retry in lockstep: the
/// runtimes never leave the seed unset. It exists so the core stays deterministic on its own.
pub const FALLBACK_RNG_SEED: u64 = 0x005e_ed0f_e17a;

/// Decides which fetch errors are retried quickly, overriding each flow's own classification
pub type RetryPredicate = Arc<dyn Fn(&FetchError) -> bool + Send + Sync>;

/// When a token is refreshed
///
/// `refresh_at = received + min(ratio * ttl, ttl - lower_bound)`, earlier when the provider's
/// `refresh_in` says so, and never sooner than `min_interval` after the previous fetch started.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshPolicy {
    ratio: f64,
    lower_bound: Duration,
    min_interval: Duration,
    jitter: f64,
}

impl RefreshPolicy {
    /// A builder starting from the defaults
    pub fn builder() -> RefreshPolicyBuilder {
        RefreshPolicyBuilder {
            policy: Self::default(),
        }
    }

    /// Fraction of the lifetime after which to refresh
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Least validity a token must still have when it is refreshed
    pub fn lower_bound(&self) -> Duration {
        self.lower_bound
    }

    /// Least time between the starts of two fetches
    pub fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// Largest fraction of the refresh delay removed at random
    pub fn jitter(&self) -> f64 {
        self.jitter
    }
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.7,
            lower_bound: Duration::from_secs(180),
            min_interval: Duration::from_secs(10),
            jitter: 0.0,
        }
    }
}

/// Builds a [`RefreshPolicy`]
#[derive(Clone, Debug)]
pub struct RefreshPolicyBuilder {
    policy: RefreshPolicy,
}

impl RefreshPolicyBuilder {
    /// Fraction of the lifetime after which to refresh, in (0, 1]
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.policy.ratio = ratio;
        self
    }

    /// Least validity a token must still have when it is refreshed
    pub fn lower_bound(mut self, lower_bound: Duration) -> Self {
        self.policy.lower_bound = lower_bound;
        self
    }

    /// Least time between the starts of two fetches (the hot-loop guard)
    pub fn min_interval(mut self, min_interval: Duration) -> Self {
        self.policy.min_interval = min_interval;
        self
    }

    /// Spreads a fleet's refreshes: up to this fraction of the delay is removed at random
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.policy.jitter = jitter;
        self
    }

    /// Validates the policy
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field outside its range (see the module table).
    pub fn build(self) -> Result<RefreshPolicy, ConfigError> {
        let p = self.policy;
        if !(p.ratio > 0.0 && p.ratio <= 1.0) {
            return Err(ConfigError::new(
                "refresh ratio",
                format!(
                    "{} is outside (0, 1]; 0.7 refreshes after 70 % of the lifetime",
                    p.ratio
                ),
            ));
        }
        if p.lower_bound > MAX_TOKEN_LIFETIME {
            return Err(ConfigError::new(
                "refresh lower bound",
                format!(
                    "{:?} is longer than the longest token lifetime ({MAX_TOKEN_LIFETIME:?})",
                    p.lower_bound
                ),
            ));
        }
        if p.min_interval < ONE_MS || p.min_interval > MAX_MIN_INTERVAL {
            return Err(ConfigError::new(
                "minimum refresh interval",
                format!("{:?} is outside 1ms ..= 1h", p.min_interval),
            ));
        }
        if !(0.0..=0.5).contains(&p.jitter) {
            return Err(ConfigError::new(
                "refresh jitter",
                format!("{} is outside 0 ..= 0.5", p.jitter),
            ));
        }
        Ok(p)
    }
}

/// How failed fetches are retried
///
/// Attempt `n` waits `initial_delay * multiplier^(n-1)`, jittered by ±`jitter` and capped at
/// `max_delay`; a longer `Retry-After` from the provider wins. After `max_attempts` consecutive
/// failures the machine reports `RetriesExhausted` once and keeps trying every `max_delay`.
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
    predicate: Option<RetryPredicate>,
}

impl RetryPolicy {
    /// A builder starting from the defaults
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: Self::default(),
        }
    }

    /// Consecutive failures before `RetriesExhausted`
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Delay after the first failure
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// Growth factor of the delay
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Largest delay
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Relative jitter applied to each delay (0.2 = ±20 %)
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Whether `error` is retried quickly: the user predicate when set, else the flow's rule
    pub fn is_retryable(&self, error: &FetchError) -> bool {
        match &self.predicate {
            Some(predicate) => predicate(error),
            None => error.is_retryable(),
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: 0.2,
            predicate: None,
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_delay", &self.initial_delay)
            .field("multiplier", &self.multiplier)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("predicate", &self.predicate.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl PartialEq for RetryPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.max_attempts == other.max_attempts
            && self.initial_delay == other.initial_delay
            && self.multiplier == other.multiplier
            && self.max_delay == other.max_delay
            && self.jitter == other.jitter
            && match (&self.predicate, &other.predicate) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// Builds a [`RetryPolicy`]
#[derive(Clone, Debug)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Consecutive failures before `RetriesExhausted`, 1 ..= 1000
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// Delay after the first failure
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.policy.initial_delay = delay;
        self
    }

    /// Growth factor of the delay, 1 ..= 100
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.policy.multiplier = multiplier;
        self
    }

    /// Largest delay, up to 1 h
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.policy.max_delay = delay;
        self
    }

    /// Relative jitter of each delay, 0 ..= 0.9
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.policy.jitter = jitter;
        self
    }

    /// Overrides which errors are retried quickly (the others wait `max_delay`)
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&FetchError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.policy.predicate = Some(Arc::new(predicate));
        self
    }

    /// Validates the policy
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field outside its range (see the module table).
    pub fn build(self) -> Result<RetryPolicy, ConfigError> {
        let p = self.policy;
        if !(1..=1000).contains(&p.max_attempts) {
            return Err(ConfigError::new(
                "retry max attempts",
                format!("{} is outside 1 ..= 1000", p.max_attempts),
            ));
        }
        if p.max_delay < ONE_MS || p.max_delay > MAX_RETRY_DELAY {
            return Err(ConfigError::new(
                "retry max delay",
                format!("{:?} is outside 1ms ..= 1h", p.max_delay),
            ));
        }
        if p.initial_delay < ONE_MS || p.initial_delay > p.max_delay {
            return Err(ConfigError::new(
                "retry initial delay",
                format!(
                    "{:?} is outside 1ms ..= max delay ({:?})",
                    p.initial_delay, p.max_delay
                ),
            ));
        }
        if !(1.0..=100.0).contains(&p.multiplier) {
            return Err(ConfigError::new(
                "retry multiplier",
                format!("{} is outside 1 ..= 100", p.multiplier),
            ));
        }
        if !(0.0..=0.9).contains(&p.jitter) {
            return Err(ConfigError::new(
                "retry jitter",
                format!("{} is outside 0 ..= 0.9", p.jitter),
            ));
        }
        Ok(p)
    }
}

/// Everything the machine needs to know besides time
///
/// ```
/// use std::time::Duration;
/// use redis_entraid_core::config::{Config, RefreshPolicy};
///
/// let config = Config::builder()
///     .refresh(RefreshPolicy::builder().ratio(0.5).lower_bound(Duration::from_secs(300)).build()?)
///     .request_timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(config.refresh().ratio(), 0.5);
/// # Ok::<(), redis_entraid_core::error::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    refresh: RefreshPolicy,
    retry: RetryPolicy,
    request_timeout: Duration,
    username_override: Option<String>,
    clock_skew_tolerance: Duration,
    rng_seed: Option<u64>,
}

impl Config {
    /// A builder starting from the defaults
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Self::default(),
        }
    }

    /// When tokens are refreshed
    pub fn refresh(&self) -> &RefreshPolicy {
        &self.refresh
    }

    /// How failed fetches are retried
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Longest a token request may take (shortened to the token's remaining validity)
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A Redis username to use instead of the token's `oid`
    pub fn username_override(&self) -> Option<&str> {
        self.username_override.as_deref()
    }

    /// How far an absolute expiry may fall short of the relative lifetime before it is put down
    /// to a skewed host clock (see [`ConfigBuilder::clock_skew_tolerance`])
    pub fn clock_skew_tolerance(&self) -> Duration {
        self.clock_skew_tolerance
    }

    /// The seed set for the jitter generator, if any; `None` means the machine would use
    /// [`FALLBACK_RNG_SEED`]. The same seed and inputs give the same actions.
    pub fn rng_seed(&self) -> Option<u64> {
        self.rng_seed
    }

    /// The seed the machine's jitter generator starts from: the one set, else
    /// [`FALLBACK_RNG_SEED`]
    ///
    /// Both the retry jitter and the refresh jitter are drawn from this one generator.
    pub fn effective_rng_seed(&self) -> u64 {
        self.rng_seed.unwrap_or(FALLBACK_RNG_SEED)
    }

    /// This configuration with `seed` as its jitter seed, unless one was set already
    ///
    /// Runtimes call it with fresh OS entropy when they build a provider, so the processes of
    /// a fleet do not retry and refresh in lockstep, while an explicit seed (tests,
    /// reproductions) is kept.
    ///
    /// ```
    /// use redis_entraid_core::config::Config;
    ///
    /// assert_eq!(Config::default().with_seed_if_unset(7).rng_seed(), Some(7));
    /// let pinned = Config::builder().rng_seed(1).build()?;
    /// assert_eq!(pinned.with_seed_if_unset(7).rng_seed(), Some(1));
    /// # Ok::<(), redis_entraid_core::error::ConfigError>(())
    /// ```
    #[must_use]
    pub fn with_seed_if_unset(mut self, seed: u64) -> Self {
        self.rng_seed.get_or_insert(seed);
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refresh: RefreshPolicy::default(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(10),
            username_override: None,
            clock_skew_tolerance: Duration::from_secs(5 * 60),
            rng_seed: None,
        }
    }
}

/// Builds a [`Config`]
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Sets the refresh policy
    pub fn refresh(mut self, refresh: RefreshPolicy) -> Self {
        self.config.refresh = refresh;
        self
    }

    /// Sets the retry policy
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Longest a token request may take, 1 ms ..= 10 min
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Uses this Redis username instead of the token's `oid` (for users whose ACL names differ)
    pub fn username_override(mut self, username: impl Into<String>) -> Self {
        self.config.username_override = Some(username.into());
        self
    }

    /// How far the host's wall clock may be off before the machine stops trusting it,
    /// 1 s ..= 30 days (default 5 min)
    ///
    /// Absolute expiries (`expires_on`, the JWT `exp`) are converted with a wall clock. When the
    /// response carries a `Date` header the server's clock is used and this setting only decides
    /// when a [`ClockSkew`](crate::event::Event::ClockSkew) is reported. Without one, the host
    /// clock is used, and when a relative `expires_in` is also present an absolute expiry may
    /// shorten it only while it falls short by at most this much: beyond it the host clock is
    /// taken to be ahead (a host one hour ahead would otherwise see every one-hour token as
    /// already expired, while Redis, which checks with its own clock, accepts them), the
    /// relative lifetime is trusted and the skew is reported.
    ///
    /// Why 5 minutes: it is the margin the Azure SDKs already build in (MSAL treats a token
    /// with less than 5 min left as expired, Azure Identity refreshes 300 s early) and the
    /// usual JWT clock-skew allowance, far above the drift of a time-synced host and above the
    /// 1 s rounding of integer lifetimes, yet well under the lifetimes that matter (1 h Entra
    /// tokens, 24 h managed-identity tokens). The cost of a large value is that a host clock
    /// ahead by less than it shortens every lifetime by that much; the cost of a small value
    /// is trusting an `expires_in` that an endpoint serving a cached token reports from
    /// issuance (the IMDS definition allows it) when that endpoint also sends no `Date`.
    /// IMDS answers carry `Date`, so there the server clock decides and this risk is moot.
    /// Set it to 30 days to always take the earliest lifetime.
    pub fn clock_skew_tolerance(mut self, tolerance: Duration) -> Self {
        self.config.clock_skew_tolerance = tolerance;
        self
    }

    /// Seeds the jitter generator with a fixed seed (tests, reproductions); left unset,
    /// the runtimes draw a random seed per provider from the OS
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.config.rng_seed = Some(seed);
        self
    }

    /// Validates the configuration
    ///
    /// # Errors
    /// [`ConfigError`] when the request timeout is outside 1 ms ..= 10 min, the clock skew
    /// tolerance outside 1 s ..= 30 days, or the username override is empty or holds
    /// whitespace (Redis usernames cannot).
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = self.config;
        if c.request_timeout < ONE_MS || c.request_timeout > MAX_REQUEST_TIMEOUT {
            return Err(ConfigError::new(
                "request timeout",
                format!("{:?} is outside 1ms ..= 10min", c.request_timeout),
            ));
        }
        if c.clock_skew_tolerance < Duration::from_secs(1)
            || c.clock_skew_tolerance > MAX_TOKEN_LIFETIME
        {
            return Err(ConfigError::new(
                "clock skew tolerance",
                format!(
                    "{:?} is outside 1s ..= 30 days; 5 minutes suits time-synced hosts",
                    c.clock_skew_tolerance
                ),
            ));
        }
        if let Some(name) = &c.username_override {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(ConfigError::new(
                    "username override",
                    "it must be a non-empty Redis username without whitespace",
                ));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_architecture() {
        let c = Config::default();
        assert_eq!(c.refresh().ratio(), 0.7);
        assert_eq!(c.refresh().lower_bound(), Duration::from_secs(180));
        assert_eq!(c.refresh().min_interval(), Duration::from_secs(10));
        assert_eq!(c.refresh().jitter(), 0.0);
        assert_eq!(c.retry().max_attempts(), 5);
        assert_eq!(c.retry().initial_delay(), Duration::from_secs(1));
        assert_eq!(c.retry().multiplier(), 2.0);
        assert_eq!(c.retry().max_delay(), Duration::from_secs(30));
        assert_eq!(c.retry().jitter(), 0.2);
        assert_eq!(c.request_timeout(), Duration::from_secs(10));
        assert_eq!(c.username_override(), None);
        assert_eq!(c.clock_skew_tolerance(), Duration::from_secs(300));
        assert_eq!(c.rng_seed(), None, "unset, so runtimes seed it per process");
        assert_eq!(c.effective_rng_seed(), FALLBACK_RNG_SEED);
        assert_eq!(
            Config::builder().build().unwrap(),
            c,
            "the builder starts from the defaults"
        );
    }

    #[test]
    fn ratio_outside_zero_one_is_rejected_by_name() {
        for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            let err = RefreshPolicy::builder().ratio(bad).build().unwrap_err();
            assert_eq!(err.field, "refresh ratio");
            assert!(err.to_string().contains("(0, 1]"), "{err}");
        }
        assert!(RefreshPolicy::builder().ratio(1.0).build().is_ok());
        assert!(RefreshPolicy::builder().ratio(1e-6).build().is_ok());
    }

    #[test]
    fn every_field_has_a_range() {
        let cases: Vec<(Result<(), ConfigError>, &str)> = vec![
            (
                RefreshPolicy::builder()
                    .lower_bound(MAX_TOKEN_LIFETIME * 2)
                    .build()
                    .map(drop),
                "refresh lower bound",
            ),
            (
                RefreshPolicy::builder()
                    .min_interval(Duration::ZERO)
                    .build()
                    .map(drop),
                "minimum refresh interval",
            ),
            (
                RefreshPolicy::builder()
                    .min_interval(Duration::from_secs(7200))
                    .build()
                    .map(drop),
                "minimum refresh interval",
            ),
            (
                RefreshPolicy::builder().jitter(0.6).build().map(drop),
                "refresh jitter",
            ),
            (
                RefreshPolicy::builder().jitter(f64::NAN).build().map(drop),
                "refresh jitter",
            ),
            (
                RetryPolicy::builder().max_attempts(0).build().map(drop),
                "retry max attempts",
            ),
            (
                RetryPolicy::builder().max_attempts(1001).build().map(drop),
                "retry max attempts",
            ),
            (
                RetryPolicy::builder()
                    .initial_delay(Duration::ZERO)
                    .build()
                    .map(drop),
                "retry initial delay",
            ),
            (
                RetryPolicy::builder()
                    .initial_delay(Duration::from_secs(60))
                    .build()
                    .map(drop),
                "retry initial delay",
            ),
            (
                RetryPolicy::builder()
                    .max_delay(Duration::from_secs(7200))
                    .build()
                    .map(drop),
                "retry max delay",
            ),
            (
                RetryPolicy::builder().multiplier(0.5).build().map(drop),
                "retry multiplier",
            ),
            (
                RetryPolicy::builder()
                    .multiplier(f64::NAN)
                    .build()
                    .map(drop),
                "retry multiplier",
            ),
            (
                RetryPolicy::builder().jitter(1.0).build().map(drop),
                "retry jitter",
            ),
            (
                Config::builder()
                    .request_timeout(Duration::ZERO)
                    .build()
                    .map(drop),
                "request timeout",
            ),
            (
                Config::builder()
                    .request_timeout(Duration::from_secs(3600))
                    .build()
                    .map(drop),
                "request timeout",
            ),
            (
                Config::builder()
                    .clock_skew_tolerance(Duration::from_millis(999))
                    .build()
                    .map(drop),
                "clock skew tolerance",
            ),
            (
                Config::builder()
                    .clock_skew_tolerance(MAX_TOKEN_LIFETIME + Duration::from_secs(1))
                    .build()
                    .map(drop),
                "clock skew tolerance",
            ),
            (
                Config::builder().username_override("").build().map(drop),
                "username override",
            ),
            (
                Config::builder().username_override("a b").build().map(drop),
                "username override",
            ),
        ];
        for (result, field) in cases {
            assert_eq!(result.unwrap_err().field, field);
        }
    }

    #[test]
    fn retry_predicate_overrides_the_flow_classification() {
        let policy = RetryPolicy::builder().retry_if(|_| false).build().unwrap();
        assert!(!policy.is_retryable(&FetchError::TimedOut {
            after: Duration::from_secs(1)
        }));
        assert!(RetryPolicy::default().is_retryable(&FetchError::TimedOut {
            after: Duration::from_secs(1)
        }));
        assert!(format!("{policy:?}").contains("custom"));
    }
}
