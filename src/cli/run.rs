//! What the plugin's commands do. Every operation is a write of the pair's
//! `spec.operation` (or `spec.paused`), exactly what `kubectl patch` or a
//! GitOps commit would write; `--wait` follows `status.operations` to the
//! outcome.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use super::history::{events_screen, history_rows};
use super::{Cli, Command, GlobalArgs};
use crate::api::{HighAvailabilityPair, OperationPhase};

pub const FIELD_MANAGER: &str = "kubectl-hapair";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(String),
    #[error("pair {name} not found in namespace {namespace}")]
    NotFound { name: String, namespace: String },
    #[error("{0}")]
    Api(String),
    #[error("operation {id} {phase:?}: {reason}")]
    Outcome { id: String, phase: OperationPhase, reason: String },
    #[error("timed out waiting for operation {0}")]
    Timeout(String),
}

async fn connect(g: &GlobalArgs) -> Result<(Client, String), CliError> {
    let opts = KubeConfigOptions { context: g.context.clone(), ..Default::default() };
    let config = match &g.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| CliError::Config(format!("kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &opts).await.map_err(|e| CliError::Config(e.to_string()))?
        }
        None => Config::from_kubeconfig(&opts).await.map_err(|e| CliError::Config(e.to_string()))?,
    };
    let ns = g.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| CliError::Config(e.to_string()))?;
    Ok((client, ns))
}

fn api_error(e: kube::Error, name: &str, ns: &str) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 404 => CliError::NotFound { name: name.into(), namespace: ns.into() },
        kube::Error::Api(s) => CliError::Api(s.message.clone()),
        e => CliError::Api(e.to_string()),
    }
}

/// The names of the pairs in the namespace `global` selects, or with
/// `pairs` false, of the namespaces (for shell completion).
pub(super) async fn names(global: &GlobalArgs, pairs: bool) -> Result<Vec<String>, CliError> {
    let (client, ns) = connect(global).await?;
    let params = ListParams::default();
    let list = if pairs {
        let list = Api::<HighAvailabilityPair>::namespaced(client, &ns).list_metadata(&params).await;
        list.map(|l| l.items.into_iter().map(|o| o.metadata).collect::<Vec<_>>())
    } else {
        let list = Api::<k8s_openapi::api::core::v1::Namespace>::all(client).list_metadata(&params).await;
        list.map(|l| l.items.into_iter().map(|o| o.metadata).collect())
    };
    let list = list.map_err(|e| CliError::Api(e.to_string()))?;
    Ok(list.into_iter().filter_map(|m| m.name).collect())
}

