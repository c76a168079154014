//! The figures table: printed as it fills, written to BENCHMARKS.md at the end.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Options;
use crate::util::fmt_duration;

/// One line of the table.
pub struct Row {
    /// Issue #7 item.
    pub section: &'static str,
    /// What was measured.
    pub what: String,
    /// credbroker's figure.
    pub value: String,
    /// The same-run baseline.
    pub baseline: String,
    /// Ratio or derived result.
    pub result: String,
    /// The target, when there is one, and whether it is met.
    pub target: String,
}

pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    started: Instant,
    header: String,
    quick: bool,
}

impl Report {
    pub fn new(options: &Options) -> Self {
        let header = machine_info();
        println!("{header}");
        Self {
            rows: Vec::new(),
            notes: Vec::new(),
            started: Instant::now(),
            header,
            quick: options.quick,
        }
    }

    /// Adds a row and prints it.
    pub fn row(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        result: impl Into<String>,
        target: impl Into<String>,
    ) {
        let row = Row {
            section,
            what: what.into(),
            value: value.into(),
            baseline: baseline.into(),
            result: result.into(),
            target: target.into(),
        };
        println!(
            "[{}] {}: {} | baseline {} | {} | {}",
            row.section, row.what, row.value, row.baseline, row.result, row.target
        );
        self.rows.push(row);
    }

    /// A remark printed under the table.
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("note: {text}");
        self.notes.push(text);
    }

    /// Rows for the criterion figures of `benches/validation.rs`, if it ran.
    pub fn criterion(&mut self) {
        let Some(dir) = criterion_dir() else {
            self.note("criterion results not found; run `cargo bench --bench validation` first");
            return;
        };
        let read = |id: &str| -> Option<Duration> {
            let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let ns = v["median"]["point_estimate"].as_f64()?;
            Some(Duration::from_secs_f64(ns / 1e9))
        };
        match (
            read("token_validation/first_seen"),
            read("token_validation/cached"),
        ) {
            (Some(cold), Some(cached)) => self.row(
                "2 token validation",
                "validate: first-seen RS256 token vs cached token (criterion median)",
                format!("first-seen {}", fmt_duration(cold)),
                format!("cached {}", fmt_duration(cached)),
                format!(
                    "cached is {:.0}x cheaper",
                    cold.as_secs_f64() / cached.as_secs_f64()
                ),
                "",
            ),
            _ => self.note("criterion token_validation results missing"),
        }
        if let (Some(sha), Some(broker)) = (
            read("hot_path/sha256_token"),
            read("hot_path/broker_credentials_cached"),
        ) {
            self.row(
                "2 token validation",
                "Broker::credentials in process, cached token + identity (criterion median)",
                fmt_duration(broker),
                format!("SHA-256 of the token alone: {}", fmt_duration(sha)),
                "",
                "",
            );
        }
    }

    /// Prints the table and writes BENCHMARKS.md.
    pub fn finish(&self) {
        let mut table = String::new();
        table.push_str(
            "| # | Benchmark | credbroker | Baseline (same run) | Result | Target |\n\
             |---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} |",
                r.section,
                esc(&r.what),
                esc(&r.value),
                esc(&r.baseline),
                esc(&r.result),
                esc(&r.target)
            );
        }
        let mut notes = String::new();
        for n in &self.notes {
            let _ = writeln!(notes, "- {}", n);
        }
        let elapsed = self.started.elapsed();
        println!("\n{table}\n{notes}");
        println!("load harness took {}", fmt_duration(elapsed));
        let out = std::env::var_os("CB_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
        let quick = if self.quick {
            "\n> **Quick (smoke) run** (`CB_BENCH_QUICK=1`): sizes are reduced; do not quote these \
             figures.\n"
        } else {
            ""
        };
        let text = format!(
            "# Benchmarks\n\n\
             Produced by `bash bench/run.sh` (criterion micro-benchmarks in `benches/validation.rs`, \
             system benchmarks in `benches/load/`). Every figure sits next to a baseline measured in \
             the same run, on the same machine, minutes apart: compare ratios, not absolute numbers, \
             across machines. How to read each row: README, section \
             \"Benchmarks\".\n{quick}\n\
             ## Machine\n\n{header}\n\n## Figures\n\n{table}\n## Notes\n\n{notes}\n\
             The load harness took {elapsed}.\n",
            header = self.header,
            elapsed = fmt_duration(elapsed),
        );
        // The soak (bench/soak.sh) owns the last section; keep it.
        let soak = std::fs::read_to_string(&out).unwrap_or_default();
        let text = match crate::soak::existing_section(&soak) {
            Some(section) => format!("{text}\n{section}"),
            None => text,
        };
        match std::fs::write(&out, text) {
            Ok(()) => println!("wrote {}", out.display()),
            Err(e) => eprintln!("cannot write {}: {e}", out.display()),
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `target/criterion`, found from this executable's path (`target/release/deps/load-…`).
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.parent()?.join("criterion");
    dir.is_dir().then_some(dir)
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine_info() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let commit = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    format!(
        "- date: {date}\n\
         - commit: {commit}{dirty}\n\
         - CPU: {model}, {cpus} logical CPUs available to the process\n\
         - memory: {mem}\n\
         - kernel: {kernel}\n\
         - toolchain: {rustc}\n\
         - wrk: {wrk}\n\
         - load average at start: {load} (other processes share the CPUs; hence same-run baselines)",
        dirty = if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        kernel = command_line("uname", &["-srm"]),
        rustc = command_line("rustc", &["-V"]),
        wrk = command_line("wrk", &["-v"])
            .lines()
            .next()
            .unwrap_or("not installed")
            .to_owned(),
        load = load.join(" "),
    )
}
