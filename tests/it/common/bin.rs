//! The `skor` binary as a user runs it, for tests that need a real process
//! (SIGTERM, SIGKILL, the command line).

use std::process::{Output, Stdio};

use tokio::process::{Child, Command};

use super::PATIENCE;

/// `skor` with a clean environment, its output captured.
pub fn skor() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skor"));
    command
        .env_remove("RUST_LOG")
        .env_remove("SKOR_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Writes `text` to a config file that lives as long as the returned guard.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// Runs `skor args` to completion.
pub async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(PATIENCE, skor().args(args).output())
        .await
        .expect("skor exits")
        .unwrap()
}

/// What the process wrote on standard error.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Sends `signal` (`TERM`, `KILL`...) to `child`.
pub fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// SIGTERM, then the process's output once it exited.
pub async fn sigterm_and_wait(child: Child) -> Output {
    signal(&child, "TERM");
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("skor exits after SIGTERM")
        .unwrap()
}

/// Starts `skor --config FILE --log-level info`, its standard error
/// appended to the file `log` (a pipe nobody reads would block the daemon
/// once full).
pub fn spawn_logged(config: &tempfile::NamedTempFile, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    skor()
        .args([
            "--config",
            config.path().to_str().unwrap(),
            "--log-level",
            "info",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}
