//! What to measure: the machine's events and the fan-out reports, mapped to named observations
//!
//! This module names every metric redis-entraid exposes ([`METRICS`]) and turns what a driver
//! already sees into [`Observation`]s: "add 1 to this counter with these labels", "set this
//! gauge", "record this value in this histogram". It records nothing itself and depends on no
//! metrics library: a runtime (or the `redis-entraid` CLI) hands each observation to its
//! recorder, for example the `metrics` facade crate, so Prometheus, OpenTelemetry or StatsD
//! exporters plug in. Like the rest of the core it reads no clock: the instant an event was
//! observed is an argument.
//!
//! Two entry points:
//! - [`observe_event`], stateless: the counters and gauges one [`Event`] moves;
//! - [`MetricsTracker`], for a driver: the same, plus what needs memory across events (fetch
//!   latency needs the fetch's start, the status gauge needs to know whether a token is held,
//!   re-authentication counts and fan-out latency come from [`FanOutReport`] snapshots that
//!   grow while a rotation is under way, the dropped-events counter from a running total).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use redis_entraid_core::event::{Event, Generation};
//! use redis_entraid_core::metrics::{MetricsTracker, Value, ROTATIONS};
//!
//! let start = Instant::now();
//! let mut tracker = MetricsTracker::new("managed identity (IMDS)");
//! tracker.on_fetch_started(start);
//! let arrived = start + Duration::from_millis(40);
//! let refreshed = |g| Event::Refreshed {
//!     generation: Generation(g),
//!     expires_at: arrived + Duration::from_secs(3600),
//!     refresh_at: arrived + Duration::from_secs(2520),
//! };
//! let first = tracker.on_event(&refreshed(1), arrived);
//! // The first token is not a rotation; the second is.
//! assert!(!first.iter().any(|o| o.metric.name == ROTATIONS.name));
//! tracker.on_fetch_started(arrived);
//! let second = tracker.on_event(&refreshed(2), arrived);
//! assert!(second
//!     .iter()
//!     .any(|o| o.metric.name == ROTATIONS.name && o.value == Value::Increment(1)));
//! ```
//!
//! The names, kinds and labels are documented in one table in the README ("Metrics").
//!
//! [`METRICS`]: crate::metrics::METRICS
//! [`Observation`]: crate::metrics::Observation
//! [`observe_event`]: crate::metrics::observe_event
//! [`MetricsTracker`]: crate::metrics::MetricsTracker
//! [`Event`]: crate::event::Event
//! [`FanOutReport`]: crate::fan_out::FanOutReport

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::{FetchError, ReauthErrorKind};
use crate::event::{Action, Event, Generation, Status};
use crate::fan_out::FanOutReport;

/// What kind of instrument a metric is
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up
    Counter,
    /// Set to the current value
    Gauge,
    /// A distribution of recorded values
    Histogram,
}

/// One metric: its name, kind, label names, unit and help text
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricDef {
    /// The metric's name (Prometheus style: `_total` for counters, `_seconds` for times)
    pub name: &'static str,
    /// Counter, gauge or histogram
    pub kind: MetricKind,
    /// The label names every observation of this metric carries, in this order
    pub labels: &'static [&'static str],
    /// The unit of its values (`seconds`, or empty for plain counts)
    pub unit: &'static str,
    /// One line for humans
    pub help: &'static str,
}

/// Token requests that finished, by `source` (the identity flow's name) and `outcome`
/// (`ok`, `not_newer` for a cached token that was not pushed, `error`)
pub const TOKEN_REQUESTS: MetricDef = MetricDef {
    name: "redis_entraid_token_requests_total",
    kind: MetricKind::Counter,
    labels: &["source", "outcome"],
    unit: "",
    help: "Token requests that finished, by identity source and outcome (ok, not_newer, error)",
};

/// Failed token requests by `kind` (`transport`, `response`, `timed_out`, `token`,
/// `no_lifetime`, `already_expired`) and `retryable` (`true`, `false`)
pub const FETCH_FAILURES: MetricDef = MetricDef {
    name: "redis_entraid_fetch_failures_total",
    kind: MetricKind::Counter,
    labels: &["kind", "retryable"],
    unit: "",
    help:
        "Failed token requests, by failure kind and whether the retry policy judged them retryable",
};

