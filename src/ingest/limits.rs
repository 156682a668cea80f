//! Per-replica stream limits: how many streams at once, how long one may sit idle, how long one
//! may live.
//!
//! - **Streams in total** (`als_max_streams`): a semaphore; a stream over the limit is refused
//!   at its start with `RESOURCE_EXHAUSTED`. Per connection, HTTP/2's
//!   SETTINGS_MAX_CONCURRENT_STREAMS (`als_max_streams_per_connection`, set on the server
//!   builder) makes the client queue extra streams instead.
//! - **Idle timeout** (`als_stream_idle_timeout_secs`): a stream that delivers no whole message
//!   for that long is ended with `UNAVAILABLE`; Envoy opens a new one with its next batch. Bytes
//!   trickling in without completing a message do not count as activity. Time spent waiting for
//!   the store (back-pressure) is not idleness: the clock only runs while waiting for a message.
//! - **Maximum age** (`als_max_stream_age_secs`, ± [`MAX_AGE_JITTER`]): a stream is ended with
//!   `UNAVAILABLE` so Envoy reconnects, and through the Service possibly to another replica:
//!   long-lived streams rebalance after a scale-up. The jitter keeps streams opened together
//!   from all reconnecting together. Envoy does not resend entries it had already written to a
//!   stream the server ends, so the end is placed where nothing is in flight: right after the
//!   next message is accepted (Envoy flushes about once a second, so a busy stream ends within
//!   about a second of its deadline), or after [`MAX_AGE_GRACE`] with no message.
//!
//! Hot path: per message, one clock read and two comparisons. The timer is re-armed only when
//! it fires, never per message.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use crate::telemetry::Metrics;

/// Maximum stream age is drawn per stream from `age × [1 − J, 1 + J]`.
pub const MAX_AGE_JITTER: f64 = 0.1;

/// After its maximum age a stream still gets this long to deliver one more message, so it ends
/// between Envoy's flushes rather than in the middle of one.
pub const MAX_AGE_GRACE: Duration = Duration::from_secs(2);

/// Limits shared by every stream of the listener.
#[derive(Debug)]
pub struct StreamLimits {
    permits: Arc<Semaphore>,
    max_streams: usize,
    idle_timeout: Option<Duration>,
    max_age: Option<Duration>,
}

impl Default for StreamLimits {
    /// No limits (for embedding and tests).
    fn default() -> Self {
        StreamLimits::new(Semaphore::MAX_PERMITS, None, None)
    }
}

impl StreamLimits {
    /// `None` durations disable that limit.
    pub fn new(
        max_streams: usize,
        idle_timeout: Option<Duration>,
        max_age: Option<Duration>,
    ) -> Self {
        let max_streams = max_streams.min(Semaphore::MAX_PERMITS);
        StreamLimits {
            permits: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            idle_timeout,
            max_age,
        }
    }

    /// A slot for one stream, held until the stream ends; `None` when all are taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    pub fn over_limit_status(&self) -> Status {
        Status::resource_exhausted(format!(
            "this meshaudit replica already serves its limit of {} ALS streams (als_max_streams); retry later or through another replica",
            self.max_streams
        ))
    }

    /// The clock of a stream opened at `opened`, with its own jittered maximum age.
    pub fn clock(&self, opened: Instant) -> StreamClock {
        StreamClock {
            idle: self.idle_timeout,
            age_deadline: self.max_age.map(|age| {
                opened
                    + age.mul_f64(rand::random_range(
                        1.0 - MAX_AGE_JITTER..=1.0 + MAX_AGE_JITTER,
                    ))
            }),
            last_message: opened,
        }
    }
}

/// Why the collector ended a stream that did nothing wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Idle,
    MaxAge,
}

impl StreamEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Idle => "idle_timeout",
            StreamEnd::MaxAge => "max_age",
        }
    }

    /// Counts the ending and returns the status the stream ends with.
    pub fn finish(self, metrics: &Metrics) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            StreamEnd::Idle => {
                metrics.streams_ended_idle.fetch_add(1, Relaxed);
                Status::unavailable("no access log message within the idle timeout (als_stream_idle_timeout_secs); open a new stream when there are entries to send")
            }
            StreamEnd::MaxAge => {
                metrics.streams_ended_max_age.fetch_add(1, Relaxed);
                Status::unavailable("stream reached its maximum age (als_max_stream_age_secs); reconnect so streams spread across replicas")
            }
        }
    }
}

/// What the stream's timer says when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    End(StreamEnd),
    /// Nothing due yet: sleep until then.
    SleepUntil(Instant),
}

/// One stream's idle and age deadlines.
#[derive(Debug, Clone)]
pub struct StreamClock {
    idle: Option<Duration>,
    age_deadline: Option<Instant>,
    last_message: Instant,
}

impl StreamClock {
    /// False when neither limit applies: the stream needs no timer at all.
    pub fn enabled(&self) -> bool {
        self.idle.is_some() || self.age_deadline.is_some()
    }

