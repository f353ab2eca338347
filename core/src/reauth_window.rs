//! How many re-`AUTH`s a process keeps in flight during a rotation: a window that follows
//! the server's queue, not the network's length
//!
//! A rotation wakes every connection at once. Sent all together, a thousand `AUTH`s queue at
//! the server and every other command waits behind them (measured with `bench/peers`: the
//! PING p99 of the second after a rotation grew 4–6×). A fixed bound on `AUTH`s in flight
//! cures that on loopback, but on a real network most of the `AUTH`s in flight are on the
//! wire, not in the server's queue: 32 at a time made a 1000-connection fan-out 2.9× slower
//! than redis-rs's unbounded one over a 2 ms round trip and 11× over 10 ms (measured,
//! `bench-peers --rtt-ms N`).
//!
//! So the window is TCP Vegas's, decided once per round as Linux does:
//! - The least round trip seen in the burst is the path with nothing queued (`base`).
//! - A *round* is one window's worth of answers, about one round trip. Its median round trip
//!   is what the path costs now. One sample at a time, jitter reads as queueing (a window
//!   that reacted to every answer stayed at 2× redis-rs's fan-out time on a relay whose round
//!   trips scattered by a millisecond); the least of a round (Linux's choice) misses the queue of a
//!   server that serves connections in parallel, where some `AUTH` is always quick (on
//!   loopback, through the emulator's proxy, that window grew to 512 and doubled the PING
//!   p99 during a rotation). The median is neither fooled by a few quick answers nor by a
//!   few slow ones.
//! - With `n` in flight, about `n × (median − base) / median` `AUTH`s waited at the server.
//!   Under a quarter of the minimum window, while others wait for a place, it quadruples;
//!   under half, it doubles (slow start, hurried: a burst lasts a few rounds); above the
//!   minimum window it sheds the excess; in between it holds. An `AUTH` with no answer
//!   halves it. It never drops below its minimum, so the worst case is the fixed bound it
//!   replaces, and it never passes its maximum.
//!
//! Each burst learns afresh. Rotations are minutes apart and the path may change between
//! them (a failover, another server), so once nothing is in flight the runtime calls
//! [`ReauthWindow::on_idle`]: the window falls back to its minimum and forgets its base (what
//! TCP does after an idle period, RFC 2861). Within a burst, the first answers had nothing of
//! ours queued ahead of them, so `base` is sound; one that is still too small (a sample from a
//! nearer server) reads as queueing, which only makes the window more careful. Learning costs
//! round trips: over a long path with nothing queued, 1,000 `AUTH`s leave in rounds of 32,
//! 128 and 512 (then the rest), against one round unbounded (4–6 round trips measured at
//! 10 ms, where redis-rs takes one).

use std::time::Duration;

/// The window of re-`AUTH`s in flight, fed with each `AUTH`'s round trip
///
/// Pure: the runtime measures, this decides.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use redis_entraid_core::reauth_window::{Answer, ReauthWindow};
///
/// let mut window = ReauthWindow::new(32, 4096);
/// // One round over a 2 ms path with nothing queued, while other AUTHs waited for a
/// // place: it quadruples.
/// for _ in 0..32 {
///     window.on_answer(Answer::new(Duration::from_millis(2), 32, true));
/// }
/// assert_eq!(window.window(), 128);
/// // The next round's median answer took 2.5 ms with 128 in flight: about 26 waited at
/// // the server, fewer than the minimum window allows, so it holds.
/// for _ in 0..128 {
///     window.on_answer(Answer::new(Duration::from_micros(2500), 128, true));
/// }
/// assert_eq!(window.window(), 128);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReauthWindow {
    min: usize,
    max: usize,
    window: usize,
    base: Option<Duration>,
    round: Round,
}

/// What the answers of the current round showed
#[derive(Clone, Debug, PartialEq, Eq)]
struct Round {
    round_trips: Vec<Duration>,
    most_in_flight: usize,
    held_back: bool,
}

impl ReauthWindow {
    /// A window of `min` that may grow to `max` (`max` below `min` is taken as `min`, and
    /// `min` below 2 as 2, so the queue estimate has room to act)
    #[must_use]
    pub const fn new(min: usize, max: usize) -> Self {
        let min = if min < 2 { 2 } else { min };
        let max = if max < min { min } else { max };
        Self {
            min,
            max,
            window: min,
            base: None,
            round: Round {
                round_trips: Vec::new(),
                most_in_flight: 0,
                held_back: false,
            },
        }
    }

    /// How many `AUTH`s may be in flight now
    #[must_use]
    pub fn window(&self) -> usize {
        self.window
    }

