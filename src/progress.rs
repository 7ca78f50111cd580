//! What `up` and `down` show on stderr while they work: the line log, or on a terminal one live
//! line per host (its phase, current step and elapsed time; ticked when done, marked as soon as
//! it fails). Phases, steps and failures are all announced through here, so this is the one place
//! that decides between the two; without [`start`] (plan, check, tests) it is the line log.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::remote::Change;
use crate::term::{clean, truncate};

struct Line {
    bar: ProgressBar,
    phase: Mutex<String>,
}

struct Live {
    multi: MultiProgress,
    hosts: HashMap<String, Line>,
    /// The longest host name, so the lines' columns align.
    width: usize,
}

static LIVE: OnceLock<Live> = OnceLock::new();

/// Switches to the live view for `hosts`, unless `plain` is asked for or stderr is not a
/// terminal (a pipe or log file keeps the line log, which reads well there).
pub fn start<'a>(hosts: impl IntoIterator<Item = &'a str>, plain: bool) {
    if plain || !std::io::stderr().is_terminal() {
        return;
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let hosts: Vec<&str> = hosts.into_iter().collect();
    let width = hosts.iter().map(|h| h.chars().count()).max().unwrap_or(0);
    let style = style(&format!("{{spinner:.cyan}} {{prefix:{width}.bold}} {{elapsed:>4}}  {{wide_msg}}"));
    let lines = hosts
        .iter()
        .map(|h| {
            let bar =
                multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(clean(h).into_owned()));
            bar.set_message("waiting");
            bar.enable_steady_tick(Duration::from_millis(120));
            (h.to_string(), Line { bar, phase: Mutex::new(String::new()) })
        })
        .collect();
    let _ = LIVE.set(Live { multi, hosts: lines, width });
}

fn style(template: &str) -> ProgressStyle {
    // The templates are fixed strings of this file: a bad one is a bug the tests show.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// The style of a finished line: `mark` in place of the spinner.
fn finished(mark: &str, msg: &str) -> ProgressStyle {
    let width = LIVE.get().map_or(0, |l| l.width);
    style(&format!("{mark} {{prefix:{width}.bold}} {{elapsed:>4}}  {{{msg}}}"))
}

fn line(host: &str) -> Option<&'static Line> {
    LIVE.get().and_then(|l| l.hosts.get(host))
}

/// Where log lines (`PIKUBE_LOG`, warnings) go: above the live lines while they show, so a
/// redraw does not overwrite them; stderr otherwise.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LIVE.get() {
            Some(live) => live.multi.suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A phase begins for the whole fleet.
pub fn phase(name: &str) {
    if LIVE.get().is_none() {
        eprintln!("==> {name}");
    }
}

/// A notice for the whole run, shown in both views.
pub fn headline(text: &str) {
    match LIVE.get() {
        Some(live) => {
            let _ = live.multi.println(format!("==> {text}"));
        }
        None => eprintln!("==> {text}"),
    }
}

/// `host` starts `phase` (only the live view shows it per host).
pub fn host_phase(host: &str, phase: &str) {
    if let Some(l) = line(host) {
        *l.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_string();
        l.bar.set_message(phase.to_string());
    }
}

/// A step on `host`: a change being made, or what it waits for. `what` may quote the host
/// (its old hostname), so it is shown escaped.
pub fn step(host: &str, what: &str) {
    let what = clean(what);
    match line(host) {
        Some(l) => {
            let phase = l.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // One terminal line per host: long steps (hook commands) are cut (and `wide_msg` cuts at the width).
            let what = what.lines().next().unwrap_or("");
            l.bar.set_message(format!("{phase} · {}", truncate(what, 100)));
        }
        None => eprintln!("    {host}: {what}"),
    }
}

/// A note not about one host (a file written locally, the fleet's readiness).
pub fn note(text: &str) {
    match LIVE.get() {
        Some(live) => {
            let _ = live.multi.println(format!("    {text}"));
        }
        None => eprintln!("    {text}"),
    }
}

/// `host` failed: its line says so at once (the final report has the whole error).
pub fn failed(host: &str, why: &str) {
    if let Some(l) = line(host) {
        l.bar.set_style(finished("✘", "wide_msg:.red"));
        let first = clean(why).lines().next().unwrap_or("").to_string();
        l.bar.finish_with_message(format!("FAILED: {}", truncate(&first, 100)));
    }
}

/// Ctrl-C or an error that ends the run: the lines stop where they are, marked `why`, and stop
/// redrawing, so the message printed after them stays whole.
pub fn stop(why: &'static str) {
    let Some(live) = LIVE.get() else { return };
    for l in live.hosts.values().filter(|l| !l.bar.is_finished()) {
        l.bar.abandon_with_message(why);
    }
}

/// The run is over: hosts still going are ticked done, with how many changes each had.
pub fn finish(changes: &[Change]) {
    let Some(live) = LIVE.get() else { return };
    for (host, l) in live.hosts.iter().filter(|(_, l)| !l.bar.is_finished()) {
        let n = changes.iter().filter(|c| &c.host == host).count();
        l.bar.set_style(finished("✔", "wide_msg"));
        l.bar.finish_with_message(if n == 0 { "done, no changes".to_string() } else { format!("done, {n} change(s)") });
    }
}