/// Failure streaks that reached the retry policy's `max_attempts` (the machine keeps trying)
pub const RETRIES_EXHAUSTED: MetricDef = MetricDef {
    name: "redis_entraid_retries_exhausted_total",
    kind: MetricKind::Counter,
    labels: &[],
    unit: "",
    help: "Failure streaks that reached max_attempts (refreshing goes on at max_delay)",
};

/// New tokens that replaced an earlier one (the first token is not a rotation)
pub const ROTATIONS: MetricDef = MetricDef {
    name: "redis_entraid_rotations_total",
    kind: MetricKind::Counter,
    labels: &[],
    unit: "",
    help: "New tokens pushed to connections in place of an earlier one",
};

/// Tokens that expired before a replacement arrived
pub const EXPIRATIONS: MetricDef = MetricDef {
    name: "redis_entraid_token_expirations_total",
    kind: MetricKind::Counter,
    labels: &[],
    unit: "",
    help: "Tokens that expired before a replacement arrived (the server closes connections then)",
};

/// Connection re-authentications by `outcome` (`ok`, `failed`)
pub const REAUTHS: MetricDef = MetricDef {
    name: "redis_entraid_reauth_total",
    kind: MetricKind::Counter,
    labels: &["outcome"],
    unit: "",
    help: "Connection re-authentications with a new token, by outcome (ok, failed)",
};

/// Re-authentication failures the machine was told of, by `kind` (`wrongpass`, `noauth`,
/// `connection`, `other`)
pub const REAUTH_REJECTIONS: MetricDef = MetricDef {
    name: "redis_entraid_reauth_failures_total",
    kind: MetricKind::Counter,
    labels: &["kind"],
    unit: "",
    help: "Re-authentication failures reported to the provider, by kind (wrongpass, noauth, connection, other)",
};

/// Events a subscriber lost because its queue was full
pub const EVENTS_DROPPED: MetricDef = MetricDef {
    name: "redis_entraid_events_dropped_total",
    kind: MetricKind::Counter,
    labels: &[],
    unit: "",
    help: "Provider events dropped because a subscriber's queue was full",
};

/// Seconds of validity the current token has left (0 when expired or none)
pub const TOKEN_SECONDS_LEFT: MetricDef = MetricDef {
    name: "redis_entraid_token_remaining_seconds",
    kind: MetricKind::Gauge,
    labels: &[],
    unit: "seconds",
    help: "Seconds the current token stays valid (0 when there is none or it expired)",
};

/// The provider's status as a state set: 1 for the current `state` (`starting`, `valid`,
/// `retrying`, `expired`, `stopped`), 0 for the others
pub const STATUS: MetricDef = MetricDef {
    name: "redis_entraid_status",
    kind: MetricKind::Gauge,
    labels: &["state"],
    unit: "",
    help: "1 for the provider's current state (starting, valid, retrying, expired, stopped), 0 for the others",
};

/// Duration of token requests, start to answer, by `source` and `outcome` (`ok`, `error`)
pub const FETCH_LATENCY: MetricDef = MetricDef {
    name: "redis_entraid_fetch_duration_seconds",
    kind: MetricKind::Histogram,
    labels: &["source", "outcome"],
    unit: "seconds",
    help: "Token request duration from start to answer, by identity source and outcome",
};

/// Per rotation: from the token's arrival until the last connection's `AUTH` OK
pub const REAUTH_FAN_OUT_LATENCY: MetricDef = MetricDef {
    name: "redis_entraid_reauth_fanout_seconds",
    kind: MetricKind::Histogram,
    labels: &[],
    unit: "seconds",
    help: "Per rotation, from the new token's arrival to the last connection's AUTH OK",
};

/// Every metric, in the order of the README's table
pub const METRICS: [MetricDef; 12] = [
    TOKEN_REQUESTS,
    FETCH_FAILURES,
    RETRIES_EXHAUSTED,
    ROTATIONS,
    EXPIRATIONS,
    REAUTHS,
    REAUTH_REJECTIONS,
    EVENTS_DROPPED,
    TOKEN_SECONDS_LEFT,
    STATUS,
    FETCH_LATENCY,
    REAUTH_FAN_OUT_LATENCY,
];

