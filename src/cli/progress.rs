//! Progress of the long CLI runs: an indicatif bar on a terminal, plain lines otherwise.
//! `discover` reports through [`crate::fleet::discover::Progress`]; `apply` through
//! [`ApplyProgress`], fed each group as it finishes.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::fleet::apply::GroupApplied;
use crate::fleet::discover::Progress;

/// A bar drawn on stderr, styled by an indicatif template.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(len: u64, template: &str, chars: Option<&str>) -> Self {
        let bar = indicatif::ProgressBar::new(len);
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(match chars {
                Some(chars) => style.progress_chars(chars),
                None => style,
            });
        }
        Self(bar)
    }
}

impl Progress for Bar {
    fn update(&self, done: usize, pending: usize) {
        self.0.set_length((done + pending) as u64);
        self.0.set_position(done as u64);
    }

    fn finish(&self, _: usize) {
        self.0.finish_and_clear();
    }
}

/// `discover`'s plain line on stderr every few seconds, for logs and pipes.
struct Lines {
    /// When the last line was printed (ms since the epoch).
    last_ms: Mutex<Option<u64>>,
    /// What "every few seconds" is read on.
    clock: Arc<dyn Clock>,
}

/// The least time between two of [`Lines`]' lines, in ms.
const LINE_EVERY_MS: u64 = 2000;

impl Progress for Lines {
    fn update(&self, done: usize, pending: usize) {
        let mut last = self.last_ms.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now_ms();
        if last.is_none_or(|t| now.saturating_sub(t) >= LINE_EVERY_MS) {
            *last = Some(now);
            eprintln!(
                "discover: {done} of {} departments known so far read",
                done + pending
            );
        }
    }

    fn finish(&self, done: usize) {
        eprintln!("discover: done, {done} departments read");
    }
}

/// `discover`'s progress: a bar when stderr is a terminal, plain lines otherwise.
pub fn discover_progress(clock: Arc<dyn Clock>) -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar::new(
            1,
            "discovering departments [{bar:30}] {pos}/{len} ({elapsed})",
            Some("=> "),
        ))
    } else {
        Box::new(Lines {
            last_ms: Mutex::new(None),
            clock,
        })
    }
}

/// `apply`'s progress: a bar when stdout is a terminal (failures printed above it), a
/// plain line per group on stdout otherwise.
pub struct ApplyProgress(Option<Bar>);

impl ApplyProgress {
    pub fn new(groups: usize) -> Self {
        if !std::io::stdout().is_terminal() {
            return Self(None);
        }
        Self(Some(Bar::new(
            groups as u64,
            "{bar:40} {pos}/{len} groups, {elapsed} ({eta} left) {msg}",
            None,
        )))
    }

    /// One group finished.
    pub fn group(&self, g: &GroupApplied) {
        match &self.0 {
            Some(Bar(bar)) => {
                if g.failed() {
                    bar.println(g.line());
                }
                bar.inc(1);
            }
            None => {
                let _ = super::write_stdout(&format!("{}\n", g.line()));
            }
        }
    }

    pub fn finish(&self) {
        if let Some(Bar(bar)) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