    /// The least round trip seen in this burst: the path with nothing queued
    #[must_use]
    pub fn base_round_trip(&self) -> Option<Duration> {
        self.base
    }

    /// An `AUTH` was answered (`OK` or refused). Returns the window, changed when this
    /// answer ends a round.
    pub fn on_answer(&mut self, answer: Answer) -> usize {
        let Answer {
            round_trip,
            in_flight,
            others_waiting,
        } = answer;
        let base = least(self.base, round_trip);
        self.base = Some(base);
        let round = &mut self.round;
        round.round_trips.push(round_trip);
        round.most_in_flight = round.most_in_flight.max(in_flight);
        round.held_back |= others_waiting;
        if round.round_trips.len() < self.window {
            return self.window;
        }
        let middle = round.round_trips.len() / 2;
        let (_, &mut now, _) = round.round_trips.select_nth_unstable(middle);
        let queued = if now.is_zero() {
            0.0
        } else {
            round.most_in_flight as f64 * (now - base).as_secs_f64() / now.as_secs_f64()
        };
        let held_back = round.held_back;
        round.restart();
        if queued > self.min as f64 {
            // Shed what waits beyond the minimum's worth, in one step: a round trip later
            // the next round shows whether that was enough.
            let excess = (queued - self.min as f64).ceil() as usize;
            self.window = self.window.saturating_sub(excess).max(self.min);
        } else if queued < self.min as f64 / 2.0 && held_back {
            // Only a round in which AUTHs waited for a place says the window held the burst
            // back: the tail of a burst (nobody left waiting) may not grow it on no evidence.
            // A burst is over in a handful of rounds, so an empty queue quadruples it.
            let factor = if queued < self.min as f64 / 4.0 { 4 } else { 2 };
            self.window = self.window.saturating_mul(factor).min(self.max);
        }
        self.window
    }

    /// Nothing is in flight any more: the burst is over. The next one starts from the
    /// minimum window and measures its own base round trip.
    pub fn on_idle(&mut self) {
        *self = Self::new(self.min, self.max);
    }

    /// An `AUTH` got no answer in time: the server or the path is overwhelmed. Returns the
    /// new window.
    pub fn on_timeout(&mut self) -> usize {
        self.window = (self.window / 2).max(self.min);
        self.round.restart();
        self.window
    }
}

impl Round {
    /// Forgets the answers seen, keeping the allocation for the next round
    fn restart(&mut self) {
        self.round_trips.clear();
        self.most_in_flight = 0;
        self.held_back = false;
    }
}

fn least(seen: Option<Duration>, sample: Duration) -> Duration {
    seen.map_or(sample, |seen| seen.min(sample))
}

/// One answered `AUTH`: its round trip, how many were in flight when it left (itself
/// included), and whether others were waiting for a place when its answer came
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    round_trip: Duration,
    in_flight: usize,
    others_waiting: bool,
}

