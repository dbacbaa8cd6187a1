//! `hapair agent`: the sidecar in each member pod.
//!
//! It enforces the member's role — the application reads it from the role
//! file — and follows one rule: **active only while holding the Lease at the
//! current epoch and within the renew deadline**. As active it renews every
//! heartbeat interval and fences itself (role `fenced`) once
//! `(missed − 1) × interval` has passed without a successful renewal, which is
//! always before the operator may promote the standby. As standby it promotes
//! itself only after the operator has made it the Lease holder. When the
//! application fails its health check while active, it releases the Lease so
//! the standby can take over at once.

mod drain;
mod failsafe;
pub mod lease;
mod lease_task;
mod lease_watch;
mod probe;
mod renewal;
mod role;
mod server;
pub mod sync;
mod sync_tasks;
pub mod volume;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{Instrument, info, warn};

use crate::api::{HealthCheckSpec, Member, Role};
use crate::metrics::AgentMetrics;
use crate::proto::{AgentStatus, lease_identity};

pub use probe::{Health, check_once};
pub use role::{RoleFiles, role_word};

/// The agent's settings; the operator sets them as the sidecar's environment.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Name of the pair (and of its Lease).
    #[arg(long, env = "HAPAIR_PAIR")]
    pub pair: String,
    /// Namespace of the pair.
    #[arg(long, env = "HAPAIR_NAMESPACE")]
    pub namespace: String,
    /// This member's configured role.
    #[arg(long, env = "HAPAIR_MEMBER")]
    pub member: Member,
    /// UID of this member's pod (part of its Lease identity).
    #[arg(long, env = "HAPAIR_POD_UID")]
    pub pod_uid: String,
    /// Address to serve on.
    #[arg(long, env = "HAPAIR_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// mTLS port (status, file sync).
    #[arg(long, env = "HAPAIR_AGENT_PORT", default_value_t = 7443)]
    pub port: u16,
    /// Plain-HTTP port for probes, metrics and the loopback-only role endpoint.
    #[arg(long, env = "HAPAIR_PROBE_PORT", default_value_t = 7444)]
    pub probe_port: u16,
    /// Host the health check connects to (the pod's IP).
    #[arg(long, env = "HAPAIR_APP_HOST", default_value = "127.0.0.1")]
    pub app_host: String,
    /// `spec.healthCheck` as JSON; no check when unset.
    #[arg(long, env = "HAPAIR_HEALTH_CHECK")]
    pub health_check: Option<String>,
    /// Heartbeat interval until the Lease says otherwise.
    #[arg(long, env = "HAPAIR_INTERVAL_SECONDS", default_value_t = 5)]
    pub interval_seconds: i32,
    /// Missed-heartbeat threshold until the Lease says otherwise.
    #[arg(long, env = "HAPAIR_MISSED_THRESHOLD", default_value_t = 3)]
    pub missed_threshold: i32,
    /// Directory of the role and epoch files.
    #[arg(long, env = "HAPAIR_RUN_DIR", default_value = "/var/run/hapair")]
    pub run_dir: PathBuf,
    /// Directory holding ca.crt, tls.crt and tls.key.
    #[arg(long, env = "HAPAIR_TLS_DIR", default_value = "/var/run/hapair-tls")]
    pub tls_dir: PathBuf,
    /// The member's data volume (file sync).
    #[arg(long, env = "HAPAIR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `spec.fileSync` as JSON; no file sync when unset.
    #[arg(long, env = "HAPAIR_FILE_SYNC")]
    pub file_sync: Option<String>,
}

