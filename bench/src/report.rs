//! The Markdown report: the machine and versions the numbers come from, the
//! receiver's own capacity, one table row per case, and notes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;

use crate::cases::{CaseResult, Measured, Outcome, Target};

/// Where and with what the bench ran.
pub struct Environment {
    /// UTC date and time of the start.
    pub date: String,
    /// `uname -srm`.
    pub uname: String,
    /// CPU model and logical core count.
    pub cpu: String,
    /// Total memory.
    pub memory: String,
    /// PostgreSQL's `SELECT version()`.
    pub postgres: String,
    /// `skor --version`.
    pub skor: String,
    /// The working tree's commit, if it is a git checkout.
    pub commit: Option<String>,
    /// The bench's command line, shell-quoted.
    pub command: String,
    /// The wal cases' server, when any ran: which, and its version.
    pub wal_server: Option<String>,
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The CPU model and core count from /proc/cpuinfo.
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cores} logical cores")
}

/// MemTotal from /proc/meminfo, in GiB.
fn memory() -> String {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        })
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

impl Environment {
    /// Gathers everything but the server's and skor's versions.
    pub fn gather(postgres: String, skor: String) -> Self {
        let commit = run("git", &["rev-parse", "--short", "HEAD"]).map(|commit| {
            let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit} with uncommitted changes")
            } else {
                commit
            }
        });
        Self {
            date: run("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_default(),
            uname: run("uname", &["-srm"]).unwrap_or_default(),
            cpu: cpu(),
            memory: memory(),
            postgres,
            skor,
            commit,
            command: std::env::args()
                .map(|a| shell_quote(&a))
                .collect::<Vec<_>>()
                .join(" "),
            wal_server: None,
        }
    }
}

/// `n` with thousands separators.
pub(crate) fn int(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Everything the run found, as Markdown.
pub struct Report<'a> {
    /// The machine and versions.
    pub environment: &'a Environment,
    /// The `--scale` factor.
    pub scale: f64,
    /// The HTTP receiver's requests/s on its own, or why it is unknown.
    pub receiver_capacity: Result<f64, String>,
    /// RabbitMQ with a minimal client: messages/s and the client's CPU µs
    /// per message, or why they are unknown; none if no AMQP case ran.
    pub amqp_ceiling: Option<Result<(f64, f64), String>>,
    /// Every case run, in order.
    pub results: &'a [CaseResult],
    /// The run's wall-clock time, in seconds.
    pub seconds: f64,
}

