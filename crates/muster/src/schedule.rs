//! When scheduled work fires: intervals, cron expressions and daily
//! times, in a time zone, with a clock that tests can drive.
//!
//! - `every 30s` fires at the multiples of 30 s since the Unix epoch, so
//!   every instance of a service computes the same fire times (which is
//!   what lets exactly one of them claim each).
//! - Cron expressions have 5 (`m h dom mon dow`), 6 (seconds first) or 7
//!   (seconds first, year last) fields, with `*`, lists (`0,12`), ranges,
//!   steps, `L`, `W`, `#`, names, and `@yearly`, `@monthly`, `@weekly`,
//!   `@daily`, `@hourly`. Day-of-week has the standard meaning: 0 and 7 are
//!   Sunday; a restricted day-of-month and day-of-week match when either
//!   does (Vixie cron).
//! - `at HH:MM[:SS]` fires daily at that local time.
//!
//! Across daylight-saving changes in a named zone, a local time that does
//! not exist (the spring-forward gap) fires at the first instant after the
//! gap, and one that happens twice (fall back) fires once.
//!
//! ```
//! use muster::schedule::Schedule;
//! let s = Schedule::parse("0 0,12 * * *").unwrap();
//! let t = "2026-01-01T05:00:00Z".parse().unwrap();
//! assert_eq!(s.next_after(t).unwrap().to_rfc3339(), "2026-01-01T12:00:00+00:00");
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;

/// The zone cron and `at` times are read in: any IANA zone with the
/// muster crate's `tz` feature (on by default), UTC alone without it.
#[cfg(feature = "tz")]
pub type Zone = chrono_tz::Tz;
/// The zone cron and `at` times are read in: any IANA zone with the
/// muster crate's `tz` feature (on by default), UTC alone without it.
#[cfg(not(feature = "tz"))]
pub type Zone = chrono::Utc;

#[cfg(feature = "tz")]
const UTC_ZONE: Zone = chrono_tz::Tz::UTC;
#[cfg(not(feature = "tz"))]
const UTC_ZONE: Zone = chrono::Utc;

#[cfg(feature = "tz")]
fn zone_name(z: &Zone) -> &'static str {
    z.name()
}
#[cfg(not(feature = "tz"))]
fn zone_name(_: &Zone) -> &'static str {
    "UTC"
}

#[cfg(feature = "tz")]
fn parse_zone(zone: &str) -> Result<Zone, ScheduleError> {
    zone.parse()
        .map_err(|_| ScheduleError::UnknownZone(zone.to_owned()))
}
#[cfg(not(feature = "tz"))]
fn parse_zone(zone: &str) -> Result<Zone, ScheduleError> {
    if matches!(zone, "UTC" | "Etc/UTC" | "Z") {
        Ok(chrono::Utc)
    } else {
        Err(ScheduleError::ZonesLeftOut(zone.to_owned()))
    }
}

/// A schedule that could not be understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// `every` with a period under a millisecond.
    #[error("an interval must be at least 1ms")]
    IntervalTooShort,
    /// `every` with a period that is not a duration.
    #[error(transparent)]
    Period(#[from] muster_core::duration::DurationError),
    /// A cron expression with too few or too many fields.
    #[error(
        "{expr:?} has {fields} fields; a cron expression has 5, 6 (seconds first) or 7 (seconds first, year last)"
    )]
    CronFields {
        /// The expression.
        expr: String,
        /// Its number of fields.
        fields: usize,
    },
    /// A cron expression that does not parse.
    #[error("{expr:?} is not a cron expression: {source}")]
    Cron {
        /// The expression.
        expr: String,
        /// What the cron parser said.
        source: croner::errors::CronError,
    },
    /// `at` with something other than `HH:MM[:SS]`.
    #[error("{0:?} is not a time of day (HH:MM or HH:MM:SS)")]
    TimeOfDay(String),
    /// A time zone name the zone database does not know.
    #[error("{0:?} is not a known time zone (e.g. Europe/Berlin, UTC)")]
    UnknownZone(String),
    /// A zone other than UTC in a build without time zones.
    #[error(
        "{0:?}: this build reads schedules in UTC only (time zones are the muster crate's cargo feature `tz`, on by default)"
    )]
    ZonesLeftOut(String),
    /// A misfire policy other than those documented.
    #[error("{0:?} is not a misfire policy (skip, run_once, catch_up or catch_up:N)")]
    Misfire(String),
}

#[derive(Debug, Clone)]
enum Kind {
    Every(Duration),
    Cron(Box<Cron>),
}

/// When a job fires.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: Zone,
    text: String,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.tz != UTC_ZONE && matches!(self.kind, Kind::Cron(_)) {
            write!(f, " ({})", zone_name(&self.tz))?;
        }
        Ok(())
    }
}

impl Schedule {
    /// Fires every `period` (at least 1 ms), at its multiples since the
    /// Unix epoch.
    ///
    /// # Errors
    /// A zero period.
    pub fn every(period: Duration) -> Result<Self, ScheduleError> {
        if period < Duration::from_millis(1) {
            return Err(ScheduleError::IntervalTooShort);
        }
        Ok(Self {
            kind: Kind::Every(period),
            tz: UTC_ZONE,
            text: format!("every {period:?}"),
        })
    }

