//! The timer table: the earliest deadline wins and a due one is taken once

use std::time::{Duration, Instant};

use redis_entraid_core::event::TimerKind;
use redis_entraid_core::timer::TimerTable;

#[test]
fn next_is_the_earliest_deadline_and_take_due_removes_it() {
    #[allow(clippy::disallowed_methods)] // the test, not the core, reads the clock
    let t0 = Instant::now();
    let mut table = TimerTable::default();
    assert_eq!(table.next(), None);
    table.set(TimerKind::Refresh, t0 + Duration::from_secs(10));
    table.set(TimerKind::Expiry, t0 + Duration::from_secs(20));
    assert_eq!(
        table.next(),
        Some((t0 + Duration::from_secs(10), TimerKind::Refresh))
    );
    assert!(!table.take_due(TimerKind::Refresh, t0));
    assert!(table.take_due(TimerKind::Refresh, t0 + Duration::from_secs(10)));
    assert_eq!(
        table.next(),
        Some((t0 + Duration::from_secs(20), TimerKind::Expiry))
    );
    table.clear();
    assert_eq!(table.next(), None);
}
