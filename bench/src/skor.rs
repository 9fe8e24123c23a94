//! The skor binary under test: its config files, `install`/`uninstall`,
//! the daemon process, its CPU time and peak memory, and its log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long skor may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long skor may take to exit after SIGTERM; its drain deadline is 10 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `text` as a TOML basic string.
pub fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A config capturing the bench table in `mode` with the sinks in `sinks`
/// (TOML tables; none means skor's stdout default, fine for `install`).
pub fn config(dsn: &str, table: &str, mode: &str, sinks: &str) -> String {
    format!(
        "[source]\ndsn = {}\n\n[[table]]\nname = {}\nmode = {}\n\n{sinks}",
        toml_string(dsn),
        toml_string(table),
        toml_string(mode)
    )
}

/// A config capturing the bench table in wal mode, from `[source]`: no
/// trigger; `install` creates the publication and the replication slot.
pub fn wal_config(dsn: &str, table: &str, sinks: &str) -> String {
    format!(
        "[source]\ndsn = {}\nmode = \"wal\"\n\n[[table]]\nname = {}\n\n{sinks}",
        toml_string(dsn),
        toml_string(table)
    )
}

/// The skor binary.
pub struct Skor {
    binary: PathBuf,
}

impl Skor {
    /// The binary at `binary`.
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }

    fn command(&self, config: &Path) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .env_remove("RUST_LOG")
            .env_remove("SKOR_CONFIG")
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `skor --version`.
    pub async fn version(&self) -> Result<String, String> {
        let output = Command::new(&self.binary)
            .arg("--version")
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Runs `skor --config CONFIG ARGS` to completion; the error is skor's
    /// own reason.
    pub async fn admin(&self, config: &Path, args: &[&str]) -> Result<(), String> {
        let output = self
            .command(config)
            .args(args)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        if output.status.success() {
            return Ok(());
        }
        let log = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "skor {}: {}",
            args.join(" "),
            failure_reason(&log, &output.status.to_string())
        ))
    }

    /// Starts the daemon with its log in `log`, and waits until it LISTENs.
    pub async fn start(&self, config: &Path, log: &Path) -> Result<Running, String> {
        let file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = self
            .command(config)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let pid = child.id().ok_or("skor exited at once")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            // Logged once every LISTEN (and the event log's first read) is done.
            if text.contains("\"message\":\"listening\"") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failure_reason(&text, &status.to_string()));
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(format!(
                    "not listening after {READY_TIMEOUT:?}: {}",
                    failure_reason(&text, "still running")
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu_at_ready = cpu_seconds(pid).unwrap_or(0.0);
        Ok(Running {
            child,
            pid,
            log: log.to_path_buf(),
            cpu_at_ready,
        })
    }
}

/// A daemon that is listening; killed if dropped before [`Running::stop`].
pub struct Running {
    child: Child,
    pid: u32,
    log: PathBuf,
    cpu_at_ready: f64,
}

/// What the daemon used between ready and now.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// CPU time (user + system), in seconds.
    pub cpu_seconds: f64,
    /// Peak resident set (VmHWM), in bytes.
    pub peak_rss_bytes: u64,
}

impl Running {
    /// Why the daemon exited, if it did.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        Some(failure_reason(&self.log_text(), &status.to_string()))
    }

    /// CPU since ready and peak memory so far.
    pub fn usage(&self) -> Option<Usage> {
        Some(Usage {
            cpu_seconds: cpu_seconds(self.pid)? - self.cpu_at_ready,
            peak_rss_bytes: peak_rss_bytes(self.pid)?,
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit (SIGKILL after a deadline).
    pub async fn stop(mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            // Already reaped: its pid may belong to another process by now.
            return Err(format!("skor had already exited with {status}"));
        }
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("skor exited with {status} after SIGTERM")),
            Ok(Err(e)) => Err(format!("waiting for skor: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "skor did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed"
                ))
            }
        }
    }
}

/// utime + stime of the bench itself, in seconds (0 if unreadable).
#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(
        ticks as f64
            / if per_second > 0 {
                per_second as f64
            } else {
                100.0
            },
    )
}

