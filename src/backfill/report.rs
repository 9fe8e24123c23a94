//! How a running backfill shows its progress: a bar with rows done, rate
//! and time left on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

/// How often the plain log reports.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// One table's progress display.
pub struct Report {
    table: String,
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    /// Where this run started, for its rate.
    started: (Instant, u64),
    logged: Instant,
}

impl Report {
    /// Starts showing `table`'s progress: `done` of `total` rows already.
    pub fn new(table: &str, done: u64, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total.max(done)).with_position(done);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {human_pos}/{human_len} rows, {per_sec:0}, {eta} left",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(table.to_string());
            bar.reset_eta();
            bar
        });
        Self {
            table: table.to_string(),
            bar,
            total,
            done,
            started: (Instant::now(), done),
            logged: Instant::now(),
        }
    }

    /// Counts `rows` more sent.
    pub fn advance(&mut self, rows: u64) {
        self.done += rows;
        if let Some(bar) = &self.bar {
            // Rows inserted since the count make the total an estimate.
            if self.done > bar.length().unwrap_or(0) {
                bar.set_length(self.done);
            }
            bar.set_position(self.done);
        } else if self.logged.elapsed() >= LOG_EVERY {
            self.logged = Instant::now();
            self.log("sending");
        }
    }

    /// Rows per second sent in this run.
    fn rate(&self) -> f64 {
        let (since, from) = self.started;
        let seconds = since.elapsed().as_secs_f64().max(0.001);
        (self.done - from) as f64 / seconds
    }

    fn log(&self, what: &str) {
        let rate = self.rate();
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 {
            format!("{:.0} s", left as f64 / rate)
        } else {
            "unknown".to_string()
        };
        info!(
            table = %self.table,
            rows = self.done,
            of = self.total,
            rows_per_second = rate.round() as u64,
            left = %eta,
            "backfill {what}"
        );
    }

    /// Ends the display; `what` says how ("done", "paused").
    pub fn finish(self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
        self.log(what);
    }
}