/// The values of [`STATUS`]'s `state` label
pub const STATUS_STATES: [&str; 5] = ["starting", "valid", "retrying", "expired", "stopped"];

/// What to do to a metric
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// Add to a counter
    Increment(u64),
    /// Set a gauge
    Set(f64),
    /// Record a value in a histogram
    Record(f64),
}

/// One change to one metric with its labels (in [`MetricDef::labels`] order)
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Which metric
    pub metric: &'static MetricDef,
    /// Label name and value pairs, in the metric's label order
    pub labels: Vec<(&'static str, String)>,
    /// What to do
    pub value: Value,
}

impl Observation {
    fn new(metric: &'static MetricDef, value: Value) -> Self {
        Self {
            metric,
            labels: Vec::new(),
            value,
        }
    }

    fn label(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((name, value.into()));
        self
    }

    /// The value of label `name`, if it has one
    pub fn label_value(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The `kind` label of [`FETCH_FAILURES`] for `error`
pub fn fetch_failure_kind(error: &FetchError) -> &'static str {
    match error {
        FetchError::Transport(_) => "transport",
        FetchError::Response(_) => "response",
        FetchError::TimedOut { .. } => "timed_out",
        FetchError::Token(_) => "token",
        FetchError::NoLifetime => "no_lifetime",
        FetchError::AlreadyExpired => "already_expired",
    }
}

fn reauth_kind(kind: &ReauthErrorKind) -> &'static str {
    match kind {
        ReauthErrorKind::WrongPass => "wrongpass",
        ReauthErrorKind::NoAuth => "noauth",
        ReauthErrorKind::Connection => "connection",
        ReauthErrorKind::Other => "other",
    }
}

/// The [`STATUS`] state name of `status`
pub fn status_state(status: &Status) -> &'static str {
    match status {
        Status::Starting { .. } => "starting",
        Status::Valid { .. } => "valid",
        Status::Retrying { .. } => "retrying",
        Status::Expired { .. } => "expired",
        Status::Stopped => "stopped",
    }
}

fn status_set(current: &str) -> impl Iterator<Item = Observation> + '_ {
    STATUS_STATES.iter().map(move |state| {
        Observation::new(&STATUS, Value::Set(f64::from(u8::from(*state == current))))
            .label("state", *state)
    })
}

fn seconds_left(expires_at: Instant, now: Instant) -> Observation {
    Observation::new(
        &TOKEN_SECONDS_LEFT,
        Value::Set(expires_at.saturating_duration_since(now).as_secs_f64()),
    )
}

/// The gauges a [`Status`] read at `now` sets: [`STATUS`] (one observation per state) and
/// [`TOKEN_SECONDS_LEFT`]
///
/// For drivers that read `TokenManager::status()` after each drain, and for periodic
/// refreshes of the seconds-left gauge between events.
pub fn observe_status(status: &Status, now: Instant) -> Vec<Observation> {
    let left = match status {
        Status::Valid { expires_at, .. } | Status::Retrying { expires_at, .. } => {
            seconds_left(*expires_at, now)
        }
        _ => Observation::new(&TOKEN_SECONDS_LEFT, Value::Set(0.0)),
    };
    status_set(status_state(status))
        .chain(std::iter::once(left))
        .collect()
}

