//! A headless Chromium driven through chromedriver (W3C WebDriver over
//! plain HTTP), for the tests that check what a page shows: chromedriver
//! is started per test on a free port and killed when the [`Browser`]
//! drops, even when the test failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::eventually;

/// Where a program is: `$env` if set, else `/usr/bin/<name>`. A missing
/// one fails the test, since CI has them.
fn program(env: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(name));
    assert!(
        path.exists(),
        "{} not found: scripts/services installs chromium and chromedriver \
         (or set {env} to where {name} is)",
        path.display()
    );
    path
}

/// A chromedriver process and its session, ended on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Quitting the session closes Chromium; then chromedriver and
        // whatever it left in its process group go.
        if let Some(session) = self.session.take() {
            let _ = delete_session(self.addr, &session);
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/ID` without an async runtime: drop runs anywhere.
fn delete_session(addr: SocketAddr, session: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

/// A headless Chromium window.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Driver,
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium of
    /// `width`x`height` pixels.
    pub async fn start(width: u32, height: u32) -> Self {
        let chromium = program("SKOR_CHROMIUM", "chromium");
        let chromedriver = program("SKOR_CHROMEDRIVER", "chromedriver");
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().unwrap().port()
        };
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so drop can end Chromium with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()))
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut driver = Driver {
            child,
            addr,
            session: None,
        };
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        eventually("chromedriver to be ready", || async {
            let answer = http.get(format!("{base}/status")).send().await;
            let body: Value = match answer {
                Ok(answer) => json_of(answer).await,
                Err(error) => return Err(error.to_string()),
            };
            if body["value"]["ready"] == true {
                Ok(())
            } else {
                Err(body.to_string())
            }
        })
        .await;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
            },
        }}});
        let created = command(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            capabilities,
        )
        .await;
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {created}"))
            .to_string();
        driver.session = Some(session.clone());
        Self {
            http,
            base,
            session,
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        command(&self.http, method, &url, body).await
    }

    /// Loads `url`, waiting for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body: `return ...`) in the page and
    /// returns what it returned.
    pub async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// The window as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        let data = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 text"))
            .expect("a base64 PNG")
    }
}

/// One WebDriver command: its `value`, or a panic with the driver's error.
async fn command(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Value) -> Value {
    let mut request = http.request(method.clone(), url);
    if !body.is_null() {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let answer = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = answer.status();
    let mut value = json_of(answer).await;
    assert!(status.is_success(), "{method} {url}: {status} {value}");
    value["value"].take()
}

/// A response body parsed as JSON (reqwest is built without its `json`).
async fn json_of(answer: reqwest::Response) -> Value {
    let text = answer.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}
