//! The one clock every judgment reads: handshakes (through rustls's time
//! provider), verdict deadlines, CRL freshness at load, the sweeper's
//! wake-ups, ticket ages and expiry warnings.
//!
//! The default is the system clock. Tests (and simulations) give a builder
//! a [`ManualClock`] instead and move time across a notAfter or a
//! nextUpdate without sleeping; the sweeper then wakes when the moved time
//! reaches its next deadline, exactly as it would in real time.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

/// The time meshtls judges by: the system clock, or a [`ManualClock`].
///
/// Given to a builder with
/// [`dangerous().clock(..)`](crate::Dangerous::clock); a clock that runs
/// late admits certificates that have expired.
#[derive(Clone, Default)]
pub struct Clock(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    System,
    Manual(Arc<Manual>),
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::System => f.write_str("Clock::system"),
            Kind::Manual(m) => write!(f, "Clock::manual({:?})", m.now()),
        }
    }
}

impl Clock {
    /// The system clock (the default).
    #[must_use]
    pub fn system() -> Self {
        Self(Kind::System)
    }

    /// The time now, by this clock.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            Kind::System => SystemTime::now(),
            Kind::Manual(m) => m.now(),
        }
    }

    /// The time now as webpki and rustls take it.
    pub(crate) fn unix(&self) -> UnixTime {
        unix_time(self.now())
    }

    /// Waits until `alarm` rings, this clock reaches `deadline`, or the
    /// monotonic clock reaches `instant` (`None`: no such deadline). Real
    /// waits are cut to `MAX_WAIT`, so that a system clock that jumps is
    /// read again.
    pub(crate) fn sleep(
        &self,
        alarm: &Arc<Alarm>,
        deadline: Option<SystemTime>,
        instant: Option<Instant>,
    ) {
        let until_instant = instant.map(|i| i.saturating_duration_since(Instant::now()));
        match &self.0 {
            Kind::System => {
                let until_deadline = deadline.map(|d| {
                    d.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                });
                let wait = [until_deadline, until_instant, Some(MAX_WAIT)]
                    .into_iter()
                    .flatten()
                    .min();
                alarm.wait(wait);
            }
            Kind::Manual(m) => {
                if let Some(d) = deadline {
                    // Read the time and set the timer under one lock, so a
                    // `set` in between cannot pass the deadline unseen.
                    let mut timers = m.lock_timers();
                    if m.now() >= d {
                        return;
                    }
                    // One timer per sleeper: an earlier one woken by a ring
                    // is replaced.
                    let me = Arc::downgrade(alarm);
                    timers.retain(|(_, a)| !a.ptr_eq(&me) && a.strong_count() > 0);
                    timers.push((d, me));
                }
                alarm.wait(until_instant);
            }
        }
    }
}

/// The longest a sleeping task waits on the system clock before it looks
/// at the time again.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// A clock that moves only when told: for tests that cross a notAfter or a
/// nextUpdate without sleeping. Cheap to clone; every clone moves together.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let time = meshtls::ManualClock::new(SystemTime::now());
/// # let builder = meshtls::ServerTls::builder();
/// // let server = builder. ... .dangerous().clock(time.clock()).build()?;
/// time.advance(Duration::from_secs(3600)); // an hour later, at once
/// # let _ = builder;
/// ```
#[derive(Clone)]
pub struct ManualClock(Arc<Manual>);

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.0.now()).finish()
    }
}

struct Manual {
    now: Mutex<SystemTime>,
    /// Sleepers and the moment they wake at.
    timers: Mutex<Vec<(SystemTime, Weak<Alarm>)>>,
}