/// The counters and gauges `event`, observed at `now`, moves, for a provider whose identity
/// is `source` (its name, e.g. `TokenSource::name()`)
///
/// Stateless, so a few things are left to [`MetricsTracker`]: the fetch-latency histogram
/// (needs the fetch's start), the status after a failure (`retrying` or `starting` depends on
/// whether a token is held; this function leaves the status gauge alone then), re-auth
/// successes and fan-out latency (from [`FanOutReport`]s), and dropped events.
pub fn observe_event(event: &Event, source: &str, now: Instant) -> Vec<Observation> {
    let requests = |outcome: &str| {
        Observation::new(&TOKEN_REQUESTS, Value::Increment(1))
            .label("source", source)
            .label("outcome", outcome)
    };
    let mut out = Vec::new();
    match event {
        Event::Refreshed {
            generation,
            expires_at,
            ..
        } => {
            out.push(requests("ok"));
            if generation.0 > 1 {
                out.push(Observation::new(&ROTATIONS, Value::Increment(1)));
            }
            out.push(seconds_left(*expires_at, now));
            out.extend(status_set("valid"));
        }
        Event::TokenNotNewer { expires_at, .. } => {
            out.push(requests("not_newer"));
            out.push(seconds_left(*expires_at, now));
            out.extend(status_set("valid"));
        }
        Event::FetchFailed {
            error, retryable, ..
        } => {
            out.push(requests("error"));
            out.push(
                Observation::new(&FETCH_FAILURES, Value::Increment(1))
                    .label("kind", fetch_failure_kind(error))
                    .label("retryable", if *retryable { "true" } else { "false" }),
            );
        }
        Event::RetriesExhausted { .. } => {
            out.push(Observation::new(&RETRIES_EXHAUSTED, Value::Increment(1)));
        }
        Event::Expired { .. } => {
            out.push(Observation::new(&EXPIRATIONS, Value::Increment(1)));
            out.push(Observation::new(&TOKEN_SECONDS_LEFT, Value::Set(0.0)));
            out.extend(status_set("expired"));
        }
        Event::ReauthFailed { error, .. } => {
            out.push(
                Observation::new(&REAUTH_REJECTIONS, Value::Increment(1))
                    .label("kind", reauth_kind(&error.kind)),
            );
        }
        Event::ClockSkew { .. } => {}
        Event::Stopped => {
            out.push(Observation::new(&TOKEN_SECONDS_LEFT, Value::Set(0.0)));
            out.extend(status_set("stopped"));
        }
    }
    out
}

/// One rotation as the tracker follows it through growing fan-out snapshots
#[derive(Debug, Default)]
struct RotationSeen {
    connections: usize,
    failed_attempts: u64,
    max: Duration,
    /// The fan-out latency was recorded; nothing more is recorded for this rotation
    settled: bool,
}

/// Follows one provider's events, fetches and fan-out reports, and produces every observation
/// of [`METRICS`]
///
/// Feed it from a place that sees every drained action or event ([`on_action`], or
/// [`on_fetch_started`] + [`on_event`]), the fan-out reports whenever convenient
/// ([`on_fan_out`], with the full list each time: it counts only what is new), the running
/// total of dropped events ([`on_dropped_events`]), and optionally [`tick`] to keep the
/// seconds-left gauge current between events.
///
/// Fan-out latency is recorded once per rotation, when the rotation is over: when a newer
/// rotation shows up in the reports, or when the token it replaced has expired (a connection
/// not re-authenticated by then has been closed by the server), or at [`Event::Stopped`].
///
/// [`on_action`]: Self::on_action
/// [`on_fetch_started`]: Self::on_fetch_started
/// [`on_event`]: Self::on_event
/// [`on_fan_out`]: Self::on_fan_out
/// [`on_dropped_events`]: Self::on_dropped_events
/// [`tick`]: Self::tick
#[derive(Debug)]
pub struct MetricsTracker {
    source: String,
    fetch_started: Option<Instant>,
    /// Current token's generation and expiry
    token: Option<(Generation, Instant)>,
    expired: bool,
    /// Expiry of the token each generation replaced, to know when its rotation is over
    replaced_expiry: BTreeMap<Generation, Instant>,
    rotations: BTreeMap<Generation, RotationSeen>,
    dropped_events: u64,
}

/// How many rotations the tracker remembers (as many as a fan-out log keeps)
const KEPT_ROTATIONS: usize = 64;