/// VmHWM of `pid`, in bytes.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One JSON log line as text: its message and fields, without the
/// timestamp, level and target.
fn describe_line(line: &str) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        return line.trim().to_string();
    };
    let mut text = fields
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    for (name, value) in &fields {
        if ["message", "timestamp", "level", "target"].contains(&name.as_str()) {
            continue;
        }
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!(" {name}={value}"));
    }
    text
}

fn level(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(value.get("level")?.as_str()?.to_string())
}

/// skor's last error in `log`, else its last line, else `fallback`.
pub fn failure_reason(log: &str, fallback: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(line) = lines
        .iter()
        .rev()
        .find(|l| level(l).as_deref() == Some("ERROR"))
    {
        return describe_line(line);
    }
    match lines.last() {
        Some(line) => format!("{} ({fallback})", describe_line(line)),
        None => fallback.to_string(),
    }
}

/// What is worth quoting from a daemon's log.
pub struct Excerpt {
    /// Warnings and errors grouped by message: each kind counted and
    /// quoted once.
    pub problems: Vec<String>,
    /// The totals skor logs at shutdown.
    pub totals: Vec<String>,
}

/// The first `limit` kinds of warnings and errors in `log`, and its totals.
pub fn excerpt(log: &str, limit: usize) -> Excerpt {
    const TOTALS: [&str; 3] = ["sink totals", "durable totals", "stopped"];
    // (level and message, count, first occurrence in full)
    let mut kinds: Vec<(String, usize, String)> = Vec::new();
    let mut totals = Vec::new();
    for line in log.lines() {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) else {
            continue;
        };
        let field = |name: &str| {
            fields
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
        };
        let (level, message) = (field("level"), field("message"));
        match level {
            "WARN" | "ERROR" => {
                let kind = format!("{level} {message}");
                match kinds.iter_mut().find(|(k, ..)| *k == kind) {
                    Some((_, count, _)) => *count += 1,
                    None => kinds.push((kind, 1, describe_line(line))),
                }
            }
            "INFO" if TOTALS.contains(&message) => totals.push(describe_line(line)),
            _ => {}
        }
    }
    let mut problems: Vec<String> = kinds
        .iter()
        .take(limit)
        .map(|(kind, count, first)| {
            let level = kind.split(' ').next().unwrap_or_default();
            shorten(&format!("{level} ×{count}, first: {first}"), 400)
        })
        .collect();
    if kinds.len() > limit {
        problems.push(format!(
            "… and {} other kinds of warnings and errors",
            kinds.len() - limit
        ));
    }
    Excerpt { problems, totals }
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_toml_strings() {
        assert_eq!(toml_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }

    #[test]
    fn the_reason_is_the_last_error() {
        let log = "{\"level\":\"INFO\",\"message\":\"hello\"}\n\
                   {\"timestamp\":\"t\",\"level\":\"ERROR\",\"message\":\"bad key\",\"sink\":\"bench\",\"target\":\"skor\"}\n";
        assert_eq!(failure_reason(log, "exit 1"), "bad key sink=bench");
        assert_eq!(
            failure_reason("skor: oops\n", "exit 1"),
            "skor: oops (exit 1)"
        );
        assert_eq!(failure_reason("", "exit 1"), "exit 1");
    }

    #[test]
    fn groups_warnings_and_errors_by_message() {
        let log = "{\"level\":\"ERROR\",\"message\":\"dropped\",\"id\":1}\n\
                   {\"level\":\"ERROR\",\"message\":\"dropped\",\"id\":2}\n\
                   {\"level\":\"WARN\",\"message\":\"retrying\"}\n\
                   {\"level\":\"INFO\",\"message\":\"sink totals\",\"dropped\":2}\n";
        let all = excerpt(log, 5);
        assert_eq!(
            all.problems,
            ["ERROR ×2, first: dropped id=1", "WARN ×1, first: retrying"]
        );
        assert_eq!(all.totals, ["sink totals dropped=2"]);
        assert_eq!(
            excerpt(log, 1).problems[1],
            "… and 1 other kinds of warnings and errors"
        );
    }

    #[test]
    fn reads_this_process_usage() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(peak_rss_bytes(pid).unwrap() > 0);
    }
}
