//! The synchronous half of every runtime's `Provider` handle, written once
//!
//! A runtime's handle reads the [`Observed`] state its driver publishes and hands
//! [`Command`]s to the driver; how it stores the one and delivers the other is the runtime's
//! (a `watch` channel, a mutex and a condition variable, an event listener...). It says how
//! through [`ProviderParts`], and [`provider_handle!`](crate::provider_handle) writes the
//! methods that only read or send (`builder`, `credentials`, `current`, `credentials_age`,
//! `status`, `last_error`, `config`, `refresh_now`, `report_reauth`) and its `Debug`, with
//! their documentation, so the three runtimes cannot drift apart on them.

use std::time::Instant;

use crate::command::Command;
use crate::config::Config;
use crate::observed::Observed;

/// What a runtime's provider handle is made of, as far as its read-and-send methods care
pub trait ProviderParts {
    /// Reads the state the driver published last
    fn observe<T>(&self, read: impl FnOnce(&Observed) -> T) -> T;

    /// Hands `command` to the driver without waiting (the runtime's full-queue policy: see
    /// [`Signals`](crate::command::Signals))
    fn deliver(&self, command: Command);

    /// The provider's configuration
    fn config(&self) -> &Config;

    /// The clock the driver stamps tokens with
    fn now(&self) -> Instant;
}

/// Writes a runtime `Provider`'s `builder()`, its read-and-send methods and its `Debug`;
/// `$parts` names the field (a smart pointer to a [`ProviderParts`]) they go through, `$builder`
/// the runtime's builder type (`Default`)
///
/// ```
/// use std::sync::Arc;
/// use std::time::Instant;
/// use redis_entraid_core::command::Command;
/// use redis_entraid_core::config::Config;
/// use redis_entraid_core::handle::ProviderParts;
/// use redis_entraid_core::observed::Observed;
///
/// struct Parts { state: Observed, config: Config }
///
/// impl ProviderParts for Parts {
///     fn observe<T>(&self, read: impl FnOnce(&Observed) -> T) -> T { read(&self.state) }
///     fn deliver(&self, _command: Command) {}
///     fn config(&self) -> &Config { &self.config }
///     fn now(&self) -> Instant { unreachable!("a runtime reads its clock here") }
/// }
///
/// /// A builder
/// #[derive(Default)]
/// pub struct ProviderBuilder;
///
/// /// A handle
/// pub struct Provider { inner: Arc<Parts> }
///
/// redis_entraid_core::provider_handle!(Provider, ProviderBuilder, inner);
///
/// let provider = Provider { inner: Arc::new(Parts { state: Observed::default(), config: Config::default() }) };
/// assert!(provider.credentials().is_none());
/// ```
#[macro_export]
macro_rules! provider_handle {
    ($provider:ident, $builder:ident, $parts:ident) => {
        impl ::std::fmt::Debug for $provider {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(::std::stringify!($provider))
                    .field("status", &self.status())
                    .finish_non_exhaustive()
            }
        }

        impl $provider {
            /// A builder with the default configuration and startup policy
            pub fn builder() -> $builder {
                <$builder as ::std::default::Default>::default()
            }

            /// The latest credentials, if a token has arrived (check [`status`](Self::status) for
            /// whether they expired)
            pub fn credentials(&self) -> ::std::option::Option<$crate::token::Credentials> {
                $crate::handle::ProviderParts::observe(&*self.$parts, |o| {
                    o.latest().map(|(_, c)| c.clone())
                })
            }

            /// The latest credentials and their generation
            pub fn current(
                &self,
            ) -> ::std::option::Option<($crate::event::Generation, $crate::token::Credentials)>
            {
                $crate::handle::ProviderParts::observe(&*self.$parts, |o| o.latest().cloned())
            }

            /// How long ago the latest credentials arrived
            pub fn credentials_age(&self) -> ::std::option::Option<::std::time::Duration> {
                let parts = &*self.$parts;
                let received = $crate::handle::ProviderParts::observe(parts, |o| o.received())?;
                ::std::option::Option::Some(
                    $crate::handle::ProviderParts::now(parts).saturating_duration_since(received),
                )
            }

            /// Where the machine stands
            pub fn status(&self) -> $crate::event::Status {
                $crate::handle::ProviderParts::observe(&*self.$parts, |o| o.status())
            }

            /// The last fetch error since the last success, if any
            pub fn last_error(&self) -> ::std::option::Option<$crate::error::FetchError> {
                $crate::handle::ProviderParts::observe(&*self.$parts, |o| o.last_error().cloned())
            }

            /// The configuration
            pub fn config(&self) -> &$crate::config::Config {
                $crate::handle::ProviderParts::config(&*self.$parts)
            }

            /// Fetches a new token as soon as the minimum refresh interval allows
            ///
            /// Never waits, and requests coalesce: any number of calls before the driver gets to
            /// them count as one (the machine would coalesce them anyway).
            pub fn refresh_now(&self) {
                $crate::handle::ProviderParts::deliver(
                    &*self.$parts,
                    $crate::command::Command::RefreshNow,
                );
            }

            /// Reports how a connection took the credentials of `generation`; a rejection of the
            /// token (`WRONGPASS`, `NOAUTH`) makes the driver fetch a fresh one
            ///
            /// Never waits. Reports queue up to 64 deep; beyond that (many connections failing at
            /// once, faster than the driver reads) a report is dropped, with its
            /// [`Event::ReauthFailed`]($crate::event::Event::ReauthFailed), but a dropped rejection
            /// still makes the driver fetch a fresh token. Only failures for the current generation
            /// change anything.
            pub fn report_reauth(
                &self,
                generation: $crate::event::Generation,
                result: ::std::result::Result<(), $crate::error::ReauthError>,
            ) {
                $crate::handle::ProviderParts::deliver(
                    &*self.$parts,
                    $crate::command::Command::Reauth { generation, result },
                );
            }
        }
    };
}