/// What the agent knows and enforces; shared by its tasks.
#[derive(Debug)]
pub(crate) struct State {
    pub role: Role,
    pub epoch: i64,
    pub last_renew: Option<Instant>,
    pub interval_seconds: i32,
    pub missed_threshold: i32,
    pub health: Health,
    pub health_threshold: i32,
    pub released: Option<String>,
    pub renew_failures: u64,
    pub peer: Option<SocketAddr>,
    pub peer_reachable: Option<bool>,
    /// Set while handing over: role standby, Lease still held and renewed.
    pub draining_since: Option<Instant>,
    /// The drain's final generation is taken (the volume was quiet after
    /// the role file changed): only then does the status say `draining`,
    /// which the operator reads as "the standby may be caught up to this".
    pub drained: bool,
    /// Heartbeat settings whose lease duration the last successful renewal
    /// wrote. The fence deadline derives from these, never from settings
    /// merely read: with a longer interval adopted but not yet published,
    /// the operator still counts the old, shorter lease and may promote the
    /// standby before a deadline computed from the new values.
    pub published: (i32, i32),
    /// Active: the peer's promise not to act as active, asked for while the
    /// API server does not answer (see [`failsafe`]).
    pub confirmed: Option<failsafe::Confirmed>,
    /// Standby: the end of the promise given to the active.
    pub promised_until: Option<Instant>,
    /// Standby: the epoch at which the last Lease read named this member
    /// holder; no promise is given while it is set.
    pub named_at: Option<i64>,
    /// Standby: proving it holds the Lease (no promise meanwhile).
    pub claiming: bool,
    /// The highest epoch at which a Lease read showed another holder.
    pub seen_other: Option<i64>,
    /// One lease duration after the agent started: what a former life of
    /// this member may have promised ends by then.
    pub started_hold: Option<Instant>,
    /// Standby: the latest renewal read from another holder (holder, epoch,
    /// `renewTime`), and the moment that holder's fence deadline has passed
    /// for sure — counted from when this agent first read that renewal,
    /// which it was sent before (see [`failsafe::observe_holder`]).
    pub other_renewal: Option<(String, i64, Option<String>)>,
    pub other_fenced_by: Option<Instant>,
    /// The epoch at which this agent last read itself named holder (each
    /// naming is judged once).
    pub named_checked: Option<i64>,
    /// A claim deferred until then (the lease loop wakes up for it).
    pub claim_at: Option<Instant>,
    /// What the role files say, which is what the application acts on.
    pub files: FilesShow,
    /// The drain mark ([`crate::proto::ANN_DRAINING`]) on the Lease as last
    /// read or written, and whether the Lease had annotations at all.
    pub lease_mark: Option<String>,
    pub lease_annotated: bool,
    /// When this member last gave a handover up (its hold ran out), and
    /// at which epoch.
    pub gave_up: Option<(i64, Instant)>,
    /// The data volume as last measured ([`volume::volume_loop`]).
    pub volume: Option<crate::proto::VolumeUsage>,
    /// The Lease as the watch last delivered it, and when
    /// ([`lease_watch`]); `None` while no watch delivers.
    pub watched: Option<(lease::LeaseView, Instant)>,
    /// When the current watch started, and when the lease loop last read
    /// the Lease ([`lease_watch::fresh`]).
    pub watch_since: Option<Instant>,
    pub last_read: Option<Instant>,
    /// The epoch of the Lease as last read or watched (0: absent, or not
    /// read yet): a watched view at a lower one is older and dropped.
    pub lease_epoch_read: i64,
    /// The version of the last read or watched Lease held by the other
    /// member: a watch may start from it ([`lease_watch`]).
    pub lease_version: Option<String>,
}

/// What the role files show, as far as the agent knows. A write can fail (a
/// full or read-only run directory): the role the agent holds and the one
/// its application reads then differ, and every answer about this member
/// must take the worse of the two — a member whose files may still say
/// `active` is reported active to the peer and the operator until they are
/// rewritten or their deadline passes, or a new holder would promote at
/// once while this application still serves.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FilesShow {
    /// The last write failed; the watchdog retries it every tick.
    pub stale: bool,
    /// The deadline the files carry while they say `active` (as the fence
    /// instant it was written from).
    pub deadline: Option<Instant>,
    /// The files may still say `active` until then.
    pub active_until: Option<Instant>,
}

