//! Just enough of the W3C WebDriver protocol to drive Debian's Chromium
//! through its `chromedriver`: a session, navigation, finding and clicking
//! elements, running a script, a screenshot. Plain HTTP on the loopback.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::loopback;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: tokio::process::Child,
    port: u16,
    session: String,
    _profile: tempdir::Dir,
}

/// A directory removed when dropped.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn call(port: u16, method: hyper::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default().into_bytes();
    let authority = format!("127.0.0.1:{port}");
    let (status, body) =
        loopback::request(&authority, method, path, &[("content-type", "application/json")], bytes).await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))?;
    if !(200..300).contains(&status) {
        return Err(format!("{status}: {}", v["value"]["message"].as_str().unwrap_or(&v.to_string())));
    }
    Ok(v["value"].clone())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let port = loopback::free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER} does not start ({e}): install Debian's chromium-driver"));
        let start = Instant::now();
        while call(port, hyper::Method::GET, "/status", None).await.map(|v| v["ready"] == true) != Ok(true) {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver is not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("hapair-chromium-{port}"));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            // As root, without a sandbox; no background traffic to the closed network.
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,1100",
                     format!("--user-data-dir={}", profile.display())],
        }}}});
        let v = call(port, hyper::Method::POST, "/session", Some(caps)).await.expect("a Chromium session");
        let session = v["sessionId"].as_str().expect("a session id").to_string();
        Browser { driver, port, session, _profile: tempdir::Dir(profile) }
    }

    async fn session(&self, method: hyper::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(self.port, method, &format!("/session/{}{path}", self.session), body).await
    }

    pub async fn open(&self, url: &str) {
        self.session(hyper::Method::POST, "/url", Some(json!({"url": url}))).await.unwrap();
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub async fn eval(&self, script: &str) -> Value {
        self.session(hyper::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await.unwrap()
    }

    /// Waits until `script` returns something truthy; that value.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(script).await;
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            assert!(start.elapsed() < timeout, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks the element `css` names, as a user would (the page redraws on
    /// every update: an element gone between finding and clicking is looked
    /// up again).
    pub async fn click(&self, css: &str) {
        let start = Instant::now();
        loop {
            let found = self
                .session(hyper::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
                .await;
            let outcome = match found {
                Ok(e) => {
                    let id = e[ELEMENT].as_str().unwrap_or_default().to_string();
                    self.session(hyper::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => return,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "cannot click {css}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.session(hyper::Method::GET, "/screenshot", None).await.unwrap();
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap()
    }

    pub async fn close(mut self) {
        let _ = self.session(hyper::Method::DELETE, "", None).await;
        let _ = self.driver.kill().await;
    }
}