/// Queue length of each event receiver unless a builder sets another
pub const DEFAULT_EVENT_CAPACITY: usize = 256;

/// What every runtime's `ProviderBuilder` collects before it starts a provider
#[derive(Clone, Debug, Default)]
pub struct ProviderSettings {
    /// Refresh, retry and timeout settings
    pub config: Config,
    /// What building waits for
    pub startup: crate::startup::Startup,
    /// Queue length of each event receiver (`None`: [`DEFAULT_EVENT_CAPACITY`])
    pub event_capacity: Option<usize>,
    /// TLS settings of the default HTTP client
    pub http: crate::identity::HttpConfig,
}

impl ProviderSettings {
    /// The event queue length to use (at least one)
    pub fn event_capacity(&self) -> usize {
        self.event_capacity.unwrap_or(DEFAULT_EVENT_CAPACITY).max(1)
    }
}

/// Writes a runtime `ProviderBuilder`'s setters into its `impl` block; `$settings` names its
/// [`ProviderSettings`] field
#[macro_export]
macro_rules! provider_builder_methods {
    ($settings:ident) => {
        /// Refresh, retry and timeout settings
        pub fn config(mut self, config: $crate::config::Config) -> Self {
            self.$settings.config = config;
            self
        }

        /// What [`build`](Self::build) waits for
        pub fn startup(mut self, startup: $crate::startup::Startup) -> Self {
            self.$settings.startup = startup;
            self
        }

        /// Queue length of each `Provider::events` receiver (default 256); a subscriber that
        /// falls further behind loses its oldest events rather than slowing anyone down
        /// (`Provider::dropped_events` counts them)
        pub fn event_capacity(mut self, capacity: usize) -> Self {
            self.$settings.event_capacity = ::std::option::Option::Some(capacity);
            self
        }

        /// TLS settings for identity requests made by [`build`](Self::build) (extra root CAs;
        /// `SSL_CERT_FILE` is honoured anyway); a fetcher of your own brings its own client
        pub fn http(mut self, http: $crate::identity::HttpConfig) -> Self {
            self.$settings.http = http;
            self
        }
    };
}