impl State {
    /// A standby that knows nothing yet, with the heartbeat settings it was
    /// started with. What a former life of this member may have promised
    /// ends one lease duration from now (`started_hold`).
    fn new(interval_seconds: i32, missed_threshold: i32, health_threshold: i32) -> Self {
        let (interval, missed) = (interval_seconds.max(1), missed_threshold.max(2));
        State {
            role: Role::Standby,
            epoch: 0,
            last_renew: None,
            interval_seconds: interval,
            missed_threshold: missed,
            health: Health::default(),
            health_threshold,
            released: None,
            renew_failures: 0,
            peer: None,
            peer_reachable: None,
            draining_since: None,
            drained: false,
            published: (interval, missed),
            confirmed: None,
            promised_until: None,
            named_at: None,
            claiming: false,
            seen_other: None,
            other_renewal: None,
            other_fenced_by: None,
            named_checked: None,
            claim_at: None,
            files: FilesShow::default(),
            lease_mark: None,
            lease_annotated: true,
            gave_up: None,
            volume: None,
            watched: None,
            watch_since: None,
            last_read: None,
            lease_epoch_read: 0,
            lease_version: None,
            started_hold: Some(Instant::now() + Duration::from_secs((interval * missed) as u64)),
        }
    }

    fn fence_after(&self) -> Duration {
        let (interval, missed) = self.published;
        Duration::from_secs(((missed - 1).max(1) * interval.max(1)) as u64)
    }

    /// When an active member must stop acting as active: the fence delay
    /// after its last renewal was sent, or the end of the peer's promise at
    /// this epoch if that is later. `None` before any renewal.
    fn fence_at(&self) -> Option<Instant> {
        let renewed = self.last_renew? + self.fence_after();
        let promised = self.confirmed.filter(|c| c.epoch == self.epoch).map(|c| c.until);
        Some(promised.map_or(renewed, |p| p.max(renewed)))
    }

    /// Serving only because the peer promised: the renewal deadline passed.
    fn on_promise(&self, now: Instant) -> bool {
        self.role == Role::Active && self.last_renew.is_some_and(|t| t + self.fence_after() <= now) && {
            self.fence_at().is_some_and(|t| t > now)
        }
    }

    /// The fence deadline on `CLOCK_BOOTTIME`, for the role file. `None`
    /// before any renewal.
    fn deadline(&self) -> Option<f64> {
        let at = self.fence_at()?;
        let now = Instant::now();
        let left = at.saturating_duration_since(now).as_secs_f64() - now.saturating_duration_since(at).as_secs_f64();
        Some(role::boottime() + left)
    }

    /// Records a successful renewal made with `used` (interval, missed) and
    /// adopts the settings the Lease carries for the next one. Returns
    /// whether they differ, so the caller renews again at once and publishes
    /// them. The renewal counts from when it was `sent`: the API server may
    /// have written it at any moment after that, and the operator counts the
    /// lease from its own observation of the write, so stamping the answer's
    /// arrival would let a slow answer eat the fence margin.
    fn record_renewal(&mut self, used: (i32, i32), view: &lease::LeaseView, sent: Instant) -> bool {
        self.last_renew = Some(sent);
        self.published = used;
        if let Some(i) = view.interval_seconds {
            self.interval_seconds = i;
        }
        if let Some(m) = view.missed_threshold {
            self.missed_threshold = m.max(2);
        }
        (self.interval_seconds, self.missed_threshold) != used
    }
    fn app_healthy(&self) -> Option<bool> {
        self.health.healthy(self.health_threshold)
    }
    fn ready(&self) -> bool {
        self.role != Role::Fenced && self.app_healthy() != Some(false)
    }

    /// The role to report to the peer and the operator: `active` while the
    /// role files may still show it (see [`FilesShow`]), else the role held.
    fn shown_role(&self, now: Instant) -> Role {
        if self.files.active_until.is_some_and(|t| t > now) { Role::Active } else { self.role }
    }
}

