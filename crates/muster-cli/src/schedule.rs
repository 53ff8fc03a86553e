//! `muster schedule next`: check an expression by its next fire times.

use anyhow::Context;
use muster::schedule::{Clock, Schedule, SystemClock};

#[derive(Debug, clap::Args)]
pub(crate) struct ScheduleCmd {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print the next fire times of a cron expression, `every DURATION` or `at HH:MM[:SS]`.
    Next {
        /// The schedule, e.g. "0 0,12 * * *", "@hourly", "every 30s", "at 19:42".
        expr: String,
        /// Time zone for cron and `at` times (IANA name).
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// How many fire times.
        #[arg(short, default_value_t = 5)]
        n: usize,
    },
}

impl ScheduleCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Action::Next { expr, tz, n } = self.action;
        let schedule = Schedule::parse(&expr)
            .and_then(|s| s.in_zone(&tz))
            .context("cannot use this schedule")?;
        let zone = schedule.zone();
        let next = schedule.upcoming(SystemClock.now(), n);
        if next.is_empty() {
            println!("{schedule}: never fires");
        }
        for t in next {
            println!(
                "{}  ({})",
                t.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z %a"),
                t.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
        Ok(())
    }
}
