//! `muster top`: a live view of the hosts' monitors (every host of a
//! fleet, or one with `--host`), refreshed in place,
//! sortable, fitting 80 columns; `q` quits. Drawn with ratatui on
//! crossterm (raw mode, the alternate screen, keys, the terminal's size);
//! `muster ctl top` prints the same table once, rendered into a buffer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use muster_host::ControlRequest;
use ratatui::DefaultTerminal;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Text;
use ratatui::widgets::{Cell, Paragraph, Row, Table, Widget};
use serde_json::Value;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct TopCmd {
    #[command(flatten)]
    bus: BusArg,
    /// The host's token file [default: $MUSTER_TOKEN_FILE, else .muster/token].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Watch this host only, by name [default: every host on the bus,
    /// each transaction titled with its host's name].
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
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

/// One instance's line.
struct Line {
    service: String,
    instance: String,
    /// Process figures, when the instance has a process.
    process: Option<(u64, f64, f64)>,
    state: String,
    restarts: u64,
    rate: f64,
}

/// One transaction: its title and its instances, sorted.
struct Group {
    title: String,
    lines: Vec<Line>,
}

/// The `muster.host.top` answer as groups of lines, sorted by `sort`.
fn groups(top: &Value, sort: Sort, rates: &Rates) -> Vec<Group> {
    let now = Instant::now();
    top.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut lines: Vec<Line> = t["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    let p = &i["process"];
                    let instance = i["instance"].as_str().unwrap_or("");
                    let rate = rates.get(instance).map_or(0.0, |(at, n)| {
                        let dt = now.duration_since(*at).as_secs_f64();
                        if dt > 0.0 {
                            requests(i).saturating_sub(*n) as f64 / dt
                        } else {
                            0.0
                        }
                    });
                    Line {
                        service: i["service"].as_str().unwrap_or("").to_owned(),
                        instance: if instance.is_empty() { "-" } else { instance }.to_owned(),
                        process: p.is_object().then(|| {
                            (
                                p["pid"].as_u64().unwrap_or(0),
                                total(p, "cpu"),
                                total(p, "rss") / 1_048_576.0,
                            )
                        }),
                        state: i["state"].as_str().unwrap_or("").to_owned(),
                        restarts: i["restarts"].as_u64().unwrap_or(0),
                        rate,
                    }
                })
                .collect();
            let key = |l: &Line, f: fn(&(u64, f64, f64)) -> f64| l.process.as_ref().map_or(-1.0, f);
            match sort {
                Sort::Cpu => lines.sort_by(|a, b| key(b, |p| p.1).total_cmp(&key(a, |p| p.1))),
                Sort::Memory => lines.sort_by(|a, b| key(b, |p| p.2).total_cmp(&key(a, |p| p.2))),
                Sort::Restarts => lines.sort_by_key(|l| std::cmp::Reverse(l.restarts)),
                Sort::Name => {
                    lines.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)))
                }
            }
            let host = t["host"]
                .as_str()
                .map_or_else(String::new, |h| format!("{h}: "));
            Group {
                title: format!(
                    "{host}{} {} ({})",
                    t["context"].as_str().unwrap_or("?"),
                    t["transaction"].as_str().unwrap_or("?"),
                    t["state"].as_str().unwrap_or("?")
                ),
                lines,
            }
        })
        .collect()
}

/// Column widths; instance lines are indented by two, so their first
/// column is two narrower than the header's.
const HEADER_WIDTHS: [u16; 8] = [16, 16, 7, 9, 6, 7, 4, 7];
const INDENT: u16 = 2;

fn widths(first: u16) -> [Constraint; 8] {
    let mut w = HEADER_WIDTHS.map(Constraint::Length);
    w[0] = Constraint::Length(first);
    w
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Text::from(s).alignment(Alignment::Right))
}

/// Rows the groups take on screen (a title and its lines each), with the header.
fn height(groups: &[Group]) -> u16 {
    let rows: usize = 1 + groups.iter().map(|g| 1 + g.lines.len()).sum::<usize>();
    u16::try_from(rows).unwrap_or(u16::MAX)
}

