//! `hapair operator`: watches pairs and everything they own, and keeps
//! exactly one member active.
//!
//! Each pair gets a worker task that loops gather → decide → act, woken by
//! any change to the pair or its objects, by its agents' answers, or by the
//! next deadline the decision names (e.g. when an unrenewed Lease would
//! expire). One task per pair serialises its decisions and keeps failover
//! timing in the operator's hands rather than a generic requeue queue's.
//!
//! # Map
//!
//! Each layer imports only the layers below it; nothing points back up.
//!
//! | layer | files | what it does |
//! |---|---|---|
//! | run | `mod.rs`, `worker.rs` | watches (pairs through `DeserializeGuard`), leader election, one worker per pair ordering the steps |
//! | write | `act.rs` (+ `fault.rs`, test builds only) | **every** API write and agent call: Lease CAS, Services, pods, Jobs, labels, status, Events, drain/sync/wake requests |
//! | read | `gather.rs`, `poller.rs`, `context.rs`, `stores.rs`, `drift.rs` | the watch caches and the agents' answers into an `Observed`, with the worker's memory; whether the RBAC and NetworkPolicy still say what was built |
//! | decide | `decide.rs` | the precedence list: bootstrap, Lease timings, request, failback, split brain, failover, what follows |
//! | rules | `operations.rs`, `failover.rs`, `failback.rs`, `split_brain.rs`, `outage.rs`, `returning.rs` | one concern each, pure, returning what it changes |
//! | status | `status.rs` (one builder per condition), `resync_status.rs`, `publish.rs` (metrics) | the pair's status and series from the decision |
//! | model | `model.rs`, `observe.rs` | the shared types (`Decision`, `Step`, `ResyncLabel`, reasons) and predicates, the observation types |
//! | build | `build/` (`common`, `objects`, `jobs`, `netpol`, `placement`) | pure construction of every object the operator owns |

pub mod act;
pub mod build;
pub mod certificates;
pub mod claims;
pub mod cold_start;
mod conditions;
pub mod context;
pub mod decide;
pub mod drift;
mod endpoints;
pub mod failback;
pub mod failover;
pub mod fault;
pub mod gather;
pub mod leader;
pub mod member_state;
pub mod model;
pub mod observe;
pub mod operations;
pub mod outage;
mod poller;
pub mod publish;
pub mod resync_status;
pub mod returning;
pub mod routing;
pub mod split_brain;
pub mod status;
pub mod stores;
pub mod unrecorded;
pub mod volume;
mod worker;
pub mod writes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use context::Context;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use stores::Stores;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::api::{HighAvailabilityPair, LABEL_PAIR};
use crate::metrics::OperatorMetrics;
use build::BuildContext;

/// The operator's settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Image of the agent sidecar injected into member pods (the operator's own image).
    #[arg(long, env = "HAPAIR_AGENT_IMAGE", default_value = concat!("hapair:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,
    /// Watch only these namespaces, comma-separated (default: all).
    #[arg(long, env = "HAPAIR_WATCH_NAMESPACES", default_value = "")]
    pub watch_namespaces: String,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, env = "HAPAIR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of /healthz and /readyz.
    #[arg(long, env = "HAPAIR_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// Namespace of the operator's own leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_namespace: String,
    /// Name of the operator's own leader Lease.
    #[arg(long, env = "HAPAIR_LEADER_LEASE", default_value = "hapair-operator")]
    pub leader_lease: String,
    /// This replica's identity in leader election (default: host name and PID).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Give each pair a NetworkPolicy letting only its own pods and this
    /// operator's pods reach the agents' mTLS port.
    #[arg(long, env = "HAPAIR_AGENT_NETWORK_POLICY", default_value_t = false, action = clap::ArgAction::Set)]
    pub agent_network_policy: bool,
    /// Labels of the operator's pods (in the namespace of `--leader-namespace`)
    /// for that NetworkPolicy, as `key=value,...`.
    #[arg(long, env = "HAPAIR_OPERATOR_SELECTOR", default_value = "app.kubernetes.io/name=hapair,app.kubernetes.io/component=operator", value_parser = parse_operator_selector)]
    pub operator_selector: std::collections::BTreeMap<String, String>,
}