    /// When the timer should first fire.
    pub fn first_deadline(&self) -> Instant {
        match self.next_deadline(self.last_message) {
            Some(at) => at,
            // Unused (the timer branch is disabled), but must be a valid instant.
            None => self.last_message + Duration::from_secs(86_400),
        }
    }

    /// Records an accepted message; true when the stream is past its maximum age and should
    /// end now, between two of Envoy's flushes.
    pub fn message(&mut self, now: Instant) -> bool {
        self.last_message = now;
        self.age_deadline.is_some_and(|d| now >= d)
    }

    /// Called when the timer fires.
    pub fn wake(&self, now: Instant) -> Wake {
        if self
            .idle
            .is_some_and(|idle| now >= self.last_message + idle)
        {
            return Wake::End(StreamEnd::Idle);
        }
        if self.age_deadline.is_some_and(|d| now >= d + MAX_AGE_GRACE) {
            return Wake::End(StreamEnd::MaxAge);
        }
        match self.next_deadline(now) {
            Some(at) => Wake::SleepUntil(at),
            None => Wake::SleepUntil(now + Duration::from_secs(86_400)),
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let idle = self.idle.map(|idle| self.last_message + idle);
        let age = self
            .age_deadline
            .map(|d| if now >= d { d + MAX_AGE_GRACE } else { d });
        match (idle, age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn total_streams_are_capped_and_slots_come_back() {
        let l = StreamLimits::new(2, None, None);
        let a = l.admit().expect("first");
        let _b = l.admit().expect("second");
        assert!(l.admit().is_none(), "third is over the limit");
        assert_eq!(l.over_limit_status().code(), tonic::Code::ResourceExhausted);
        assert!(l.over_limit_status().message().contains("als_max_streams"));
        drop(a);
        assert!(l.admit().is_some(), "a finished stream frees its slot");
    }

    #[test]
    fn idle_timeout_counts_from_the_last_message() {
        let t0 = Instant::now();
        let mut c = StreamLimits::new(10, Some(10 * S), None).clock(t0);
        assert!(c.enabled());
        assert_eq!(c.first_deadline(), t0 + 10 * S);
        assert!(!c.message(t0 + 4 * S));
        // The timer set for t0+10 fires; the stream was active at t0+4, so sleep on.
        assert_eq!(c.wake(t0 + 10 * S), Wake::SleepUntil(t0 + 14 * S));
        assert_eq!(c.wake(t0 + 14 * S), Wake::End(StreamEnd::Idle));
    }

    #[test]
    fn max_age_is_jittered_and_ends_after_a_message_or_a_grace() {
        let t0 = Instant::now();
        let l = StreamLimits::new(10, None, Some(100 * S));
        for _ in 0..200 {
            let c = l.clock(t0);
            let d = c.first_deadline() - t0;
            assert!((90 * S..=110 * S).contains(&d), "{d:?}");
        }
        let mut c = l.clock(t0);
        let age = c.first_deadline();
        assert!(!c.message(age - S), "young streams go on");
        // The deadline passes while waiting: wait up to the grace for one more message.
        assert_eq!(c.wake(age), Wake::SleepUntil(age + MAX_AGE_GRACE));
        assert!(
            c.clone().message(age + S),
            "a message after the deadline ends the stream"
        );
        assert_eq!(c.wake(age + MAX_AGE_GRACE), Wake::End(StreamEnd::MaxAge));
    }

    #[test]
    fn idle_and_age_together_fire_at_the_earlier_one() {
        let t0 = Instant::now();
        let mut c = StreamLimits::new(10, Some(30 * S), Some(1000 * S)).clock(t0);
        assert_eq!(c.first_deadline(), t0 + 30 * S);
        let age = t0 + 1000 * S;
        let c2 = StreamLimits::new(10, Some(3000 * S), Some(1000 * S)).clock(t0);
        assert!(c2.first_deadline() <= age + 100 * S && c2.first_deadline() >= age - 100 * S);
        assert!(!c.message(t0 + 20 * S));
        assert_eq!(c.wake(t0 + 30 * S), Wake::SleepUntil(t0 + 50 * S));
    }

    #[test]
    fn no_limits_no_timer() {
        let mut c = StreamLimits::default().clock(Instant::now());
        assert!(!c.enabled());
        assert!(!c.message(Instant::now() + 1_000_000 * S));
    }

    #[test]
    fn endings_are_counted_with_unavailable() {
        use std::sync::atomic::Ordering::Relaxed;
        let m = Metrics::default();
        assert_eq!(StreamEnd::Idle.finish(&m).code(), tonic::Code::Unavailable);
        assert_eq!(
            StreamEnd::MaxAge.finish(&m).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            StreamEnd::MaxAge.finish(&m).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(m.streams_ended_idle.load(Relaxed), 1);
        assert_eq!(m.streams_ended_max_age.load(Relaxed), 2);
    }
}
