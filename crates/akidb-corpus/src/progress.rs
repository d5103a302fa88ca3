//! Progress of a corpus run: a bar on a terminal, a log line every few seconds otherwise, nothing
//! with `--quiet`; and the summary at the end.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often a non-terminal gets a progress line.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What a run did, for the summary line and for callers.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Texts embedded by this run.
    pub texts: u64,
    /// Rows kept from an earlier, interrupted run.
    pub resumed: u64,
    /// Invalid records skipped with `--skip-invalid`.
    pub skipped: u64,
    pub tokens: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn texts_per_second(&self) -> f64 {
        self.texts as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum Mode {
    Bar(ProgressBar),
    Log { last: Instant },
    Quiet,
}

pub struct Progress {
    mode: Mode,
    total: Option<u64>,
    /// Rows done, including resumed ones.
    position: u64,
    /// Rows done when this run started (resumed), excluded from the rate.
    start_position: u64,
    started: Instant,
}

impl Progress {
    pub fn new(total: Option<u64>, resumed: u64, quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar(bar(total, resumed))
        } else {
            Mode::Log { last: Instant::now() }
        };
        Self { mode, total, position: resumed, start_position: resumed, started: Instant::now() }
    }

    pub fn advance(&mut self, rows: u64) {
        self.position += rows;
        match &mut self.mode {
            Mode::Bar(bar) => bar.set_position(self.position),
            Mode::Log { last } if last.elapsed() >= LOG_EVERY => {
                *last = Instant::now();
                let rate = (self.position - self.start_position) as f64 / self.started.elapsed().as_secs_f64();
                match self.total {
                    Some(total) if total > 0 => {
                        let left = total.saturating_sub(self.position) as f64 / rate.max(1e-9);
                        tracing::info!(
                            "{}/{} texts ({:.1}%), {:.0} texts/s, ETA {}",
                            self.position,
                            total,
                            100.0 * self.position as f64 / total as f64,
                            rate,
                            human(Duration::from_secs_f64(left.min(1e9)))
                        );
                    }
                    _ => tracing::info!("{} texts, {:.0} texts/s", self.position, rate),
                }
            }
            Mode::Log { .. } | Mode::Quiet => {}
        }
    }

    /// Takes the bar down and logs the summary (unless quiet).
    pub fn finish(self, summary: &Summary, output: &str) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish();
        }
        if matches!(self.mode, Mode::Quiet) {
            return;
        }
        let mut extra = String::new();
        if summary.resumed > 0 {
            extra.push_str(&format!(", {} kept from the earlier run", summary.resumed));
        }
        if summary.skipped > 0 {
            extra.push_str(&format!(", {} invalid skipped", summary.skipped));
        }
        tracing::info!(
            "embedded {} texts ({} tokens) in {:.1} s, {:.0} texts/s{extra} → {output}",
            summary.texts,
            summary.tokens,
            summary.elapsed.as_secs_f64(),
            summary.texts_per_second(),
        );
    }

    /// Takes the bar down without a summary (the run failed).
    pub fn abandon(self) {
        if let Mode::Bar(bar) = self.mode {
            bar.abandon();
        }
    }
}

/// The rate and the time left once there is a rate to go by; nothing before the first batch is
/// done (a bar that says `0 texts/s ETA 0s` is wrong, not just early).
fn rate_and_eta(per_sec: f64, left: Option<u64>) -> String {
    if !(per_sec.is_finite() && per_sec > 0.0) {
        return String::new();
    }
    match left {
        Some(left) => format!("{per_sec:.0} texts/s  ETA {}", human(Duration::from_secs_f64(left as f64 / per_sec))),
        None => format!("{per_sec:.0} texts/s"),
    }
}

fn bar(total: Option<u64>, resumed: u64) -> ProgressBar {
    let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let left = state.len().map(|len| len.saturating_sub(state.pos()));
        let _ = write!(w, "{}", rate_and_eta(state.per_sec(), left));
    };
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
            "{bar:30} {pos}/{len} texts  {rate}",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{spinner} {pos} texts  {rate}  {elapsed}",
        ),
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).with_key("rate", rate);
    bar.set_style(style);
    bar.set_position(resumed);
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `1h02m`, `3m05s`, `12s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_and_no_eta_before_there_is_a_rate() {
        assert_eq!(rate_and_eta(0.0, Some(1540)), "");
        assert_eq!(rate_and_eta(f64::NAN, Some(1540)), "");
        assert_eq!(rate_and_eta(100.0, Some(1500)), "100 texts/s  ETA 15s");
        assert_eq!(rate_and_eta(100.0, None), "100 texts/s");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(12)), "12s");
        assert_eq!(human(Duration::from_secs(185)), "3m05s");
        assert_eq!(human(Duration::from_secs(3720)), "1h02m");
    }
}