pub(crate) struct Agent {
    pub config: Config,
    pub state: Mutex<State>,
    pub files: RoleFiles,
    pub wake: Notify,
    pub metrics: AgentMetrics,
    pub registry: prometheus::Registry,
    pub identity: String,
    pub syncer: Option<Arc<sync::Syncer>>,
    /// How to reach the peer's agent (client certificate, its name).
    pub peer_tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    /// When this agent started (reported as its uptime).
    pub started: Instant,
    /// Its TLS material, reloaded when the pair's Secret changes
    /// ([`server::tls_reload_loop`]).
    pub tls: Option<Arc<crate::tls::Material>>,
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the role, publishing it to the application before anything else
    /// may act on it.
    fn set_role(&self, state: &mut State, role: Role, epoch: i64) {
        if state.role == role && state.epoch == epoch {
            return;
        }
        let leaving = state.role == Role::Active && role != Role::Active;
        info!(from = role_word(state.role), to = role_word(role), epoch, "role changed");
        state.role = role;
        state.epoch = epoch;
        if !self.write_files(state) && leaving {
            // The application may go on reading `active` until the deadline
            // its files carry; nobody may count this member as stood down
            // before then.
            let until = state.files.deadline;
            state.files.active_until = state.files.active_until.max(until);
            warn!(
                epoch,
                "left the active role but the role file still says active: reported active until it is rewritten or its deadline passes"
            );
        }
        self.metrics.set_role(role);
        self.publish_serving(state);
        if let Some(syncer) = &self.syncer {
            // Scan or pull for the new role now, not at the next interval.
            syncer.wake.notify_one();
        }
    }

    /// Writes the role, epoch and deadline the state holds to the role
    /// files; on failure the files are marked stale for the watchdog to
    /// retry. Returns whether they were written.
    fn write_files(&self, state: &mut State) -> bool {
        match self.files.publish(state.role, state.epoch, state.deadline()) {
            Ok(()) => {
                state.files = FilesShow {
                    stale: false,
                    deadline: state.fence_at().filter(|_| state.role == Role::Active),
                    active_until: None,
                };
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot write the role files; retrying");
                self.metrics.role_file_failures.inc();
                state.files.stale = true;
                false
            }
        }
    }

    /// Moves the role file's deadline after a renewal or a promise.
    fn refresh_deadline(&self, state: &mut State) {
        if state.role != Role::Active {
            return;
        }
        if state.files.stale {
            // Rewrite them whole: the role itself may not be written yet.
            self.write_files(state);
            return;
        }
        match self.files.refresh(state.deadline()) {
            Ok(()) => state.files.deadline = state.fence_at(),
            Err(e) => {
                // The file keeps the earlier deadline: the application stops
                // sooner, never later.
                warn!(error = %e, "cannot move the role file's deadline");
                self.metrics.role_file_failures.inc();
            }
        }
    }

    /// Tells file sync whether this member serves (active, or draining for
    /// a handover): no file is pulled into its volume while it does.
    fn publish_serving(&self, state: &State) {
        if let Some(syncer) = &self.syncer {
            syncer.set_serving(state.role == Role::Active || state.draining_since.is_some());
        }
    }

    pub fn status(&self) -> AgentStatus {
        let sync = self.syncer.as_ref().map(|x| x.status());
        let tls = self.tls.as_ref().map(|t| t.identity());
        let s = self.lock();
        AgentStatus {
            member: self.config.member,
            pod_uid: self.config.pod_uid.clone(),
            role: s.shown_role(Instant::now()),
            epoch: s.epoch,
            app_healthy: s.app_healthy(),
            wall_clock: crate::clock::now(),
            peer_reachable: s.peer_reachable,
            sync_generation: sync.as_ref().map_or(0, |x| x.point.generation),
            lease_renew_failures: s.renew_failures,
            released: s.released.clone(),
            draining: s.drained && !s.files.stale && s.drain_marked(),
            marks_drain: true,
            handover_given_up_seconds_ago: s
                .gave_up
                .filter(|(epoch, _)| *epoch == s.epoch)
                .map(|(_, at)| at.elapsed().as_secs_f64()),
            failsafe: s.on_promise(Instant::now()),
            sync,
            volume: s.volume,
            uptime_seconds: Some(self.started.elapsed().as_secs_f64()),
            certificate_not_after: tls.as_ref().and_then(|t| crate::tls::not_after(&t.cert)),
            certificate_sha256: tls.as_ref().and_then(|t| crate::tls::rotation::fingerprint(&t.cert)),
            trusted_ca_sha256: tls.map(|t| crate::tls::rotation::fingerprints(&t.ca)).unwrap_or_default(),
        }
    }

