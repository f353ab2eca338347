//! Unit behaviour of core modules, kept outside `core/src` because these tests read the clock
//! for a starting instant (only differences between instants matter) and the core never does
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod command {

    use redis_entraid_core::error::ReauthError;
    use redis_entraid_core::event::Generation;
    use redis_entraid_core::machine::TokenManager;
    use std::time::Instant;

    use redis_entraid_core::command::*;

    #[test]
    fn refresh_requests_coalesce_into_one_wake_up() {
        let signals = Signals::default();
        assert!(signals.admit(Command::RefreshNow).is_some());
        assert!(signals.admit(Command::RefreshNow).is_none());
        let mut machine = TokenManager::new(Default::default(), Instant::now());
        signals.apply(&mut machine, Instant::now());
        assert!(!signals.refresh_requested());
        assert!(signals.admit(Command::RefreshNow).is_some());
    }

    #[test]
    fn a_dropped_rejection_still_asks_for_a_refresh() {
        let signals = Signals::default();
        let rejected = Command::Reauth {
            generation: Generation(1),
            result: Err(ReauthError::from_server_reply("WRONGPASS invalid password")),
        };
        signals.overflowed(&rejected);
        assert!(signals.refresh_requested());
        assert_eq!(signals.dropped_reports(), 1);
    }

    #[test]
    fn a_dropped_success_only_counts() {
        let signals = Signals::default();
        signals.overflowed(&Command::Reauth {
            generation: Generation(1),
            result: Ok(()),
        });
        assert!(!signals.refresh_requested());
        assert_eq!(signals.dropped_reports(), 1);
    }

    #[test]
    fn shutdown_survives_a_full_queue() {
        let signals = Signals::default();
        let wake = signals.admit(Command::Shutdown);
        signals.overflowed(&wake.expect("a shutdown always queues a wake-up"));
        assert!(signals.shutdown_requested());
    }
}

mod observed {
    use std::time::Instant;

    use redis_entraid_core::event::{Action, Event, Generation, Status};
    use redis_entraid_core::token::Credentials;

    use std::time::Duration;

    use redis_entraid_core::error::TransportError;
    use redis_entraid_core::observed::*;
    use redis_entraid_core::token::AccessToken;

    fn credentials() -> Credentials {
        Credentials::new("me", AccessToken::new("token"))
    }

    fn failed(now: Instant) -> Action {
        Action::Event(Event::FetchFailed {
            attempt: 1,
            error: TransportError::new("refused").into(),
            retryable: true,
            next_attempt_at: now,
        })
    }

    #[test]
    fn failures_count_towards_startup_only_before_the_first_token() {
        let now = Instant::now();
        let mut observed = Observed::default();
        observed.apply(&failed(now), Status::Starting { failures: 1 }, now);
        assert_eq!(observed.failures_before_first_token(), 1);
        assert!(observed.last_error().is_some());
        let valid = Status::Valid {
            generation: Generation(1),
            expires_at: now + Duration::from_secs(60),
        };
        observed.apply(
            &Action::Reauthenticate {
                credentials: credentials(),
                generation: Generation(1),
            },
            valid,
            now,
        );
        assert!(
            observed.last_error().is_none(),
            "a success clears the error"
        );
        assert_eq!(observed.expires_at(), Some(now + Duration::from_secs(60)));
        observed.apply(&failed(now), valid, now);
        assert_eq!(observed.failures_before_first_token(), 1);
    }

    #[test]
    fn only_visible_changes_wake_waiters() {
        let now = Instant::now();
        let mut observed = Observed::default();
        let starting = Status::Starting { failures: 0 };
        assert!(!observed.apply(&Action::Wait { until: None }, starting, now));
        assert!(observed.apply(
            &Action::Wait { until: None },
            Status::Starting { failures: 1 },
            now
        ));
    }

    #[test]
    fn a_waiter_sees_newer_credentials_or_the_stop() {
        let now = Instant::now();
        let mut observed = Observed::default();
        assert_eq!(observed.newer_or_stopped(None), None);
        observed.apply(
            &Action::Reauthenticate {
                credentials: credentials(),
                generation: Generation(1),
            },
            Status::Starting { failures: 0 },
            now,
        );
        assert_eq!(
            observed.newer_or_stopped(None).flatten().map(|(g, _)| g),
            Some(Generation(1))
        );
        assert_eq!(observed.newer_or_stopped(Some(Generation(1))), None);
        observed.apply(&Action::Event(Event::Stopped), Status::Stopped, now);
        assert_eq!(observed.newer_or_stopped(Some(Generation(1))), Some(None));
        assert_eq!(observed.status(), Status::Stopped);
    }
}

mod startup {
    use redis_entraid_core::error::TransportError;
    use redis_entraid_core::observed::Observed;
    use std::time::Duration;

    use std::time::Instant;

    use redis_entraid_core::event::{Action, Event, Status};
    use redis_entraid_core::startup::*;

    fn failed_once() -> Observed {
        let now = Instant::now();
        let mut observed = Observed::default();
        observed.apply(
            &Action::Event(Event::FetchFailed {
                attempt: 1,
                error: TransportError::new("connection refused").into(),
                retryable: true,
                next_attempt_at: now,
            }),
            Status::Starting { failures: 1 },
            now,
        );
        observed
    }

    #[test]
    fn fail_fast_fails_on_the_first_retryable_error() {
        let verdict = Startup::FailFast.verdict(&failed_once());
        assert!(
            matches!(verdict, Some(Err(StartupError::FetchFailed(e))) if e.to_string().contains("connection refused"))
        );
    }

    #[test]
    fn waiting_rides_through_retryable_errors_and_times_out_with_the_last() {
        let startup = Startup::Wait(Duration::from_secs(3));
        let observed = failed_once();
        assert!(startup.verdict(&observed).is_none());
        let error = startup.timed_out(&observed).to_string();
        assert!(
            error.contains("3s") && error.contains("connection refused"),
            "{error}"
        );
    }

    #[test]
    fn lazy_never_waits() {
        assert!(matches!(
            Startup::Lazy.verdict(&Observed::default()),
            Some(Ok(()))
        ));
        assert_eq!(Startup::Lazy.wait_limit(), Some(Duration::ZERO));
    }

    #[test]
    fn a_stopped_driver_ends_every_wait() {
        let mut observed = Observed::default();
        observed.apply(
            &Action::Event(Event::Stopped),
            Status::Stopped,
            Instant::now(),
        );
        assert!(matches!(
            Startup::Wait(Duration::from_secs(30)).verdict(&observed),
            Some(Err(StartupError::FetchFailed(_)))
        ));
    }
}
