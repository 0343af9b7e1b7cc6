//! How `ml` prints: data on stdout (a table for people, or with `--json` the
//! api's answer types as JSON), diagnostics on stderr. Colour only when the
//! stream is a terminal, never with `NO_COLOR` set (or `--color never`).

use crate::error::{CliError, Result};
use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Utc};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use fetchml_events::job::JobStatus;
use serde::Serialize;
use std::io::IsTerminal as _;

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
    /// Colour on stdout.
    pub color: bool,
    /// Colour on stderr.
    pub color_err: bool,
    pub stdout_tty: bool,
    pub stderr_tty: bool,
}

impl Out {
    pub fn new(json: bool, choice: ColorChoice) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let stdout_tty = std::io::stdout().is_terminal();
        let stderr_tty = std::io::stderr().is_terminal();
        let decide = |tty: bool| match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        Out { json, color: decide(stdout_tty), color_err: decide(stderr_tty), stdout_tty, stderr_tty }
    }

    /// One JSON document on stdout: indented on a terminal, one line otherwise.
    pub fn json<T: Serialize + ?Sized>(&self, v: &T) -> Result<()> {
        let text = if self.stdout_tty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) };
        println!("{}", text.map_err(|e| CliError::local("JSON output", e))?);
        Ok(())
    }

    /// One compact JSON line on stdout (NDJSON streams).
    pub fn json_line<T: Serialize + ?Sized>(&self, v: &T) -> Result<()> {
        println!("{}", serde_json::to_string(v).map_err(|e| CliError::local("JSON output", e))?);
        Ok(())
    }

    /// A table in the style of `kubectl get`: no borders, a header row.
    pub fn table(&self, header: &[&str]) -> Table {
        let mut t = Table::new();
        t.load_preset(presets::NOTHING);
        if self.color {
            t.enforce_styling();
        } else {
            t.force_no_tty();
        }
        if self.stdout_tty {
            t.set_content_arrangement(ContentArrangement::Dynamic);
        }
        if !header.is_empty() {
            t.set_header(header.iter().map(|h| {
                let c = Cell::new(h);
                if self.color { c.add_attribute(comfy_table::Attribute::Bold) } else { c }
            }));
        }
        t
    }

    /// Prints a table, columns two spaces apart (set here, once every column exists).
    pub fn print_table(&self, t: &mut Table) {
        for col in t.column_iter_mut() {
            col.set_padding((0, 2));
        }
        for line in t.lines() {
            println!("{}", line.trim_end());
        }
    }

    /// A job state as a table cell, coloured by outcome.
    pub fn state_cell(&self, s: JobStatus) -> Cell {
        let c = Cell::new(state_name(s));
        if !self.color {
            return c;
        }
        match state_color(s) {
            Some(col) => c.fg(col),
            None => c,
        }
    }

    /// `text` in `style` on stderr (if colour is on there).
    pub fn err_paint(&self, text: &str, style: Style) -> String {
        if self.color_err { format!("{style}{text}{style:#}") } else { text.to_owned() }
    }

    /// `text` in `style` on stdout.
    pub fn paint(&self, text: &str, style: Style) -> String {
        if self.color { format!("{style}{text}{style:#}") } else { text.to_owned() }
    }

    /// A state painted for stdout.
    pub fn state(&self, s: JobStatus) -> String {
        self.paint(state_name(s), state_style(s))
    }

    /// A state painted for stderr.
    pub fn err_state(&self, s: JobStatus) -> String {
        self.err_paint(state_name(s), state_style(s))
    }
}

pub fn state_name(s: JobStatus) -> &'static str {
    s.as_str()
}

fn state_color(s: JobStatus) -> Option<Color> {
    match s {
        JobStatus::Succeeded => Some(Color::Green),
        JobStatus::Failed | JobStatus::TimedOut | JobStatus::DeadLettered => Some(Color::Red),
        JobStatus::Running => Some(Color::Cyan),
        JobStatus::RetryScheduled => Some(Color::Yellow),
        JobStatus::Cancelled => Some(Color::DarkGrey),
        JobStatus::Queued => None,
    }
}

pub fn state_style(s: JobStatus) -> Style {
    let c = match s {
        JobStatus::Succeeded => AnsiColor::Green,
        JobStatus::Failed | JobStatus::TimedOut | JobStatus::DeadLettered => AnsiColor::Red,
        JobStatus::Running => AnsiColor::Cyan,
        JobStatus::RetryScheduled => AnsiColor::Yellow,
        JobStatus::Cancelled | JobStatus::Queued => return Style::new().dimmed(),
    };
    Style::new().fg_color(Some(c.into()))
}

pub const BOLD: Style = Style::new().bold();
pub const DIM: Style = Style::new().dimmed();
pub const RED: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red))).bold();

/// "3m ago", "2h ago", or the date for older times.
pub fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => t.format("%Y-%m-%d").to_string(),
    }
}

/// "1m05s", "2h03m", "850ms".
pub fn duration(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A metric value, short: 4 significant digits.
pub fn num(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 1e-3 && v.abs() < 1e6) {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_owned()
    } else {
        format!("{v:.3e}")
    }
}

pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}
