//! The Health Monitor page (`kubectl hapair ui`) in a real browser: Debian's
//! Chromium, headless, driven over WebDriver by its `chromedriver`, against
//! the plugin's page serving a pair on the real nodes. The page shows the
//! states the pair's status holds and only the actions possible now; a
//! switchover clicked on the page completes; an action the pair no longer
//! admits is refused with the reason on the page; the logs come as one
//! download; the page answers nobody without its token.

mod common;
#[path = "../harness/mod.rs"]
mod harness;
#[path = "../harness/webdriver.rs"]
mod webdriver;

use std::time::{Duration, Instant};

use hapair::api::{HighAvailabilityPair, Member, Mode};
use harness::{Harness, test_pair};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use webdriver::Browser;

const WAIT: Duration = Duration::from_secs(90);

/// `kubectl hapair ui web` on a free port; its address with the token.
async fn serve(h: &Harness) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-hapair"))
        .args(["--kubeconfig", &common::kubeconfig_path(), "-n", &h.ns.name, "ui", "web"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the plugin starts");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = first.strip_prefix("Health Monitor: ").unwrap_or_else(|| panic!("no address printed: {first}"));
    // Keep reading, so the plugin never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url.to_string())
}

/// A plain GET to the page's server (with another `Host` if given): status
/// and body.
async fn get(url: &str, host: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
    let (status, body) =
        harness::loopback::request(authority, hyper::Method::GET, path, &headers, Vec::new()).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const PAIR: &str = "document.querySelector('[data-pair]')";

/// What the page shows: each member's state, the active member, the mode,
/// and the labels of the actions it offers.
fn shown() -> String {
    format!(
        "const p = {PAIR}; if (!p) return null;
         return {{
           states: [...p.querySelectorAll('tr[data-member]')].map(r => [r.dataset.member, r.querySelector('[data-state]').dataset.state]),
           active: p.querySelector('[data-active]').textContent,
           mode: p.querySelector('[data-mode]').dataset.mode,
           actions: [...p.querySelectorAll('button[data-action]')].map(b => b.textContent),
           outcome: p.querySelector('[data-outcome]').textContent,
         }};"
    )
}

fn status_states(p: &HighAvailabilityPair) -> Vec<(String, String)> {
    let members = p.status.as_ref().map(|s| s.members.clone()).unwrap_or_default();
    members.iter().map(|m| (m.name.to_string(), format!("{:?}", m.state))).collect()
}

/// Waits until the page shows what the pair's status holds now, and
/// returns what it shows.
async fn agrees(
    h: &Harness,
    b: &Browser,
    what: &str,
    want: impl Fn(&HighAvailabilityPair) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let p = h.pair("web").await;
        let page = b.eval(&shown()).await;
        let states: Vec<(String, String)> = serde_json::from_value(page["states"].clone()).unwrap_or_default();
        let offered: Vec<String> = serde_json::from_value(page["actions"].clone()).unwrap_or_default();
        let expected: Vec<String> = hapair::cli::ui::view::actions(&p).into_iter().map(|a| a.label).collect();
        let s = p.status.as_ref();
        if want(&p)
            && states == status_states(&p)
            && offered == expected
            && page["active"].as_str() == s.and_then(|s| s.active_member).map(|m| m.to_string()).as_deref()
            && page["mode"].as_str() == s.and_then(|s| s.mode).map(|m| format!("{m:?}")).as_deref()
        {
            return page;
        }
        assert!(
            start.elapsed() < WAIT,
            "the page never showed {what}: it shows {page}, the status has states {:?} and actions {expected:?}",
            status_states(&p)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_monitor_page_shows_the_pair_and_drives_it_in_a_real_browser() {
    let h = Harness::new("ui").await;
    h.apply(&test_pair(
        "web",
        1,
        json!({"spec": {"storage": {"size": "1Gi", "mountPath": "/data"}, "fileSync": {"paths": [{"path": "."}]}}}),
    ))
    .await;
    h.wait_for("web", "mode Enabled and synced", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.mode == Some(Mode::Enabled)
                && s.members.iter().all(|m| m.sync_lag_seconds.is_some() || m.role == hapair::api::Role::Active)
        })
    })
    .await;
    let checker = h.checker("web").await;
    let (mut plugin, url) = serve(&h).await;
    let b = Browser::start().await;
    b.open(&url).await;

    // The states, mode and actions of the status, live.
    let page = agrees(&h, &b, "the enabled pair on its primary", |p| {
        p.status.as_ref().is_some_and(|s| s.active_member == Some(Member::Primary))
    })
    .await;
    let offered: Vec<String> = serde_json::from_value(page["actions"].clone()).unwrap();
    assert!(offered.contains(&"Switchover".to_string()) && !offered.contains(&"Failback".to_string()), "{offered:?}");

    // A switchover clicked on the page, confirmed in its dialog, completes;
    // the page follows it to the outcome.
    b.click("[data-pair] button[data-action=switchover]").await;
    let question = b
        .wait_for(
            "the confirmation",
            WAIT,
            "const d = document.getElementById('confirm'); return d.open && d.textContent;",
        )
        .await;
    assert!(question.as_str().unwrap().contains("Hand the active role from primary to secondary"), "{question}");
    b.click("#confirm-yes").await;
    let outcome = b
        .wait_for("the switchover's outcome", WAIT, &format!("const o = {PAIR}.querySelector('[data-outcome]').textContent; return /Succeeded|Refused|Failed/.test(o) && o;"))
        .await;
    assert!(outcome.as_str().unwrap().contains("Succeeded"), "{outcome}");
    let p = h.pair("web").await;
    let op = p.status.as_ref().unwrap().operations.first().unwrap().clone();
    assert_eq!(op.kind, hapair::api::OperationKind::Switchover);
    assert_eq!(p.spec.operation.as_ref().unwrap().reason.as_deref(), Some("requested with the Health Monitor page"));
    agrees(&h, &b, "the pair on its secondary", |p| {
        p.status.as_ref().is_some_and(|s| s.active_member == Some(Member::Secondary) && s.mode == Some(Mode::Enabled))
    })
    .await;
    if let Ok(path) = std::env::var("HAPAIR_UI_SCREENSHOT") {
        std::fs::write(&path, b.screenshot().await).unwrap();
        eprintln!("screenshot written to {path}");
    }
    assert!(b.screenshot().await.starts_with(b"\x89PNG"));

    // An action the pair no longer admits: asked on the page, the pair
    // paused meanwhile; the page says why and writes nothing.
    b.click("[data-pair] button[data-action=failback]").await;
    b.wait_for("the confirmation", WAIT, "return document.getElementById('confirm').open;").await;
    let (ok, _, err) = h.plugin(&["pause", "web"]);
    assert!(ok, "{err}");
    h.wait_for("web", "paused", WAIT, |p| p.spec.paused).await;
    b.click("#confirm-yes").await;
    let refused = b
        .wait_for(
            "the refusal",
            WAIT,
            &format!("const o = {PAIR}.querySelector('[data-outcome].refused'); return o && o.textContent;"),
        )
        .await;
    assert_eq!(
        refused.as_str().unwrap(),
        "Refused: Failback is not possible now: the pair is paused (spec.paused): resume it first"
    );
    assert_eq!(
        h.pair("web").await.spec.operation.as_ref().map(|o| o.id.clone()),
        Some(op.id.clone()),
        "a request was written"
    );
    let page = agrees(&h, &b, "the paused pair", |p| p.spec.paused).await;
    assert_eq!(page["actions"], json!(["Resume"]));

    // The logs, one download: both agents and the operator's part.
    let base = url.split("/?").next().unwrap();
    let token = url.split("token=").nth(1).unwrap();
    let (status, logs) = get(&format!("{base}/api/logs?namespace={}&name=web&token={token}", h.ns.name), None).await;
    assert_eq!(status, 200, "{logs}");
    for part in ["===== agent of primary", "===== agent of secondary", "===== operator"] {
        assert!(logs.contains(part), "no {part} in the download:\n{logs}");
    }
    assert!(logs.lines().count() > 10, "the agents' logs are empty:\n{logs}");

    // Nobody without the token, nobody through another host name.
    assert_eq!(get(&format!("{base}/api/snapshot"), None).await.0, 401);
    assert_eq!(get(&url.replace("/?token=", "/api/snapshot?token="), Some("evil.example:80")).await.0, 403);

    b.close().await;
    let _ = plugin.kill().await;
    checker.assert_clean();
}
