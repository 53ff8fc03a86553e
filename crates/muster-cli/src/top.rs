//! `muster top`: a live view of the host's monitor, refreshed in place,
//! sortable, 80 columns wide; `q` quits.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use muster_host::ControlRequest;
use serde_json::Value;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct TopCmd {
    #[command(flatten)]
    bus: BusArg,
    /// The host's token file [default: $MUSTER_TOKEN_FILE, else .muster/token].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Time between refreshes (`1s`, `500ms`, or seconds), at least 100ms.
    #[arg(long, default_value = "1s", value_parser = muster_core::duration::parse)]
    every: Duration,
}

/// Sort order of the rows within a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sort {
    Cpu,
    Memory,
    Restarts,
    Name,
}

/// Requests seen per instance at the previous refresh.
pub(crate) type Rates = HashMap<String, (Instant, u64)>;

fn total(p: &Value, field: &str) -> f64 {
    p[field].as_f64().unwrap_or(0.0)
        + p["children"]
            .as_array()
            .map_or(0.0, |c| c.iter().map(|c| total(c, field)).sum())
}

fn requests(i: &Value) -> u64 {
    i["methods"].as_object().map_or(0, |m| {
        m.values().filter_map(|r| r["num_requests"].as_u64()).sum()
    })
}

fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_owned()
    } else {
        s.chars().take(w.saturating_sub(1)).chain(['~']).collect()
    }
}

/// The screen for `top` (the `muster.host.top` answer), `width` columns.
pub(crate) fn render(top: &Value, sort: Sort, width: usize, rates: &Rates) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:>7} {:<9} {:>6} {:>7} {:>4} {:>7}",
        "SERVICE", "INSTANCE", "PID", "STATE", "CPU%", "RSS MB", "RST", "REQ/S"
    );
    let now = Instant::now();
    for t in top.as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{}",
            cut(
                &format!(
                    "{} {} ({})",
                    t["context"].as_str().unwrap_or("?"),
                    t["transaction"].as_str().unwrap_or("?"),
                    t["state"].as_str().unwrap_or("?")
                ),
                width
            )
        );
        let mut rows: Vec<&Value> = t["instances"].as_array().into_iter().flatten().collect();
        let key = |i: &Value, f: &str| {
            if i["process"].is_object() {
                total(&i["process"], f)
            } else {
                -1.0
            }
        };
        match sort {
            Sort::Cpu => rows.sort_by(|a, b| key(b, "cpu").total_cmp(&key(a, "cpu"))),
            Sort::Memory => rows.sort_by(|a, b| key(b, "rss").total_cmp(&key(a, "rss"))),
            Sort::Restarts => {
                rows.sort_by_key(|i| std::cmp::Reverse(i["restarts"].as_u64().unwrap_or(0)))
            }
            Sort::Name => rows.sort_by_key(|i| {
                (
                    i["service"].as_str().unwrap_or("").to_owned(),
                    i["slot"].as_u64(),
                )
            }),
        }
        for i in rows {
            let p = &i["process"];
            let has = p.is_object();
            let inst = i["instance"].as_str().unwrap_or("");
            let rate = rates
                .get(inst)
                .map(|(at, n)| {
                    let dt = now.duration_since(*at).as_secs_f64();
                    if dt > 0.0 {
                        requests(i).saturating_sub(*n) as f64 / dt
                    } else {
                        0.0
                    }
                })
                .unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{}",
                cut(
                    &format!(
                        "  {:<14} {:<16} {:>7} {:<9} {:>6} {:>7} {:>4} {:>7}",
                        cut(i["service"].as_str().unwrap_or(""), 14),
                        cut(if inst.is_empty() { "-" } else { inst }, 16),
                        if has {
                            p["pid"].to_string()
                        } else {
                            "-".into()
                        },
                        cut(i["state"].as_str().unwrap_or(""), 9),
                        if has {
                            format!("{:.1}", total(p, "cpu"))
                        } else {
                            "-".into()
                        },
                        if has {
                            format!("{:.1}", total(p, "rss") / 1_048_576.0)
                        } else {
                            "-".into()
                        },
                        i["restarts"].as_u64().unwrap_or(0),
                        format!("{rate:.1}")
                    ),
                    width
                )
            );
        }
    }
    out
}

/// Puts the terminal in raw mode until dropped (keys arrive one by one).
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        match tcgetattr(&stdin) {
            Ok(saved) => {
                let mut raw = saved.clone();
                cfmakeraw(&mut raw);
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
                Self(Some(saved))
            }
            Err(_) => Self(None), // not a terminal: keys still work line by line
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

impl TopCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let token = crate::ctl::token_from(self.token_file.as_deref())?;
        let host = muster_host::Controller::new(self.bus.client().await?, &token);
        let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel::<u8>();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let mut stdin = std::io::stdin();
            while let Ok(1) = stdin.read(&mut b) {
                if keys_tx.send(b[0]).is_err() {
                    break;
                }
            }
        });
        let _raw = RawMode::enable();
        let mut sort = Sort::Cpu;
        let mut rates = Rates::new();
        let every = self.every.max(Duration::from_millis(100));
        let mut stdout = std::io::stdout();
        // Alternate screen, cursor hidden; restored on the way out.
        let _ = write!(stdout, "\x1b[?1049h\x1b[?25l");
        let result = loop {
            let top: Value = match crate::ctl::call("top", ControlRequest::default(), &host).await {
                Ok(v) => v,
                Err(e) => break Err(e),
            };
            let width = terminal_width().unwrap_or(80);
            let mut screen = format!(
                "muster top  {}  sort: {:?}   c cpu  m memory  r restarts  n name  q quit\n",
                chrono_now(),
                sort
            );
            screen.push_str(&render(&top, sort, width, &rates));
            let _ = write!(stdout, "\x1b[H");
            for line in screen.lines() {
                let _ = write!(stdout, "{line}\x1b[K\r\n");
            }
            let _ = write!(stdout, "\x1b[J");
            let _ = stdout.flush();
            let now = Instant::now();
            for t in top.as_array().into_iter().flatten() {
                for i in t["instances"].as_array().into_iter().flatten() {
                    if let Some(id) = i["instance"].as_str() {
                        rates.insert(id.to_owned(), (now, requests(i)));
                    }
                }
            }
            let deadline = tokio::time::sleep(every);
            tokio::pin!(deadline);
            let mut quit = false;
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    k = keys.recv() => match k {
                        Some(b'q' | 3) | None => { quit = true; break }
                        Some(b'c') => { sort = Sort::Cpu; break }
                        Some(b'm') => { sort = Sort::Memory; break }
                        Some(b'r') => { sort = Sort::Restarts; break }
                        Some(b'n') => { sort = Sort::Name; break }
                        Some(_) => {}
                    },
                }
            }
            if quit {
                break Ok(());
            }
        };
        let _ = write!(stdout, "\x1b[?25h\x1b[?1049l");
        let _ = stdout.flush();
        result
    }
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

fn terminal_width() -> Option<usize> {
    std::env::var("COLUMNS").ok()?.parse().ok()
}