fn parse_operator_selector(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    build::netpol::parse_selector(s)
        .ok_or_else(|| format!("{s:?} is not a label list like app.kubernetes.io/name=hapair,tier=ops"))
}

/// Running workers by (namespace, pair), each with the handle that wakes it.
type Workers = HashMap<(String, String), Arc<Notify>>;

pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let kube_config = kube::Config::infer().await?;
    let client = Client::try_from(kube_config.clone())?;
    let registry = prometheus::Registry::new();
    let metrics = OperatorMetrics::register(&registry)?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(endpoints::serve_health(config.health_addr, ready.clone()));
    tokio::spawn(endpoints::serve_metrics(config.metrics_addr, registry));

    let identity = config.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "hapair".into());
        format!("{host}-{}", std::process::id())
    });
    let elector =
        leader::Elector::new(kube_config, &config.leader_namespace, &config.leader_lease, &identity).exit_on_loss();
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    info!(%identity, "waiting to lead");
    let mut lost = elector.acquire(&metrics).await?;
    info!(%identity, "leading: observing every pair before the first decision");

    let selector = watcher::Config::default().labels(LABEL_PAIR);
    let namespaces: Vec<Option<String>> = match stores::parse_namespaces(&config.watch_namespaces) {
        list if list.is_empty() => vec![None],
        list => list.into_iter().map(Some).collect(),
    };
    info!(namespaces = ?namespaces, "watching");
    // One reflector per kind and namespace.
    let (pairs, pair_feeds) = Stores::<DeserializeGuard<HighAvailabilityPair>>::reflect(&client, &namespaces);
    let (pods, pod_feeds) = Stores::<Pod>::reflect(&client, &namespaces);
    let (services, service_feeds) = Stores::<Service>::reflect(&client, &namespaces);
    let (endpoint_slices, slice_feeds) =
        Stores::<k8s_openapi::api::discovery::v1::EndpointSlice>::reflect(&client, &namespaces);
    let (leases, lease_feeds) = Stores::<Lease>::reflect(&client, &namespaces);
    let (jobs, job_feeds) = Stores::<Job>::reflect(&client, &namespaces);
    let (claims, claim_feeds) =
        Stores::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::reflect(&client, &namespaces);
    let (roles, role_feeds) = Stores::<k8s_openapi::api::rbac::v1::Role>::reflect(&client, &namespaces);
    let (role_bindings, binding_feeds) =
        Stores::<k8s_openapi::api::rbac::v1::RoleBinding>::reflect(&client, &namespaces);
    let (network_policies, policy_feeds) = if config.agent_network_policy {
        let (s, f) = Stores::<k8s_openapi::api::networking::v1::NetworkPolicy>::reflect(&client, &namespaces);
        (Some(s), f)
    } else {
        (None, Vec::new())
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pairs,
        pods,
        services,
        endpoint_slices,
        leases,
        jobs,
        claims,
        roles,
        role_bindings,
        network_policies,
        build: BuildContext {
            agent_image: config.agent_image.clone(),
            agent_network_policy: config.agent_network_policy.then(|| build::OperatorPods {
                namespace: config.leader_namespace.clone(),
                labels: config.operator_selector.clone(),
            }),
        },
        metrics,
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "hapair-operator".into(), instance: Some(identity) },
        ),
        supporting_passes: context::SupportingSlots::default(),
        first_looks: tokio::sync::Semaphore::new(context::FIRST_LOOKS_AT_ONCE),
        urgent_looks: tokio::sync::Semaphore::new(context::FIRST_LOOKS_AT_ONCE),
    });

    // What the caches keep of each object: everything but its field
    // managers. The operator never reads them (it writes by server-side
    // apply, and a replace that leaves them out keeps them), and parsed
    // into JSON trees they were the largest part of a cached pod or pair —
    // the caches' memory grows with every pair.
    fn slim<K: kube::Resource>(o: &mut K) {
        o.meta_mut().managed_fields = None;
    }
    // Every event names a pair to wake: the pair itself or the owner named by the label.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let keyed = |tx: tokio::sync::mpsc::UnboundedSender<(String, String)>| {
        move |ns: Option<String>, pair: Option<String>| {
            if let (Some(ns), Some(pair)) = (ns, pair) {
                let _ = tx.send((ns, pair));
            }
        }
    };
    // Pairs are read through `DeserializeGuard`: one stored object that no
    // longer deserializes must not fail the whole list (that would leave
    // every pair in every namespace without a worker). Its worker reports it
    // and holds; every other pair goes on.
    for (writer, api) in pair_feeds {
        let send = keyed(tx.clone());
        let pair_stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()).modify(slim))
            .default_backoff()
            .for_each(move |ev| {
                match ev {
                    Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) | Ok(Event::Delete(p)) => {
                        send(p.namespace(), Some(p.name_any()))
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "watching pairs"),
                }
                futures::future::ready(())
            });
        tokio::spawn(pair_stream);
    }
    macro_rules! owned_stream {
        ($writer:expr, $api:expr) => {
            owned_stream!($writer, $api, slim)
        };
        ($writer:expr, $api:expr, $slim:expr) => {{
            let send = keyed(tx.clone());
            reflector::reflector($writer, watcher::watcher($api, selector.clone()).modify($slim)).default_backoff().for_each(move |ev| {
                match ev {
                    Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) | Ok(Event::Delete(o)) => {
                        send(o.namespace(), o.labels().get(LABEL_PAIR).cloned())
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "watching owned objects"),
                }
                futures::future::ready(())
            })
        }};
    }
    for (w, api) in pod_feeds {
        tokio::spawn(owned_stream!(w, api, observe::slim_pod));
    }
    for (w, api) in service_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    for (w, api) in slice_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    for (w, api) in lease_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    for (w, api) in job_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    for (w, api) in claim_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    for (w, api) in role_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    for (w, api) in binding_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    for (w, api) in policy_feeds {
        tokio::spawn(owned_stream!(w, api));
    }
    // A new leader decides nothing until it has seen everything, and stops
    // if it loses the lead meanwhile (its Lease is renewed all along).
    let synced = async {
        tokio::join!(
            ctx.pairs.wait_until_ready(),
            ctx.pods.wait_until_ready(),
            ctx.services.wait_until_ready(),
            ctx.endpoint_slices.wait_until_ready(),
            ctx.leases.wait_until_ready(),
            ctx.jobs.wait_until_ready(),
            ctx.claims.wait_until_ready(),
            ctx.roles.wait_until_ready(),
            ctx.role_bindings.wait_until_ready(),
            async {
                if let Some(p) = &ctx.network_policies {
                    p.wait_until_ready().await;
                }
            }
        )
    };
    tokio::select! {
        _ = synced => {}
        _ = &mut lost => {
            warn!("lost leadership while the caches synced: stopping");
            return Ok(());
        }
    }
    for p in ctx.pairs.state() {
        let _ = tx.send((p.namespace().unwrap_or_default(), p.name_any()));
    }

    let workers: Arc<Mutex<Workers>> = Arc::default();
    let dispatch = async {
        while let Some(key) = rx.recv().await {
            let mut map = workers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get(&key) {
                n.notify_one();
                continue;
            }
            if ctx.pairs.get(&ObjectRef::new(&key.1).within(&key.0)).is_none() {
                continue;
            }
            let notify = Arc::new(Notify::new());
            map.insert(key.clone(), notify.clone());
            let (ctx, workers, key) = (ctx.clone(), workers.clone(), key.clone());
            tokio::spawn(async move {
                worker::run(ctx.clone(), key.0.clone(), key.1.clone(), notify).await;
                workers.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                ctx.forget(&key.0, &key.1);
            });
        }
    };
    let shutdown = tokio::select! {
        _ = dispatch => false,
        _ = &mut lost => {
            warn!("lost leadership: stopping so a fresh replica re-observes everything");
            false
        }
        _ = crate::telemetry::shutdown_signal() => true,
    };
    if shutdown {
        info!("operator stopping");
        lost.release().await;
    }
    Ok(())
}