impl Report<'_> {
    /// The report's text.
    pub fn render(&self) -> String {
        let env = self.environment;
        let mut out = String::new();
        let _ = writeln!(out, "# skor benchmark\n");
        let _ = writeln!(out, "- date: {}", env.date);
        let _ = writeln!(
            out,
            "- machine: {}; {}; {} memory",
            env.uname, env.cpu, env.memory
        );
        let _ = writeln!(out, "- PostgreSQL: {}", env.postgres);
        let _ = writeln!(
            out,
            "- skor: {}{}",
            env.skor,
            env.commit
                .as_deref()
                .map_or(String::new(), |c| format!(" (commit {c})"))
        );
        if let Some(wal) = &env.wal_server {
            let _ = writeln!(
                out,
                "- wal cases (wal-*): on {wal}; every other case on the PostgreSQL above"
            );
        }
        let _ = writeln!(out, "- command: `{}`", env.command);
        let _ = writeln!(
            out,
            "- scale: {} (row counts × scale), total run time {:.0} s",
            self.scale, self.seconds
        );
        match &self.receiver_capacity {
            Ok(rate) => {
                let _ = writeln!(
                    out,
                    "- HTTP receiver alone: {} requests/s (16 keep-alive connections POSTing a 250-byte event for 2 s)",
                    int(*rate as usize)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "- HTTP receiver alone: not measured: {e}");
            }
        }
        match &self.amqp_ceiling {
            Some(Ok((rate, cpu))) => {
                let _ = writeln!(
                    out,
                    "- RabbitMQ alone: {} messages/s from a minimal client (one lapin channel, \
                     publisher confirms, persistent, 1000 awaited, 250-byte messages, one \
                     consumer), {cpu:.1} µs of the client's CPU per message, publisher and \
                     consumer together",
                    int(*rate as usize)
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(out, "- RabbitMQ alone: not measured: {e}");
            }
            None => {}
        }
        let _ = writeln!(
            out,
            "\nevents/s: unique deliveries / (last arrival − load start); ratio: against the \
             ceiling (the bench LISTENing itself) of the same load; latency: arrival − commit \
             of the event's transaction; CPU: skor's user+system time from ready until \
             every event arrived (or 10 s without arrivals), per delivered event; RSS: \
             skor's peak resident set (VmHWM); lost: never arrived; dup: arrivals beyond \
             an event's first; committed/s: produced events / the load's own duration \
             (what PostgreSQL accepted while skor ran, the bound of any delivery rate). \
             durable-log runs no skor and no receiver, only the durable-mode triggers: \
             delivered is the events PostgreSQL wrote to skor.event_log and events/s is \
             produced / the load's own duration, so its ratio is the share of the notify \
             ceiling PostgreSQL can log at all, the bound of any durable delivery rate. \
             outbox is the same with a minimal hand-written outbox trigger instead of \
             skor's. The wal-* cases run on the \
             wal server (wal_level = logical) and their ratio is against wal-none of the \
             same load and run: the load alone on that server, no trigger, no slot, nobody \
             reading (its events/s is its commit rate). wal-backlog commits its whole load \
             before skor starts; its events/s runs from skor's start.\n"
        );
        let _ = writeln!(
            out,
            "| case | load | produced | committed/s | delivered | lost | dup | events/s | ratio | p50 ms | p99 ms | max ms | skor CPU µs/event | skor peak RSS MB |"
        );
        let _ = writeln!(
            out,
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        let ceilings: HashMap<&str, f64> = self
            .results
            .iter()
            .filter(|r| r.case.target == Target::Ceiling)
            .filter_map(|r| match &r.outcome {
                Outcome::Measured(m) if m.events_per_second > 0.0 => {
                    Some((r.case.load.name.as_str(), m.events_per_second))
                }
                _ => None,
            })
            .collect();
        let wal_nones = rates(self.results, Target::WalNone);
        for result in self.results {
            let case = &result.case;
            let measured = match &result.outcome {
                Outcome::Failed(reason) => {
                    let reason = reason.replace('|', "\\|").replace('\n', " ");
                    let _ = writeln!(
                        out,
                        "| {} | {} | failed: {reason} | – | – | – | – | – | – | – | – | – | – | – |",
                        case.target.name(),
                        case.load.name
                    );
                    continue;
                }
                Outcome::Measured(m) => m,
            };
            let ratio = if matches!(case.target, Target::Ceiling | Target::WalNone) {
                "1.00".to_string()
            } else if case.target.wal() {
                wal_nones
                    .get(case.load.name.as_str())
                    .map_or("–".into(), |c| {
                        format!("{:.2}", measured.events_per_second / c)
                    })
            } else {
                ceilings
                    .get(case.load.name.as_str())
                    .map_or("–".into(), |c| {
                        format!("{:.2}", measured.events_per_second / c)
                    })
            };
            let [p50, p99, max] = measured
                .latency_ms
                .map_or(["–".to_string(), "–".into(), "–".into()], |l| {
                    l.map(|v| format!("{v:.1}"))
                });
            let (cpu, rss) = match measured.usage {
                Some(usage) if measured.delivered > 0 => (
                    format!("{:.1}", usage.cpu_seconds * 1e6 / measured.delivered as f64),
                    format!("{:.1}", usage.peak_rss_bytes as f64 / 1024.0 / 1024.0),
                ),
                Some(usage) => (
                    "–".into(),
                    format!("{:.1}", usage.peak_rss_bytes as f64 / 1024.0 / 1024.0),
                ),
                None => ("–".into(), "–".into()),
            };
            let committed = if measured.load_seconds > 0.0 {
                measured.produced as f64 / measured.load_seconds
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {ratio} | {p50} | {p99} | {max} | {cpu} | {rss} |",
                case.target.name(),
                case.load.name,
                int(measured.produced),
                int(committed.round() as usize),
                int(measured.delivered),
                int(measured.lost()),
                int(measured.duplicates),
                int(measured.events_per_second.round() as usize),
            );
        }
        wal_targets(&mut out, self.results);
        speed_targets(&mut out, self.results, &self.amqp_ceiling);
        format_costs(&mut out, self.results);
        let noted: Vec<&CaseResult> = self
            .results
            .iter()
            .filter(|r| !r.notes.is_empty())
            .collect();
        if !noted.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for result in noted {
                let _ = writeln!(out, "**{}**\n", result.case.name());
                for note in &result.notes {
                    let _ = writeln!(out, "- `{}`", note.replace('`', "'"));
                }
                let _ = writeln!(out);
            }
        }
        out
    }
}

/// The events/s of each load's `target` case that measured any.
fn rates(results: &[CaseResult], target: Target) -> HashMap<&str, f64> {
    results
        .iter()
        .filter(|r| r.case.target == target)
        .filter_map(|r| match &r.outcome {
            Outcome::Measured(m) if m.events_per_second > 0.0 => {
                Some((r.case.load.name.as_str(), m.events_per_second))
            }
            _ => None,
        })
        .collect()
}