impl MetricsTracker {
    /// A tracker for a provider whose identity is named `source`
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            fetch_started: None,
            token: None,
            expired: false,
            replaced_expiry: BTreeMap::new(),
            rotations: BTreeMap::new(),
            dropped_events: 0,
        }
    }

    /// Renames the source label from now on (e.g. once the default chain found its winner)
    pub fn set_source(&mut self, source: impl Into<String>) {
        self.source = source.into();
    }

    /// The current `source` label
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A token request started at `now` (the driver performs [`Action::FetchToken`])
    pub fn on_fetch_started(&mut self, now: Instant) {
        self.fetch_started = Some(now);
    }

    /// Everything a drained action observed at `now` moves: a fetch start is remembered, an
    /// event is mapped; `Reauthenticate` and `Wait` move nothing
    pub fn on_action(&mut self, action: &Action, now: Instant) -> Vec<Observation> {
        match action {
            Action::FetchToken { .. } => {
                self.on_fetch_started(now);
                Vec::new()
            }
            Action::Event(event) => self.on_event(event, now),
            Action::Reauthenticate { .. } | Action::Wait { .. } => Vec::new(),
        }
    }

    /// Everything `event`, observed at `now`, moves
    pub fn on_event(&mut self, event: &Event, now: Instant) -> Vec<Observation> {
        let mut out = observe_event(event, &self.source, now);
        let outcome = match event {
            Event::Refreshed { .. } | Event::TokenNotNewer { .. } => Some("ok"),
            Event::FetchFailed { .. } => Some("error"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            if let Some(started) = self.fetch_started.take() {
                out.push(
                    Observation::new(
                        &FETCH_LATENCY,
                        Value::Record(now.saturating_duration_since(started).as_secs_f64()),
                    )
                    .label("source", self.source.clone())
                    .label("outcome", outcome),
                );
            }
        }
        match event {
            Event::Refreshed {
                generation,
                expires_at,
                ..
            } => {
                if let Some((_, old_expiry)) = self.token {
                    if !self.expired {
                        self.replaced_expiry.insert(*generation, old_expiry);
                        while self.replaced_expiry.len() > KEPT_ROTATIONS {
                            self.replaced_expiry.pop_first();
                        }
                    }
                }
                self.token = Some((*generation, *expires_at));
                self.expired = false;
            }
            Event::FetchFailed { .. } => {
                let state = match (self.token, self.expired) {
                    (None, _) => "starting",
                    (Some(_), true) => "expired",
                    (Some(_), false) => "retrying",
                };
                out.extend(status_set(state));
            }
            Event::Expired { .. } => self.expired = true,
            Event::Stopped => {
                self.token = None;
                out.extend(self.settle(|_, _| true));
            }
            _ => {}
        }
        out.extend(self.settle_over(now));
        out
    }

    /// The seconds-left gauge at `now`, and fan-out latencies of rotations that are over
    pub fn tick(&mut self, now: Instant) -> Vec<Observation> {
        let mut out = vec![match (self.token, self.expired) {
            (Some((_, expires_at)), false) => seconds_left(expires_at, now),
            _ => Observation::new(&TOKEN_SECONDS_LEFT, Value::Set(0.0)),
        }];
        out.extend(self.settle_over(now));
        out
    }

    /// Re-authentication counts and fan-out latencies from `reports` (the whole current list,
    /// e.g. `FanOutLog::reports()`), observed at `now`; only what changed since the last call
    /// is counted
    pub fn on_fan_out(&mut self, reports: &[FanOutReport], now: Instant) -> Vec<Observation> {
        let mut out = Vec::new();
        for report in reports {
            // Counts move even after the rotation's latency was recorded: a late retry of a
            // refused AUTH still happened.
            let seen = self.rotations.entry(report.generation).or_default();
            let ok = report.connections.saturating_sub(seen.connections);
            let failed = report.failed_attempts.saturating_sub(seen.failed_attempts);
            if ok > 0 {
                out.push(
                    Observation::new(&REAUTHS, Value::Increment(ok as u64)).label("outcome", "ok"),
                );
            }
            if failed > 0 {
                out.push(
                    Observation::new(&REAUTHS, Value::Increment(failed)).label("outcome", "failed"),
                );
            }
            seen.connections = seen.connections.max(report.connections);
            seen.failed_attempts = seen.failed_attempts.max(report.failed_attempts);
            seen.max = seen.max.max(report.max);
        }
        while self.rotations.len() > KEPT_ROTATIONS {
            self.rotations.pop_first();
        }
        // A newer rotation in the reports means every older one is over.
        if let Some(newest) = reports.iter().map(|r| r.generation).max() {
            out.extend(self.settle(|generation, _| generation < newest));
        }
        out.extend(self.settle_over(now));
        out
    }

    /// Events dropped so far in total (e.g. `Provider::dropped_events()`); counts the increase
    pub fn on_dropped_events(&mut self, total: u64) -> Vec<Observation> {
        let new = total.saturating_sub(self.dropped_events);
        self.dropped_events = self.dropped_events.max(total);
        if new == 0 {
            return Vec::new();
        }
        vec![Observation::new(&EVENTS_DROPPED, Value::Increment(new))]
    }

    /// Settles rotations whose replaced token has expired by `now`
    fn settle_over(&mut self, now: Instant) -> Vec<Observation> {
        let replaced = self.replaced_expiry.clone();
        self.settle(|generation, _| replaced.get(&generation).is_some_and(|exp| *exp <= now))
    }

    fn settle(&mut self, over: impl Fn(Generation, &RotationSeen) -> bool) -> Vec<Observation> {
        let mut out = Vec::new();
        for (generation, seen) in &mut self.rotations {
            if seen.settled || seen.connections == 0 || !over(*generation, seen) {
                continue;
            }
            seen.settled = true;
            out.push(Observation::new(
                &REAUTH_FAN_OUT_LATENCY,
                Value::Record(seen.max.as_secs_f64()),
            ));
        }
        out
    }
}