impl Manual {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_timers(&self) -> MutexGuard<'_, Vec<(SystemTime, Weak<Alarm>)>> {
        self.timers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ManualClock {
    /// A clock standing at `start`.
    #[must_use]
    pub fn new(start: SystemTime) -> Self {
        Self(Arc::new(Manual {
            now: Mutex::new(start),
            timers: Mutex::new(Vec::new()),
        }))
    }

    /// The [`Clock`] to give a builder.
    #[must_use]
    pub fn clock(&self) -> Clock {
        Clock(Kind::Manual(self.0.clone()))
    }

    /// The time it stands at.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        self.0.now()
    }

    /// Moves the clock forward by `by` (saturating), waking whatever was
    /// to wake by then.
    pub fn advance(&self, by: Duration) {
        let to = self.now().checked_add(by).unwrap_or(self.now());
        self.set(to);
    }

    /// Sets the clock to `to` (also backwards), waking whatever was to wake
    /// by then.
    pub fn set(&self, to: SystemTime) {
        let due: Vec<Arc<Alarm>> = {
            let mut timers = self.0.lock_timers();
            *self.0.now.lock().unwrap_or_else(|p| p.into_inner()) = to;
            let mut due = Vec::new();
            timers.retain(|(at, alarm)| match alarm.upgrade() {
                Some(alarm) if *at <= to => {
                    due.push(alarm);
                    false
                }
                Some(_) => true,
                None => false,
            });
            due
        };
        for alarm in due {
            alarm.ring();
        }
    }
}

/// What a sleeping background task waits on: rung by a policy change, a
/// new deadline, the state going away, or a clock reaching its deadline.
/// A ring while nobody waits is kept for the next wait.
#[derive(Default)]
pub(crate) struct Alarm {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Alarm {
    pub(crate) fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.bell.notify_all();
    }

    /// Waits for a ring, or at most `timeout`; takes the ring.
    fn wait(&self, timeout: Option<Duration>) {
        let mut rung = self.rung.lock().unwrap_or_else(|p| p.into_inner());
        match timeout {
            Some(timeout) => {
                let (guard, _) = self
                    .bell
                    .wait_timeout_while(rung, timeout, |rung| !*rung)
                    .unwrap_or_else(|p| p.into_inner());
                rung = guard;
            }
            None => {
                rung = self
                    .bell
                    .wait_while(rung, |rung| !*rung)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        *rung = false;
    }
}

/// `t` as webpki and rustls take time (before 1970: 1970).
pub(crate) fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Unix seconds as a moment; `None` when the platform cannot represent it
/// ("never", for a deadline).
pub(crate) fn at_unix(secs: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// The clock as rustls's time provider, so that rustls (ticket ages, the
/// `now` it hands the verifiers) reads the same time.
#[derive(Debug)]
pub(crate) struct RustlsTime(pub(crate) Clock);

impl rustls::time_provider::TimeProvider for RustlsTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0.unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_wakes_sleepers_when_it_reaches_their_deadline() {
        let start = SystemTime::now();
        let time = ManualClock::new(start);
        let clock = time.clock();
        let alarm = Arc::new(Alarm::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = {
            let alarm = alarm.clone();
            std::thread::spawn(move || {
                clock.sleep(&alarm, Some(start + Duration::from_secs(10)), None);
                tx.send(()).unwrap();
            })
        };
        // Not yet: the clock is short of the deadline.
        time.advance(Duration::from_secs(5));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        time.advance(Duration::from_secs(5));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the sleeper did not wake at its deadline");
        sleeper.join().unwrap();
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let alarm = Arc::new(Alarm::default());
        alarm.ring();
        Clock::system().sleep(&alarm, None, None);
        let time = ManualClock::new(SystemTime::now());
        alarm.ring();
        time.clock().sleep(&alarm, None, None);
    }

    #[test]
    fn deadlines_far_away_are_never_not_a_panic() {
        assert!(at_unix(u64::MAX).is_none());
        let alarm = Arc::new(Alarm::default());
        alarm.ring();
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
        Clock::system().sleep(&alarm, Some(far), None);
        let time = ManualClock::new(SystemTime::now());
        time.advance(Duration::MAX);
    }
}