fn measured_case<'a>(
    results: &'a [CaseResult],
    target: Target,
    load: &str,
) -> Option<&'a Measured> {
    results
        .iter()
        .find(|r| r.case.target == target && r.case.load.name == load)
        .and_then(|r| match &r.outcome {
            Outcome::Measured(m) => Some(m),
            Outcome::Failed(_) => None,
        })
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// Durable mode against the minimal outbox trigger, and skor's CPU per
/// event against its budget, when those cases ran.
fn speed_targets(
    out: &mut String,
    results: &[CaseResult],
    amqp_ceiling: &Option<Result<(f64, f64), String>>,
) {
    let mut lines = Vec::new();
    if let (Some(Ok((rate, cpu))), Some(m)) =
        (amqp_ceiling, measured_case(results, Target::Amqp, "burst"))
    {
        let skor_cpu = m
            .usage
            .filter(|_| m.delivered > 0)
            .map(|u| {
                format!(
                    ", {:.1} µs of skor's CPU per event against the client's {cpu:.1}",
                    u.cpu_seconds * 1e6 / m.delivered as f64
                )
            })
            .unwrap_or_default();
        lines.push(format!(
            "- amqp/burst: {} /s = {:.2} × a minimal client's {} /s{skor_cpu}",
            int(m.events_per_second.round() as usize),
            m.events_per_second / rate,
            int(rate.round() as usize)
        ));
    }
    for load in ["burst", "single-4"] {
        let Some(outbox) = measured_case(results, Target::Outbox, load) else {
            continue;
        };
        let base = outbox.committed_per_second();
        for target in [
            Target::DurableLog,
            Target::DurableWebhook,
            Target::DurableWebhookBatch,
        ] {
            let Some(m) = measured_case(results, target, load) else {
                continue;
            };
            let ratio = m.committed_per_second() / base;
            lines.push(format!(
                "- {}/{load} writers' rate: {} /s = {ratio:.2} × outbox's {} /s (target ≥ 0.80), {} lost: {}",
                target.name(),
                int(m.committed_per_second().round() as usize),
                int(base.round() as usize),
                int(m.lost()),
                verdict(ratio >= 0.8 && m.lost() == 0)
            ));
        }
    }
    if let Some(m) = measured_case(results, Target::DurableWebhookBatch, "burst") {
        let ratio = m.events_per_second / m.committed_per_second();
        lines.push(format!(
            "- durable-webhook-batch/burst delivery rate: {} /s = {ratio:.2} × its commit rate (target ≥ 0.90): {}",
            int(m.events_per_second.round() as usize),
            verdict(ratio >= 0.9 && m.lost() == 0)
        ));
    }
    for (recovery, normal) in [
        (Target::Recovery, Target::WebhookBatch),
        (Target::DurableRecovery, Target::DurableWebhookBatch),
        (Target::AmqpRecovery, Target::Amqp),
    ] {
        let (Some(r), Some(n)) = (
            measured_case(results, recovery, "burst"),
            measured_case(results, normal, "burst"),
        ) else {
            continue;
        };
        let ratio = r.events_per_second / n.events_per_second;
        lines.push(format!(
            "- {}: a backlog of {} events drained at {} /s = {ratio:.2} × {}/burst's {} /s (target ≥ 0.80), {} lost: {}",
            recovery.name(),
            int(r.produced),
            int(r.events_per_second.round() as usize),
            normal.name(),
            int(n.events_per_second.round() as usize),
            int(r.lost()),
            verdict(ratio >= 0.8 && r.lost() == 0)
        ));
    }
    for result in results {
        let Outcome::Measured(m) = &result.outcome else {
            continue;
        };
        let Some(usage) = m.usage.filter(|_| m.delivered > 0) else {
            continue;
        };
        let target = result.case.target;
        let load = result.case.load.name.as_str();
        let budget = match (target, load) {
            (_, "single-1" | "single-4" | "single-16") => 30.0,
            (Target::Webhook, "burst") => 20.0,
            (
                Target::Amqp
                | Target::Kafka
                | Target::Redis
                | Target::Mqtt
                | Target::Pubsub
                | Target::Nats,
                "burst",
            ) => 12.0,
            _ => continue,
        };
        let cpu = usage.cpu_seconds * 1e6 / m.delivered as f64;
        lines.push(format!(
            "- {}/{load} CPU: {cpu:.1} µs/event (target ≤ {budget:.0}): {}",
            target.name(),
            verdict(cpu <= budget)
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Speed against its targets\n\nDurable mode against the same run's outbox of the same load: a \
         hand-written trigger that INSERTs the event into a two-column table and NOTIFYs, once per row.\n"
    );
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

/// What a sink's `format` costs: each format case against the plain
/// webhook case of the same load, in the same run.
fn format_costs(out: &mut String, results: &[CaseResult]) {
    let cpu_per_event = |m: &Measured| {
        m.usage
            .filter(|_| m.delivered > 0)
            .map(|u| u.cpu_seconds * 1e6 / m.delivered as f64)
    };
    let mut lines = Vec::new();
    for result in results {
        let target = result.case.target;
        if !matches!(target, Target::WebhookCloudEvents | Target::WebhookDebezium) {
            continue;
        }
        let load = result.case.load.name.as_str();
        let (Outcome::Measured(m), Some(plain)) = (
            &result.outcome,
            measured_case(results, Target::Webhook, load),
        ) else {
            continue;
        };
        let (Some(cpu), Some(plain_cpu)) = (cpu_per_event(m), cpu_per_event(plain)) else {
            continue;
        };
        lines.push(format!(
            "- {}/{load}: {cpu:.1} µs/event = {:.2} × webhook/{load}'s {plain_cpu:.1}; {} /s = {:.2} × its {} /s; {} lost",
            target.name(),
            cpu / plain_cpu,
            int(m.events_per_second.round() as usize),
            m.events_per_second / plain.events_per_second,
            int(plain.events_per_second.round() as usize),
            int(m.lost()),
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## What a format costs\n\nOne POST per event in `format = \"cloudevents\"` or `\"debezium\"`, \
         against the same run's `webhook` case (skor's own format) of the same load: skor's CPU \
         per event delivered and the delivery rate.\n"
    );
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

/// The wal cases against the targets of the wal-mode issue, when any ran.
fn wal_targets(out: &mut String, results: &[CaseResult]) {
    if !results.iter().any(|r| r.case.target.wal()) {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Wal mode against its targets\n\nAll against the same run's wal-none on the same server.\n"
    );
    let none = measured_case(results, Target::WalNone, "burst");
    for target in [Target::WalWebhookBatch, Target::WalKafka] {
        let Some(m) = measured_case(results, target, "burst") else {
            continue;
        };
        let committed = m.committed_per_second();
        if let Some(none) = none {
            let ratio = committed / none.committed_per_second();
            let _ = writeln!(
                out,
                "- {}/burst commit rate with skor reading: {} /s = {ratio:.2} × wal-none's {} /s (target ≥ 0.90): {}",
                target.name(),
                int(committed.round() as usize),
                int(none.committed_per_second().round() as usize),
                verdict(ratio >= 0.9)
            );
        }
        let ratio = m.events_per_second / committed;
        let against_none = none
            .map(|n| {
                format!(
                    " ({:.2} × wal-none's)",
                    m.events_per_second / n.committed_per_second()
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "- {}/burst delivery rate: {} /s = {ratio:.2} × its commit rate{against_none} (target ≥ 0.90), {} lost: {}",
            target.name(),
            int(m.events_per_second.round() as usize),
            int(m.lost()),
            verdict(ratio >= 0.9 && m.lost() == 0)
        );
    }
    if let Some(m) = measured_case(results, Target::WalWebhook, "single-4") {
        if let Some([p50, p99, _]) = m.latency_ms {
            let _ = writeln!(
                out,
                "- wal-webhook/single-4 commit-to-arrival: p99 {p99:.1} ms (p50 {p50:.1} ms; target p99 ≤ 10 ms): {}",
                verdict(p99 <= 10.0)
            );
        }
        if let Some(none) = measured_case(results, Target::WalNone, "single-4") {
            let _ = writeln!(
                out,
                "- wal-webhook/single-4 commit rate: {:.2} × wal-none's ({} /s against {} /s)",
                m.committed_per_second() / none.committed_per_second(),
                int(m.committed_per_second().round() as usize),
                int(none.committed_per_second().round() as usize)
            );
        }
    }
    if let Some(backlog) = measured_case(results, Target::WalBacklog, "burst") {
        let normal = measured_case(results, Target::WalWebhookBatch, "burst");
        match (backlog.usage, normal.and_then(|n| n.usage)) {
            (Some(b), Some(n)) => {
                let _ = writeln!(
                    out,
                    "- wal-backlog: skor's peak RSS {:.1} MB with {} events waiting in the slot, against {:.1} MB for wal-webhook-batch/burst ({:.2}×); bounded if it does not grow with the backlog",
                    mib(b.peak_rss_bytes),
                    int(backlog.produced),
                    mib(n.peak_rss_bytes),
                    b.peak_rss_bytes as f64 / n.peak_rss_bytes as f64
                );
            }
            (Some(b), None) => {
                let _ = writeln!(
                    out,
                    "- wal-backlog: skor's peak RSS {:.1} MB with {} events waiting in the slot",
                    mib(b.peak_rss_bytes),
                    int(backlog.produced)
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_and_arguments() {
        assert_eq!(int(0), "0");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(int(100), "100");
        assert_eq!(shell_quote("--scale"), "--scale");
        assert_eq!(shell_quote("host=a port=5"), "'host=a port=5'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