/// A driver's recorder: feeds the `metrics` facade with what the driver sees
///
/// The one place where observations leave the core. Every runtime's driver calls
/// [`action`](Recorder::action) for each drained action and [`idle`](Recorder::idle) before it
/// sleeps; with the core's `metrics` feature (which each runtime's `metrics` feature turns on)
/// they reach the facade, and `idle` caps the sleep at [`GAUGE_INTERVAL`] so the seconds-left
/// gauge stays current. Without the feature both are no-ops, so drivers need no `cfg`. Without
/// an installed recorder (Prometheus, OpenTelemetry and StatsD exporters install one) the
/// facade drops everything.
#[derive(Debug)]
pub struct Recorder {
    #[cfg(feature = "metrics")]
    tracker: MetricsTracker,
    #[cfg(feature = "metrics")]
    fan_out: Option<std::sync::Arc<crate::fan_out::FanOutLog>>,
}

/// How long a driver recording metrics sleeps at most, so gauges stay current
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

impl Recorder {
    /// A recorder for a provider whose identity is named `source`, reading re-authentication
    /// reports from `fan_out` when the runtime keeps one; describes every metric and exports the
    /// label-less counters at 0, so dashboards and alerts work before anything happened
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(
        source: impl Into<String>,
        fan_out: Option<std::sync::Arc<crate::fan_out::FanOutLog>>,
    ) -> Self {
        #[cfg(feature = "metrics")]
        describe_all();
        Self {
            #[cfg(feature = "metrics")]
            tracker: MetricsTracker::new(source),
            #[cfg(feature = "metrics")]
            fan_out,
        }
    }

    /// Records what a drained `action` moves
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn action(&mut self, action: &Action, now: Instant) {
        #[cfg(feature = "metrics")]
        record(&self.tracker.on_action(action, now));
    }

    /// Records the gauges at `now`, the events dropped so far (`dropped_events`, a running
    /// total) and the re-authentications reported since the last call; returns when the driver
    /// should wake next (`until`, or sooner to refresh the gauges)
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn idle(
        &mut self,
        now: Instant,
        dropped_events: u64,
        until: Option<Instant>,
    ) -> Option<Instant> {
        #[cfg(feature = "metrics")]
        let until = {
            record(&self.tracker.tick(now));
            record(&self.tracker.on_dropped_events(dropped_events));
            if let Some(log) = &self.fan_out {
                record(&self.tracker.on_fan_out(&log.reports(), now));
            }
            let refresh = now + GAUGE_INTERVAL;
            Some(until.map_or(refresh, |until| until.min(refresh)))
        };
        until
    }
}

/// Hands `observations` to the `metrics` facade
#[cfg(feature = "metrics")]
pub fn record(observations: &[Observation]) {
    for o in observations {
        let labels: Vec<metrics::Label> = o
            .labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.clone()))
            .collect();
        match o.value {
            Value::Increment(n) => metrics::counter!(o.metric.name, labels).increment(n),
            Value::Set(v) => metrics::gauge!(o.metric.name, labels).set(v),
            Value::Record(v) => metrics::histogram!(o.metric.name, labels).record(v),
        }
    }
}

/// Describes every metric of [`METRICS`] to the installed recorder, and exports the label-less
/// counters at 0
#[cfg(feature = "metrics")]
pub fn describe_all() {
    for m in METRICS {
        if m.kind == MetricKind::Counter && m.labels.is_empty() {
            metrics::counter!(m.name).absolute(0);
        }
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}