impl Answer {
    /// An `AUTH` answered `round_trip` after it left with `in_flight` outstanding (itself
    /// included), while, or while not, `others_waiting` for a place in the window
    #[must_use]
    pub const fn new(round_trip: Duration, in_flight: usize, others_waiting: bool) -> Self {
        Self {
            round_trip,
            in_flight,
            others_waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds one full round of answers, each with `rtt(i)` and `n` in flight
    fn round(w: &mut ReauthWindow, n: usize, waiting: bool, rtt: impl Fn(usize) -> Duration) {
        for i in 0..w.window() {
            w.on_answer(Answer::new(rtt(i), n, waiting));
        }
    }

    #[test]
    fn a_long_path_with_no_queue_quadruples_the_window_every_round() {
        let mut w = ReauthWindow::new(32, 4096);
        for expected in [128, 512, 2048, 4096] {
            let n = w.window();
            round(&mut w, n, true, |_| 2 * MS);
            assert_eq!(w.window(), expected);
        }
    }

    #[test]
    fn jitter_on_a_long_path_does_not_read_as_queueing() {
        // Round trips scatter from 2 to 2.4 ms: the median reads about 9 % of what is in
        // flight as queued, so the window grows (4×, then 2×) until that is 16 and then
        // holds.
        let mut w = ReauthWindow::new(32, 4096);
        for _ in 0..4 {
            let n = w.window();
            round(&mut w, n, true, |i| {
                Duration::from_micros(2000 + (i as u64 * 7919) % 400)
            });
        }
        assert_eq!(w.window(), 256);
    }

    #[test]
    fn a_parallel_servers_quick_answers_do_not_hide_its_queue() {
        // One AUTH in eight is served at once, the rest wait: the least round trip of the
        // round says "no queue", the median says 28 of 32 waited.
        let mut w = ReauthWindow::new(32, 4096);
        for _ in 0..10 {
            round(&mut w, 32, true, |i| {
                Duration::from_micros(if i % 8 == 0 { 100 } else { 800 })
            });
        }
        assert_eq!(w.window(), 32);
    }

    #[test]
    fn a_loopback_server_queue_holds_the_window_at_its_minimum() {
        // A server that serves one AUTH every 25 µs behind a 40 µs path. The first round
        // leaves at once: AUTH k had k - 1 ahead of it.
        let mut w = ReauthWindow::new(32, 4096);
        for k in 1..=32u64 {
            w.on_answer(Answer::new(
                Duration::from_micros(40 + 25 * k),
                k as usize,
                true,
            ));
        }
        assert_eq!(w.window(), 32);
        // From then on every AUTH waits behind the n - 1 sent before it.
        for _ in 0..100 {
            let n = w.window();
            round(&mut w, n, true, |_| {
                Duration::from_micros(40 + 25 * n as u64)
            });
            assert_eq!(w.window(), 32);
        }
    }

    #[test]
    fn queueing_beyond_the_minimum_sheds_the_excess_at_once() {
        let mut w = ReauthWindow::new(32, 4096);
        round(&mut w, 32, true, |_| MS);
        assert_eq!(w.window(), 128);
        // The next round's fastest answer takes 2 ms: half of the 128 in flight waited,
        // 32 more than the minimum allows.
        round(&mut w, 128, true, |_| 2 * MS);
        assert_eq!(w.window(), 96);
        // A second-long queue: nearly all 96 waited; the window falls to, not below, its
        // minimum.
        round(&mut w, 96, true, |_| 1000 * MS);
        assert_eq!(w.window(), 32);
    }

    #[test]
    fn answers_while_nobody_waits_do_not_grow_the_window() {
        let mut w = ReauthWindow::new(32, 4096);
        for _ in 0..10 {
            round(&mut w, 32, false, |_| MS);
        }
        assert_eq!(w.window(), 32);
    }

    #[test]
    fn the_window_only_changes_at_the_end_of_a_round() {
        let mut w = ReauthWindow::new(32, 4096);
        for _ in 0..31 {
            assert_eq!(w.on_answer(Answer::new(MS, 32, true)), 32);
        }
        assert_eq!(w.on_answer(Answer::new(MS, 32, true)), 128);
    }

    #[test]
    fn an_unanswered_auth_halves_the_window_down_to_its_minimum() {
        let mut w = ReauthWindow::new(32, 4096);
        round(&mut w, 32, true, |_| MS);
        round(&mut w, 128, true, |_| MS);
        assert_eq!(w.window(), 512);
        assert_eq!(w.on_timeout(), 256);
        assert_eq!(w.on_timeout(), 128);
        assert_eq!(w.on_timeout(), 64);
        assert_eq!(w.on_timeout(), 32);
        assert_eq!(w.on_timeout(), 32);
    }

    #[test]
    fn an_idle_window_starts_the_next_burst_afresh() {
        let mut w = ReauthWindow::new(32, 4096);
        round(&mut w, 32, true, |_| Duration::from_micros(50));
        assert_eq!(w.window(), 128);
        w.on_idle();
        assert_eq!(w, ReauthWindow::new(32, 4096));
        // A far path right after a near one: measured on its own base, so it grows.
        round(&mut w, 32, true, |_| 20 * MS);
        assert_eq!(w.window(), 128);
        assert_eq!(w.base_round_trip(), Some(20 * MS));
    }

    #[test]
    fn the_window_never_passes_its_maximum() {
        let mut w = ReauthWindow::new(32, 40);
        for _ in 0..5 {
            let n = w.window();
            round(&mut w, n, true, |_| MS);
        }
        assert_eq!(w.window(), 40);
    }

    #[test]
    fn base_is_the_least_round_trip_and_a_zero_round_trip_counts_as_no_queue() {
        let mut w = ReauthWindow::new(4, 8);
        for rtt in [3, 2, 5] {
            w.on_answer(Answer::new(rtt * MS, 1, false));
        }
        assert_eq!(w.base_round_trip(), Some(2 * MS));
        let mut paused = ReauthWindow::new(2, 8);
        paused.on_answer(Answer::new(Duration::ZERO, 2, true));
        assert_eq!(paused.on_answer(Answer::new(Duration::ZERO, 2, true)), 8);
    }

    #[test]
    fn degenerate_bounds_are_mended() {
        assert_eq!(ReauthWindow::new(0, 0).window(), 2);
        let mut w = ReauthWindow::new(8, 1);
        round(&mut w, 8, true, |_| MS);
        assert_eq!(w.window(), 8);
    }
}