pub async fn run(cli: Cli) -> Result<String, CliError> {
    if let Command::Completion = cli.command {
        return Ok(super::complete::SCRIPT.to_string());
    }
    let (client, ns) = connect(&cli.global).await?;
    let pairs: Api<HighAvailabilityPair> = Api::namespaced(client.clone(), &ns);
    let get = |name: String| {
        let pairs = pairs.clone();
        let ns = ns.clone();
        async move { pairs.get(&name).await.map_err(|e| api_error(e, &name, &ns)) }
    };
    let (name, op, wait) = match cli.command {
        Command::Status { name, output } => {
            let pair = get(name.clone()).await?;
            return Ok(match output {
                Some(format) => format.render(&pair),
                None => {
                    let lease = Api::<Lease>::namespaced(client, &ns).get_opt(&name).await.ok().flatten();
                    status_screen(&pair, lease.as_ref())
                }
            });
        }
        Command::Events { name, output } => {
            let pair = get(name.clone()).await?;
            let events = Api::<Event>::namespaced(client, &ns)
                .list(
                    &ListParams::default()
                        .fields(&format!("involvedObject.name={name},involvedObject.kind=HighAvailabilityPair")),
                )
                .await
                .map_err(|e| api_error(e, &name, &ns))?;
            return Ok(match output {
                None => events_screen(&pair, &events.items),
                Some(format) => format.render(&history_rows(&pair, &events.items)),
            });
        }
        // Answered above, before connecting.
        Command::Completion => return Ok(String::new()),
        Command::Ui { name, all_namespaces, port, operator_namespace } => {
            if all_namespaces && name.is_some() {
                return Err(CliError::Config(
                    "a pair's name goes with its namespace (-n), not with --all-namespaces".into(),
                ));
            }
            let scope = super::ui::Scope { namespace: (!all_namespaces).then(|| ns.clone()), pair: name };
            return super::ui::serve(client, scope, port, operator_namespace).await;
        }
        Command::Pause { name } => {
            let said = "paused: the operator observes and changes nothing";
            return set_spec(&pairs, &ns, &name, json!({"paused": true}), said).await;
        }
        Command::Resume { name } => return set_spec(&pairs, &ns, &name, json!({"paused": false}), "resumed").await,
        Command::RemoveStandby { name } => {
            let said = "runs one member: its standby is stopped (claim kept); follow it with: kubectl hapair status";
            return set_spec(&pairs, &ns, &name, json!({"standby": "Removed"}), said).await;
        }
        Command::AddStandby { name } => {
            let said = "gets its standby back: mode Initializing until it has synced, then Enabled";
            return set_spec(&pairs, &ns, &name, json!({"standby": "Enabled"}), said).await;
        }
        Command::Switchover { name, wait } => (name, json!({"switchover": {}}), wait.wait),
        Command::Failover { name, force, wait } => (name, json!({"failover": {"force": force}}), wait.wait),
        Command::Failback { name, wait } => (name, json!({"failback": {}}), wait.wait),
        Command::GoStandby { name, member, wait } => (name, json!({"goStandby": {"member": member}}), wait.wait),
        Command::Resolve { name, keep, wait } => (name, json!({"resolveSplitBrain": {"keep": keep}}), wait.wait),
        Command::Resync { name, dry_run, wait } => (name, json!({"resync": {"dryRun": dry_run}}), wait.wait),
        Command::RotateCertificates { name, wait } => (name, json!({"rotateCertificates": {}}), wait.wait),
    };
    get(name.clone()).await?;
    let kind = op.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
    let id = request(&pairs, &ns, &name, op, &format!("kubectl hapair {kind}")).await?;
    if !wait {
        return Ok(format!("operation {id} requested; follow it with: kubectl hapair status {name}"));
    }
    // A rotation waits for the kubelet twice (about a minute each).
    let limit = Duration::from_secs(if kind == "rotateCertificates" { 900 } else { 300 });
    follow(&pairs, &name, &id, limit).await
}

/// Writes `op` (one action) as the pair's `spec.operation` with a new id;
/// the id. The request replaces the previous one whole (a merge would mix
/// actions).
pub(crate) async fn request(
    pairs: &Api<HighAvailabilityPair>,
    ns: &str,
    name: &str,
    op: serde_json::Value,
    from: &str,
) -> Result<String, CliError> {
    let kind = op.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
    let id = format!("{}-{}", kind.to_lowercase(), Utc::now().format("%Y%m%d-%H%M%S-%3f"));
    let mut request = json!({"id": id, "reason": format!("requested with {from}")});
    if let (Some(r), Some(o)) = (request.as_object_mut(), op.as_object()) {
        r.extend(o.clone());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/spec/operation", "value": request}]))
            .expect("static shape");
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    pairs.patch(name, &params, &Patch::<()>::Json(patch)).await.map_err(|e| api_error(e, name, ns))?;
    Ok(id)
}

/// Sets fields of the pair's spec (a merge patch) and says what follows.
pub(crate) async fn set_spec(
    pairs: &Api<HighAvailabilityPair>,
    ns: &str,
    name: &str,
    fields: serde_json::Value,
    said: &str,
) -> Result<String, CliError> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    pairs.patch(name, &params, &Patch::Merge(json!({ "spec": fields }))).await.map_err(|e| api_error(e, name, ns))?;
    Ok(format!("pair {name} {said}"))
}