/// Draws the header and the groups into `area` of `buf`, cutting what
/// does not fit.
fn draw(groups: &[Group], area: Rect, buf: &mut Buffer) {
    let header = [
        "SERVICE", "INSTANCE", "PID", "STATE", "CPU%", "RSS MB", "RST", "REQ/S",
    ];
    let header = Row::new(header.into_iter().enumerate().map(|(i, h)| {
        if i == 0 || i == 1 || i == 3 {
            Cell::from(h)
        } else {
            right(h.to_owned())
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let mut y = area.y;
    let bottom = area.bottom();
    let mut at = |height: u16, indent: u16| -> Option<Rect> {
        if y >= bottom {
            return None;
        }
        let r = Rect::new(
            area.x + indent.min(area.width),
            y,
            area.width.saturating_sub(indent),
            height.min(bottom - y),
        );
        y += r.height;
        Some(r)
    };
    if let Some(r) = at(1, 0) {
        Widget::render(Table::new([header], widths(HEADER_WIDTHS[0])), r, buf);
    }
    for g in groups {
        let Some(r) = at(1, 0) else { return };
        Widget::render(
            Paragraph::new(g.title.as_str()).style(Style::new().add_modifier(Modifier::BOLD)),
            r,
            buf,
        );
        let rows = g.lines.iter().map(|l| {
            let (pid, cpu, rss) = match l.process {
                Some((pid, cpu, rss)) => {
                    (pid.to_string(), format!("{cpu:.1}"), format!("{rss:.1}"))
                }
                None => ("-".into(), "-".into(), "-".into()),
            };
            Row::new([
                Cell::from(l.service.clone()),
                Cell::from(l.instance.clone()),
                right(pid),
                Cell::from(l.state.clone()),
                right(cpu),
                right(rss),
                right(l.restarts.to_string()),
                right(format!("{:.1}", l.rate)),
            ])
        });
        let len = u16::try_from(g.lines.len()).unwrap_or(u16::MAX);
        let Some(r) = at(len, INDENT) else { return };
        Widget::render(Table::new(rows, widths(HEADER_WIDTHS[0] - INDENT)), r, buf);
    }
}

/// The screen for `top` (the `muster.host.top` answer) as plain text,
/// `width` columns: what `muster ctl top` prints.
pub(crate) fn render(top: &Value, sort: Sort, width: usize, rates: &Rates) -> String {
    let groups = groups(top, sort, rates);
    let width = u16::try_from(width).unwrap_or(u16::MAX);
    let area = Rect::new(0, 0, width, height(&groups));
    let mut buf = Buffer::empty(area);
    draw(&groups, area, &mut buf);
    let mut out = String::new();
    for y in 0..area.height {
        let line: String = (0..area.width).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The terminal in raw mode on the alternate screen, put back when dropped
/// (also when `top` ends with an error).
struct Screen(DefaultTerminal);

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        use std::io::IsTerminal;
        anyhow::ensure!(
            std::io::stdout().is_terminal() && std::io::stdin().is_terminal(),
            "muster top needs a terminal; `muster ctl top` prints the same table once"
        );
        Ok(Self(ratatui::try_init()?))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

impl TopCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let token = crate::ctl::token_from(self.token_file.as_deref())?;
        let hosts = crate::ctl::watched_hosts(
            muster_host::Controller::new(self.bus.client().await?, &token),
            self.host.clone(),
        )
        .await?;
        let mut screen = Screen::enter()?;
        let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel::<KeyEvent>();
        // crossterm's reader blocks: it gets a thread of its own, which
        // ends with the process (or when the screen is gone).
        std::thread::spawn(move || {
            while let Ok(e) = event::read() {
                if let Event::Key(k) = e
                    && k.kind == KeyEventKind::Press
                    && keys_tx.send(k).is_err()
                {
                    break;
                }
            }
        });
        let mut sort = Sort::Cpu;
        let mut rates = Rates::new();
        let every = self.every.max(Duration::from_millis(100));
        loop {
            let top = crate::ctl::top_of(&hosts, &ControlRequest::default()).await?;
            let status = format!(
                "muster top  {}  sort: {:?}   c cpu  m memory  r restarts  n name  q quit",
                clock_now(),
                sort
            );
            let shown = groups(&top, sort, &rates);
            screen.0.draw(|frame| {
                let area = frame.area();
                let [line, body] =
                    Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
                frame.render_widget(Paragraph::new(status.as_str()), line);
                draw(&shown, body, frame.buffer_mut());
            })?;
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
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    k = keys.recv() => {
                        let Some(k) = k else { return Ok(()) };
                        let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                        match k.code {
                            _ if ctrl_c => return Ok(()),
                            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                            KeyCode::Char('c') => { sort = Sort::Cpu; break }
                            KeyCode::Char('m') => { sort = Sort::Memory; break }
                            KeyCode::Char('r') => { sort = Sort::Restarts; break }
                            KeyCode::Char('n') => { sort = Sort::Name; break }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

fn clock_now() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, id: &str, cpu: f64, rss_mb: u64, restarts: u64) -> Value {
        serde_json::json!({
            "service": service, "instance": id, "state": "running", "restarts": restarts,
            "process": {"pid": 42, "cpu": cpu, "rss": rss_mb << 20,
                        "children": [{"pid": 43, "cpu": 1.0, "rss": 1 << 20}]},
            "methods": {"shout": {"num_requests": 10}}
        })
    }

    #[test]
    fn the_table_fits_its_width_sorts_and_sums_children() {
        let top = serde_json::json!([{
            "context": "demo", "transaction": "demo-1", "state": "running",
            "instances": [
                instance("echo", "echo-aaaa", 5.0, 10, 0),
                instance("a-service-with-a-very-long-name", "x-bbbb", 50.0, 3, 2),
                {"service": "idle", "instance": "", "state": "stopped", "restarts": 0},
            ]
        }]);
        let text = render(&top, Sort::Cpu, 80, &Rates::new());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        assert!(
            lines[0].starts_with("SERVICE") && lines[0].contains("REQ/S"),
            "{text}"
        );
        assert_eq!(lines[1], "demo demo-1 (running)");
        // CPU order, children included (50 + 1 before 5 + 1), the process-
        // less instance last; long names cut to their column.
        assert!(lines[2].starts_with("  a-service-with"), "{text}");
        assert!(lines[2].contains(" 51.0 "), "{text}");
        assert!(
            lines[3].starts_with("  echo ") && lines[3].contains(" 11.0 "),
            "{text}"
        );
        assert!(
            lines[4].starts_with("  idle ") && lines[4].contains(" - "),
            "{text}"
        );
        let by_memory = render(&top, Sort::Memory, 80, &Rates::new());
        assert!(
            by_memory.lines().nth(2).unwrap().starts_with("  echo "),
            "{by_memory}"
        );
        let narrow = render(&top, Sort::Name, 40, &Rates::new());
        assert!(narrow.lines().all(|l| l.chars().count() <= 40), "{narrow}");
    }

    #[test]
    fn a_fleet_titles_each_transaction_with_its_host() {
        let top = serde_json::json!([
            {"host": "alpha", "context": "shop", "transaction": "t1", "state": "running",
             "instances": [instance("echo", "echo-aaaa", 1.0, 5, 0)]},
            {"host": "beta", "context": "shop", "transaction": "t2", "state": "running",
             "instances": [instance("echo", "echo-bbbb", 2.0, 5, 0)]},
        ]);
        let text = render(&top, Sort::Cpu, 80, &Rates::new());
        let titles: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("alpha") || l.starts_with("beta"))
            .collect();
        assert_eq!(
            titles,
            ["alpha: shop t1 (running)", "beta: shop t2 (running)"],
            "{text}"
        );
    }
}