    /// A cron expression (see the module documentation), in UTC.
    ///
    /// # Errors
    /// An expression that does not parse, with why.
    pub fn cron(expr: &str) -> Result<Self, ScheduleError> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=7).contains(&fields) {
            return Err(ScheduleError::CronFields {
                expr: expr.to_owned(),
                fields,
            });
        }
        let cron = Cron::from_str(expr.trim()).map_err(|source| ScheduleError::Cron {
            expr: expr.to_owned(),
            source,
        })?;
        Ok(Self {
            kind: Kind::Cron(Box::new(cron)),
            tz: UTC_ZONE,
            text: expr.trim().to_owned(),
        })
    }

    /// Daily at `HH:MM` or `HH:MM:SS` (local time of the zone; UTC unless
    /// [`Schedule::in_zone`]).
    ///
    /// # Errors
    /// Not a valid time of day.
    pub fn at(time: &str) -> Result<Self, ScheduleError> {
        let bad = || ScheduleError::TimeOfDay(time.to_owned());
        let parts: Vec<&str> = time.trim().split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let num = |s: &str, max: u32| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n <= max && !s.is_empty() && s.len() <= 2)
        };
        let h = num(parts[0], 23).ok_or_else(bad)?;
        let m = num(parts[1], 59).ok_or_else(bad)?;
        let s = match parts.get(2) {
            Some(p) => num(p, 59).ok_or_else(bad)?,
            None => 0,
        };
        let mut sched = Self::cron(&format!("{s} {m} {h} * * *"))?;
        sched.text = format!("at {}", time.trim());
        Ok(sched)
    }

    /// Parses `every DURATION`, `at HH:MM[:SS]` or a cron expression.
    ///
    /// # Errors
    /// As [`Schedule::every`], [`Schedule::at`] and [`Schedule::cron`].
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let t = text.trim();
        if let Some(d) = t.strip_prefix("every ") {
            let period = muster_core::duration::parse(d)?;
            let mut s = Self::every(period)?;
            s.text = t.to_owned();
            Ok(s)
        } else if let Some(at) = t.strip_prefix("at ") {
            Self::at(at)
        } else {
            Self::cron(t)
        }
    }

    /// Reads cron and `at` times in the IANA zone `zone` (e.g.
    /// `Europe/Berlin`). Intervals are not affected.
    ///
    /// # Errors
    /// An unknown zone.
    pub fn in_zone(mut self, zone: &str) -> Result<Self, ScheduleError> {
        self.tz = parse_zone(zone)?;
        Ok(self)
    }

    /// The first fire time strictly after `t`, or `None` if there is none
    /// (a date that never comes, like 30 February).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every(period) => {
                let p = i64::try_from(period.as_millis()).ok()?;
                let ms = t.timestamp_millis();
                let next = (ms.div_euclid(p) + 1).checked_mul(p)?;
                Utc.timestamp_millis_opt(next).single()
            }
            Kind::Cron(cron) => {
                let local = t.with_timezone(&self.tz);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|d| d.with_timezone(&Utc))
            }
        }
    }

    /// The next `n` fire times after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = t;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(next) => {
                    out.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        out
    }

    /// The zone cron and `at` times are read in.
    pub fn zone(&self) -> Zone {
        self.tz
    }
}

/// What to do about fire times that passed while the service was busy
/// (its previous run still going) or not looking (asleep, suspended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misfire {
    /// Forget them.
    Skip,
    /// Run once for all of them, as soon as possible.
    #[default]
    RunOnce,
    /// Run each of them, the most recent up to this many, back to back.
    CatchUp(u32),
}

impl FromStr for Misfire {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "skip" => Ok(Self::Skip),
            "run_once" => Ok(Self::RunOnce),
            "catch_up" => Ok(Self::CatchUp(10)),
            other => match other.strip_prefix("catch_up:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::CatchUp(n)),
                _ => Err(ScheduleError::Misfire(s.to_owned())),
            },
        }
    }
}

impl Misfire {
    /// Of `missed` fire times (oldest first), the ones to run now.
    pub fn select<T: Copy>(self, missed: &[T]) -> Vec<T> {
        match self {
            Self::Skip => Vec::new(),
            Self::RunOnce => missed.last().copied().into_iter().collect(),
            Self::CatchUp(n) => missed[missed.len().saturating_sub(n as usize)..].to_vec(),
        }
    }
}

/// Where "now" comes from. [`SystemClock`] in services; [`VirtualClock`]
/// in tests, which follows tokio's clock so `tokio::time::pause` and
/// `advance` drive schedules without waiting.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at a given time and advances with tokio's clock
/// (and by [`VirtualClock::jump`], as a suspended machine's would).
#[derive(Debug)]
pub struct VirtualClock {
    origin: std::sync::Mutex<DateTime<Utc>>,
    start: tokio::time::Instant,
}

impl VirtualClock {
    /// A clock reading `origin` now.
    pub fn starting_at(origin: DateTime<Utc>) -> Self {
        Self {
            origin: std::sync::Mutex::new(origin),
            start: tokio::time::Instant::now(),
        }
    }

    /// Moves the clock forward by `by` at once, without tokio's clock: what
    /// a process sees after the machine slept or the process was stopped.
    pub fn jump(&self, by: Duration) {
        let mut o = self
            .origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *o += chrono::Duration::from_std(by).unwrap_or_default();
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default();
        *self
            .origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            + elapsed
    }
}

/// Sleeps until `clock` reads at least `t` (waking early and checking
/// again, so a wall clock that jumps is followed).
pub async fn sleep_until(clock: &dyn Clock, t: DateTime<Utc>) {
    loop {
        let now = clock.now();
        if now >= t {
            return;
        }
        let wait = (t - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
    }
}

#[cfg(test)]
mod tests;