/// Follows an operation to its outcome, printing each phase change.
async fn follow(pairs: &Api<HighAvailabilityPair>, name: &str, id: &str, limit: Duration) -> Result<String, CliError> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        if let Ok(p) = pairs.get(name).await
            && let Some(op) = p.status.as_ref().and_then(|s| s.operations.iter().find(|o| o.id == id))
        {
            let now = (op.phase, op.message.clone());
            if last.as_ref() != Some(&now) {
                eprintln!(
                    "{:>6.1}s  {id}: {:?} {}",
                    start.elapsed().as_secs_f64(),
                    op.phase,
                    op.message.clone().unwrap_or_default()
                );
                last = Some(now);
            }
            if op.phase.is_terminal() {
                let reason = op.reason.clone().unwrap_or_default();
                let resync = p.status.as_ref().and_then(|s| s.resync.as_ref()).filter(|r| r.label.ends_with(id));
                return match op.phase {
                    OperationPhase::Succeeded => Ok(format!(
                        "operation {id} succeeded in {:.1}s: {}{}",
                        start.elapsed().as_secs_f64(),
                        op.message.clone().unwrap_or_default(),
                        resync.map_or(String::new(), |r| format!("\n{}", resync_lines(r).trim_end()))
                    )),
                    phase => Err(CliError::Outcome {
                        id: id.into(),
                        phase,
                        reason: format!("{reason}: {}", op.message.clone().unwrap_or_default()),
                    }),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(CliError::Timeout(id.into()))
}

fn age(t: chrono::DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
    if s < 120.0 { format!("{s:.1}s") } else { format!("{:.0}m", s / 60.0) }
}

/// The pair's certificates: until when, when renewed, a rotation under way.
fn certificate_line(c: &crate::api::CertificatesStatus) -> String {
    let at = |t: Option<chrono::DateTime<Utc>>| t.map_or("?".into(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string());
    let mut line = format!(
        "Certificates: members until {} (renewed after {}), CA until {} (rotated after {})",
        at(c.members_not_after),
        at(c.renew_after),
        at(c.ca_not_after),
        at(c.ca_renew_after)
    );
    if let Some(r) = &c.rotation {
        let who = r.waiting_for.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ");
        let _ = write!(
            line,
            "; CA rotation ({}) {}{}{}",
            r.cause.as_deref().unwrap_or("?"),
            r.stage,
            r.since.map_or(String::new(), |t| format!(" for {}", age(t))),
            if who.is_empty() { String::new() } else { format!(", waiting for {who}") }
        );
    }
    line.push('\n');
    line
}

/// The latest resync Job: outcome, counts, and a dry run's plan.
pub fn resync_lines(r: &crate::api::ResyncStatus) -> String {
    let mut out = format!(
        "Resync: Job {} {:?}{} of {}: {} copied, {} quarantined, {} deleted, {} copied back, {} conflicts, {} bytes{}{}\n",
        r.job,
        r.phase,
        if r.dry_run { " (dry run)" } else { "" },
        r.target.map_or("-".into(), |m| m.to_string()),
        r.copied,
        r.quarantined,
        r.deleted,
        r.copied_back,
        r.conflicts,
        r.bytes,
        if r.failed_runs > 0 { format!(", {} failed run(s)", r.failed_runs) } else { String::new() },
        r.message.as_deref().map_or(String::new(), |m| format!(" ({m})"))
    );
    if r.quarantined > 0 {
        out.push_str(&format!("  quarantine: .hapair/quarantine/{}/ on the target's volume\n", r.label));
    }
    for w in &r.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    for a in &r.plan {
        out.push_str(&format!("  {a}\n"));
    }
    out
}

/// One screen, like an appliance's `ha status`.
pub fn status_screen(pair: &HighAvailabilityPair, lease: Option<&Lease>) -> String {
    let mut out = String::new();
    let name = pair.metadata.name.clone().unwrap_or_default();
    let ns = pair.metadata.namespace.clone().unwrap_or_default();
    let s = pair.status.clone().unwrap_or_default();
    let spec = &pair.spec;
    let _ = writeln!(
        out,
        "Pair {ns}/{name}   mode {}   epoch {}   failover {:?}   failback {:?}{}",
        s.mode.map_or("-".into(), |m| format!("{m:?}")),
        s.epoch,
        spec.failover.mode,
        spec.failback.mode,
        if spec.paused { "   PAUSED" } else { "" }
    );
    let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.clone()).map(|t| t.0.to_string());
    // What the cluster routes (the Service's EndpointSlice as stored), and
    // what the operator is moving it to when the two differ.
    let routes = match &s.routing {
        Some(r) if !r.addresses.is_empty() => match r.member {
            Some(m) => format!("{m} ({}, {})", m.pod_name(&name), r.addresses.join(", ")),
            None => format!("a pod that is not a member ({})", r.addresses.join(", ")),
        },
        _ => "nobody".to_string(),
    };
    let moving = match (s.routing.as_ref().and_then(|r| r.member), s.active_member) {
        (now, Some(want)) if now != Some(want) => format!("   (moving to {want})"),
        _ => String::new(),
    };
    let _ = writeln!(out, "VIP  Service {name} -> {routes}{moving}");
    let row = |c: [&str; 11]| {
        format!(
            "{:<10} {:<22} {:<8} {:<28} {:<8} {:<10} {:<6} {:<9} {:<6} {:<7} {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
        )
    };
    out.push('\n');
    out.push_str(&row([
        "MEMBER",
        "POD",
        "ROLE",
        "STATE",
        "HEALTHY",
        "HEARTBEAT",
        "MISSED",
        "SYNC-LAG",
        "SKEW",
        "VOLUME",
        "QUARANTINE",
    ]));
    for m in &s.members {
        let heartbeat = if Some(m.name) == s.active_member {
            renewed.as_deref().and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok()).map_or("-".into(), age)
        } else if m.missed_heartbeats == 0 {
            "ok".into()
        } else {
            m.last_seen_time.map_or("lost".into(), age)
        };
        out.push_str(&row([
            m.name.as_str(),
            &m.pod,
            &format!("{:?}", m.role),
            &format!("{:?}", m.state),
            m.healthy.map_or("-", |h| if h { "yes" } else { "NO" }),
            &heartbeat,
            &m.missed_heartbeats.to_string(),
            &m.sync_lag_seconds.map_or("-".into(), |l| format!("{l}s")),
            &m.clock_skew_seconds.map_or("-".into(), |k| format!("{k}s")),
            &m.volume_used_percent.map_or("-".into(), |p| format!("{p}%")),
            &m.quarantine.as_ref().filter(|q| q.files > 0).map_or("-".into(), |q| {
                format!("{} files, {}", q.files, crate::proto::size_text(q.bytes.max(0) as u64))
            }),
        ]));
    }
    if let Some(t) = &s.last_transition {
        let _ = writeln!(
            out,
            "\nLast transition: {:?} {} -> {} at epoch {} ({}) {} ago; detection {}, lease->selector {}{}",
            t.type_,
            t.from.map_or("-".into(), |m| m.to_string()),
            t.to.map_or("-".into(), |m| m.to_string()),
            t.epoch,
            t.reason,
            age(t.time),
            t.detection_millis.map_or("-".into(), |d| format!("{d} ms")),
            t.lease_to_selector_millis.map_or("-".into(), |d| format!("{d} ms")),
            if t.data_loss_possible { ", DATA MAY BE MISSING" } else { "" }
        );
    }
    let conditions: Vec<String> = s
        .conditions
        .iter()
        .map(|c| {
            format!(
                "{}={:?}{}",
                c.type_,
                c.status,
                if c.message.is_empty() { String::new() } else { format!(" ({})", c.message) }
            )
        })
        .collect();
    let _ = writeln!(out, "Conditions: {}", conditions.join(", "));
    if let Some(t) = &s.effective_timings {
        let _ = writeln!(
            out,
            "Timings: lease {}s, fence after {}s, failover worst case {}s confirmed / {}s silent",
            t.lease_duration_seconds,
            t.fence_after_seconds,
            t.confirmed_failover_seconds,
            t.unconfirmed_failover_seconds
        );
    }
    if let Some(c) = &s.certificates {
        out.push_str(&certificate_line(c));
    }
    if let Some(r) = &s.resync {
        out.push_str(&resync_lines(r));
    }
    if let Some(op) = s.operations.first() {
        let _ = writeln!(
            out,
            "Last operation: {} {:?} {:?}{}",
            op.id,
            op.kind,
            op.phase,
            op.reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_pair as pair;

    #[test]
    fn the_vip_line_says_what_the_cluster_routes_and_where_it_is_moving() {
        let line = |status| status_screen(&pair(status), None).lines().nth(1).unwrap().to_string();
        assert_eq!(
            line(
                serde_json::json!({"activeMember": "secondary", "routing": {"member": "secondary", "addresses": ["10.0.0.2"]}})
            ),
            "VIP  Service web -> secondary (web-secondary, 10.0.0.2)"
        );
        assert_eq!(
            line(
                serde_json::json!({"activeMember": "secondary", "routing": {"member": "primary", "addresses": ["10.0.0.1"]}})
            ),
            "VIP  Service web -> primary (web-primary, 10.0.0.1)   (moving to secondary)"
        );
        assert_eq!(
            line(serde_json::json!({"activeMember": "primary", "routing": {"addresses": ["10.9.9.9"]}})),
            "VIP  Service web -> a pod that is not a member (10.9.9.9)   (moving to primary)"
        );
        assert_eq!(line(serde_json::json!({})), "VIP  Service web -> nobody");
    }

    #[test]
    fn the_certificate_line_says_until_when_and_what_a_rotation_waits_for() {
        let c = |v| serde_json::from_value::<crate::api::CertificatesStatus>(v).unwrap();
        let line = certificate_line(&c(serde_json::json!({
            "caNotAfter": "2036-01-01T00:00:00Z", "membersNotAfter": "2031-01-01T00:00:00Z",
            "renewAfter": "2029-05-01T00:00:00Z", "caRenewAfter": "2031-01-01T00:00:00Z"})));
        assert_eq!(
            line,
            "Certificates: members until 2031-01-01 00:00:00Z (renewed after 2029-05-01 00:00:00Z), CA until 2036-01-01 00:00:00Z (rotated after 2031-01-01 00:00:00Z)\n"
        );
        let line = certificate_line(&c(serde_json::json!({
            "rotation": {"stage": "Trusting", "cause": "rotatecertificates-1", "waitingFor": ["secondary"]}})));
        assert!(line.ends_with("; CA rotation (rotatecertificates-1) Trusting, waiting for secondary\n"), "{line}");
    }

    #[test]
    fn each_member_row_shows_how_full_its_volume_is_and_what_its_quarantine_holds() {
        let member = |name: &str, extra: serde_json::Value| {
            let mut m = serde_json::json!({"name": name, "pod": format!("web-{name}"), "role": "Standby",
                                           "state": "SecondarySyncing", "missedHeartbeats": 0});
            if let (Some(m), serde_json::Value::Object(extra)) = (m.as_object_mut(), extra) {
                m.extend(extra);
            }
            m
        };
        let screen = status_screen(
            &pair(serde_json::json!({"members": [
                member("primary", serde_json::json!({"volumeUsedPercent": 85, "quarantine": {"resyncs": 1, "files": 3, "bytes": 3145728}})),
                member("secondary", serde_json::json!({"quarantine": {"resyncs": 0, "files": 0, "bytes": 0}})),
            ]})),
            None,
        );
        let rows: Vec<&str> =
            screen.lines().filter(|l| l.starts_with("primary ") || l.starts_with("secondary ")).collect();
        assert!(rows[0].ends_with("85%     3 files, 3.0 MiB"), "{screen}");
        assert!(rows[1].ends_with("-       -"), "{screen}");
        assert!(screen.contains("SKEW   VOLUME  QUARANTINE"), "{screen}");
    }
}