    /// The peer's agent, once the operator has told us where it is.
    pub fn peer_target(&self) -> Option<crate::http::Target> {
        let addr = self.lock().peer?;
        let (tls, server_name) = self.peer_tls.clone()?;
        Some(crate::http::Target { addr, server_name, tls })
    }
}

/// The agent of one member pod, until the process is told to stop.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default().await?;
    run_with(config, client, crate::telemetry::shutdown_signal()).await
}

/// One agent on a given API client until `stop` completes; every task it
/// starts ends with it. A process may host many agents this way — the scale
/// benchmark runs a thousand pairs' members in one — each on its own
/// address (`config.bind`), run directory and certificates. (A
/// fault-injection build reads its clock offset from the first agent's run
/// directory only: one clock per process.)
pub async fn run_with(
    config: Config,
    client: Client,
    stop: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let health_spec: Option<HealthCheckSpec> = match &config.health_check {
        Some(json) if !json.trim().is_empty() => Some(serde_json::from_str(json)?),
        _ => None,
    };
    crate::clock::offset_file_in(&config.run_dir);
    let registry = prometheus::Registry::new();
    let metrics = AgentMetrics::register(&registry)?;
    let syncer = match (&config.file_sync, &config.data_dir) {
        (Some(json), Some(dir)) if !json.trim().is_empty() => {
            let spec: crate::api::FileSyncSpec = serde_json::from_str(json)?;
            (!spec.paths.is_empty())
                .then(|| sync::Syncer::open(dir.clone(), spec, config.member).map(Arc::new))
                .transpose()?
        }
        (Some(json), None) if !json.trim().is_empty() => return Err("HAPAIR_FILE_SYNC needs HAPAIR_DATA_DIR".into()),
        _ => None,
    };
    let tls = crate::tls::Material::new(&server::load_identity(&config.tls_dir)?)?;
    let peer_tls = match (
        tls.client_config(),
        crate::tls::server_name(&crate::tls::member_server_name(config.member.peer(), &config.pair, &config.namespace)),
    ) {
        (Ok(c), Ok(n)) => Some((c, n)),
        _ => None,
    };
    let files = RoleFiles::new(&config.run_dir)?;
    files.publish(Role::Standby, 0, None)?;
    metrics.set_role(Role::Standby);
    let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
    let agent = Arc::new(Agent {
        identity: lease_identity(config.member, &config.pod_uid),
        state: Mutex::new(State::new(
            config.interval_seconds,
            config.missed_threshold,
            health_spec.as_ref().map_or(1, |h| h.failure_threshold),
        )),
        files,
        wake: Notify::new(),
        metrics,
        registry,
        config,
        syncer,
        peer_tls,
        started: Instant::now(),
        tls: Some(tls.clone()),
    });
    info!(pair = %agent.config.pair, member = %agent.config.member, "agent starting");
    let servers = server::start(agent.clone(), &tls).await?;
    // Dropped when this returns, which ends every task below.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server::tls_reload_loop(agent.clone()).in_current_span());
    if let Some(spec) = health_spec {
        tasks.spawn(probe::health_loop(agent.clone(), spec).in_current_span());
    }
    tasks.spawn(lease_task::watchdog(agent.clone()).in_current_span());
    tasks.spawn(lease_watch::lease_watch(agent.clone(), leases.clone()).in_current_span());
    tasks.spawn(failsafe::failsafe_loop(agent.clone()).in_current_span());
    tasks.spawn(server::peer_loop(agent.clone()).in_current_span());
    if let Some(dir) = agent.config.data_dir.clone() {
        tasks.spawn(volume::volume_loop(agent.clone(), dir).in_current_span());
    }
    if agent.syncer.is_some() {
        tasks.spawn(sync_tasks::sync_loop(agent.clone()).in_current_span());
        tasks.spawn(sync_tasks::quarantine_loop(agent.clone()).in_current_span());
    }
    tokio::select! {
        _ = lease_task::lease_loop(agent.clone(), leases) => {}
        _ = servers => {}
        _ = stop => info!("agent stopping"),
    }
    // Leaving: stop serving as active before the process ends.
    let mut s = agent.lock();
    let epoch = s.epoch;
    agent.set_role(&mut s, Role::Standby, epoch);
    Ok(())
}

#[cfg(test)]
mod tests;
