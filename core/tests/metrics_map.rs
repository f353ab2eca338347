//! Unit behaviour of core modules, kept outside `core/src` because these tests read the clock
//! for a starting instant (only differences between instants matter) and the core never does
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod metrics {

    use redis_entraid_core::error::FetchError;
    use redis_entraid_core::event::{Action, Event, Generation, Status};
    use std::time::{Duration, Instant};

    use redis_entraid_core::error::{ReauthError, ResponseError, TransportError};
    use redis_entraid_core::fan_out::FanOutLog;
    use redis_entraid_core::metrics::*;

    /// Any instant will do (only differences matter); the test, not the core, reads the clock
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn refreshed(generation: u64, at: Instant, ttl_s: u64) -> Event {
        Event::Refreshed {
            generation: Generation(generation),
            expires_at: at + Duration::from_secs(ttl_s),
            refresh_at: at + Duration::from_secs(ttl_s * 7 / 10),
        }
    }

    fn failed(at: Instant, error: FetchError, retryable: bool) -> Event {
        Event::FetchFailed {
            attempt: 1,
            error,
            retryable,
            next_attempt_at: at + Duration::from_secs(1),
        }
    }

    fn find<'a>(out: &'a [Observation], metric: &MetricDef) -> Vec<&'a Observation> {
        out.iter()
            .filter(|o| o.metric.name == metric.name)
            .collect()
    }

    fn state(out: &[Observation]) -> Option<&str> {
        find(out, &STATUS)
            .into_iter()
            .find(|o| o.value == Value::Set(1.0))
            .and_then(|o| o.label_value("state"))
    }

    #[test]
    fn every_metric_has_a_unique_prometheus_style_name_and_help() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            assert!(m.name.starts_with("redis_entraid_"), "{}", m.name);
            assert_eq!(
                m.kind == MetricKind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert_eq!(
                m.unit == "seconds",
                m.name.ends_with("_seconds"),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty());
        }
    }

    #[test]
    fn observations_carry_exactly_their_metrics_labels_in_order() {
        let t = t0();
        let mut tracker = MetricsTracker::new("IMDS");
        let mut all = Vec::new();
        tracker.on_fetch_started(t);
        all.extend(tracker.on_event(&refreshed(1, t, 60), t));
        tracker.on_fetch_started(t);
        all.extend(tracker.on_event(
            &failed(t, TransportError::new("down").into(), true),
            t + Duration::from_millis(5),
        ));
        all.extend(tracker.on_event(
            &Event::ReauthFailed {
                generation: Generation(1),
                error: ReauthError::from_server_reply("WRONGPASS invalid"),
            },
            t,
        ));
        all.extend(tracker.on_event(
            &Event::Expired {
                generation: Generation(1),
            },
            t,
        ));
        for o in &all {
            let names: Vec<_> = o.labels.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, o.metric.labels, "{}", o.metric.name);
            let value_fits = matches!(
                (o.metric.kind, o.value),
                (MetricKind::Counter, Value::Increment(_))
                    | (MetricKind::Gauge, Value::Set(_))
                    | (MetricKind::Histogram, Value::Record(_))
            );
            assert!(value_fits, "{o:?}");
        }
    }

    #[test]
    fn a_refresh_counts_a_request_sets_the_gauges_and_rotations_start_at_the_second_token() {
        let t = t0();
        let first = observe_event(&refreshed(1, t, 3600), "IMDS", t + Duration::from_secs(10));
        let requests = find(&first, &TOKEN_REQUESTS);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].label_value("source"), Some("IMDS"));
        assert_eq!(requests[0].label_value("outcome"), Some("ok"));
        assert!(find(&first, &ROTATIONS).is_empty());
        assert_eq!(
            find(&first, &TOKEN_SECONDS_LEFT)[0].value,
            Value::Set(3590.0)
        );
        assert_eq!(state(&first), Some("valid"));
        assert_eq!(find(&first, &STATUS).len(), STATUS_STATES.len());

        let second = observe_event(&refreshed(2, t, 3600), "IMDS", t);
        assert_eq!(find(&second, &ROTATIONS)[0].value, Value::Increment(1));
    }

    #[test]
    fn a_failure_is_counted_by_kind_and_retryability() {
        let t = t0();
        let cases: [(FetchError, bool, &str); 4] = [
            (TransportError::new("refused").into(), true, "transport"),
            (
                ResponseError::new("invalid_client", false).into(),
                false,
                "response",
            ),
            (
                FetchError::TimedOut {
                    after: Duration::from_secs(1),
                },
                true,
                "timed_out",
            ),
            (FetchError::AlreadyExpired, false, "already_expired"),
        ];
        for (error, retryable, kind) in cases {
            let out = observe_event(&failed(t, error, retryable), "client secret", t);
            let failure = find(&out, &FETCH_FAILURES);
            assert_eq!(failure[0].label_value("kind"), Some(kind));
            assert_eq!(
                failure[0].label_value("retryable"),
                Some(if retryable { "true" } else { "false" })
            );
            assert_eq!(
                find(&out, &TOKEN_REQUESTS)[0].label_value("outcome"),
                Some("error")
            );
        }
    }

    #[test]
    fn the_status_after_a_failure_depends_on_whether_a_token_is_held() {
        let t = t0();
        let mut tracker = MetricsTracker::new("IMDS");
        let error = || failed(t, TransportError::new("down").into(), true);
        assert_eq!(state(&tracker.on_event(&error(), t)), Some("starting"));
        tracker.on_event(&refreshed(1, t, 60), t);
        assert_eq!(state(&tracker.on_event(&error(), t)), Some("retrying"));
        let expired = tracker.on_event(
            &Event::Expired {
                generation: Generation(1),
            },
            t,
        );
        assert_eq!(state(&expired), Some("expired"));
        assert_eq!(find(&expired, &EXPIRATIONS)[0].value, Value::Increment(1));
        assert_eq!(
            find(&expired, &TOKEN_SECONDS_LEFT)[0].value,
            Value::Set(0.0)
        );
        assert_eq!(state(&tracker.on_event(&error(), t)), Some("expired"));
        assert_eq!(
            state(&tracker.on_event(&Event::Stopped, t)),
            Some("stopped")
        );
    }

    #[test]
    fn fetch_latency_runs_from_the_fetch_action_to_its_answer() {
        let t = t0();
        let mut tracker = MetricsTracker::new("workload identity");
        let fetch = Action::FetchToken {
            id: redis_entraid_core::event::RequestId(1),
            attempt: 1,
            deadline: t + Duration::from_secs(10),
        };
        assert!(tracker.on_action(&fetch, t).is_empty());
        let out = tracker.on_action(
            &Action::Event(refreshed(1, t, 60)),
            t + Duration::from_millis(250),
        );
        let latency = find(&out, &FETCH_LATENCY);
        assert_eq!(latency.len(), 1);
        assert_eq!(latency[0].value, Value::Record(0.25));
        assert_eq!(latency[0].label_value("source"), Some("workload identity"));
        assert_eq!(latency[0].label_value("outcome"), Some("ok"));
        // No fetch started since: an event alone records no latency.
        let again = tracker.on_event(&refreshed(2, t, 60), t + Duration::from_secs(1));
        assert!(find(&again, &FETCH_LATENCY).is_empty());
    }

    #[test]
    fn reauth_counts_only_what_is_new_in_each_snapshot() {
        let t = t0();
        let mut tracker = MetricsTracker::new("IMDS");
        let log = FanOutLog::default();
        log.record_ok(Generation(2), Duration::from_millis(3), None);
        log.record_failure(Generation(2));
        let out = tracker.on_fan_out(&log.reports(), t);
        let reauths = find(&out, &REAUTHS);
        assert_eq!(reauths.len(), 2);
        assert_eq!(reauths[0].value, Value::Increment(1));
        assert_eq!(reauths[0].label_value("outcome"), Some("ok"));
        assert_eq!(reauths[1].label_value("outcome"), Some("failed"));
        // The same snapshot again counts nothing; two more connections count two.
        assert!(find(&tracker.on_fan_out(&log.reports(), t), &REAUTHS).is_empty());
        log.record_ok(Generation(2), Duration::from_millis(7), None);
        log.record_ok(Generation(2), Duration::from_millis(5), None);
        let more = tracker.on_fan_out(&log.reports(), t);
        assert_eq!(find(&more, &REAUTHS)[0].value, Value::Increment(2));
    }

    #[test]
    fn fan_out_latency_is_recorded_once_when_a_newer_rotation_appears() {
        let t = t0();
        let mut tracker = MetricsTracker::new("IMDS");
        let log = FanOutLog::default();
        log.record_ok(Generation(2), Duration::from_millis(3), None);
        log.record_ok(Generation(2), Duration::from_millis(9), None);
        assert!(find(
            &tracker.on_fan_out(&log.reports(), t),
            &REAUTH_FAN_OUT_LATENCY
        )
        .is_empty());
        log.record_ok(Generation(3), Duration::from_millis(4), None);
        let out = tracker.on_fan_out(&log.reports(), t);
        let latency = find(&out, &REAUTH_FAN_OUT_LATENCY);
        assert_eq!(latency.len(), 1);
        assert_eq!(latency[0].value, Value::Record(0.009));
        assert!(find(
            &tracker.on_fan_out(&log.reports(), t),
            &REAUTH_FAN_OUT_LATENCY
        )
        .is_empty());
    }

    #[test]
    fn reauths_after_a_rotation_settled_are_still_counted() {
        let t = t0();
        let mut tracker = MetricsTracker::new("IMDS");
        let log = FanOutLog::default();
        log.record_ok(Generation(2), Duration::from_millis(3), None);
        log.record_ok(Generation(3), Duration::from_millis(3), None);
        tracker.on_fan_out(&log.reports(), t);
        log.record_failure(Generation(2));
        let out = tracker.on_fan_out(&log.reports(), t);
        let failed = find(&out, &REAUTHS);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].label_value("outcome"), Some("failed"));
        assert!(find(&out, &REAUTH_FAN_OUT_LATENCY).is_empty());
    }

    #[test]
    fn fan_out_latency_is_recorded_when_the_replaced_token_expires() {
        let t = t0();
        let mut tracker = MetricsTracker::new("IMDS");
        tracker.on_event(&refreshed(1, t, 10), t);
        let second_at = t + Duration::from_secs(7);
        tracker.on_event(&refreshed(2, second_at, 10), second_at);
        let log = FanOutLog::default();
        log.record_ok(
            Generation(2),
            Duration::from_millis(20),
            Some(Duration::from_secs(3)),
        );
        let before = tracker.on_fan_out(&log.reports(), second_at);
        assert!(find(&before, &REAUTH_FAN_OUT_LATENCY).is_empty());
        // Token 1 expires at t + 10 s: the rotation to token 2 is over then.
        let after = tracker.tick(t + Duration::from_secs(10));
        assert_eq!(
            find(&after, &REAUTH_FAN_OUT_LATENCY)[0].value,
            Value::Record(0.02)
        );
        assert_eq!(find(&after, &TOKEN_SECONDS_LEFT)[0].value, Value::Set(7.0));
    }

    #[test]
    fn dropped_events_count_the_increase_of_the_running_total() {
        let mut tracker = MetricsTracker::new("IMDS");
        assert!(tracker.on_dropped_events(0).is_empty());
        assert_eq!(tracker.on_dropped_events(3)[0].value, Value::Increment(3));
        assert!(tracker.on_dropped_events(3).is_empty());
        assert_eq!(tracker.on_dropped_events(4)[0].value, Value::Increment(1));
    }

    #[test]
    fn a_status_maps_to_the_state_set_and_seconds_left() {
        let t = t0();
        let status = Status::Retrying {
            generation: Generation(3),
            expires_at: t + Duration::from_secs(30),
            failures: 2,
        };
        let out = observe_status(&status, t);
        assert_eq!(state(&out), Some("retrying"));
        assert_eq!(find(&out, &TOKEN_SECONDS_LEFT)[0].value, Value::Set(30.0));
        let out = observe_status(&Status::Starting { failures: 0 }, t);
        assert_eq!(state(&out), Some("starting"));
        assert_eq!(find(&out, &TOKEN_SECONDS_LEFT)[0].value, Value::Set(0.0));
    }
}
