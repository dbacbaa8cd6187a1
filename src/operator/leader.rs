//! Leader election among operator replicas with a Lease of their own. Only
//! the leader acts. A replica that cannot renew in time stops (its
//! Deployment restarts it), so two replicas never act at once; a new leader
//! waits a full lease duration, on its own clock, before taking over.
//!
//! The election runs on an OS thread of its own, with its own runtime and
//! its own API client. A leader with many pairs starts a worker for each at
//! once and its runtime and client are then busy for seconds; a renewal
//! queued behind them missed its bound and the leader stepped down, the next
//! one re-listed everything and started every worker at once again — a
//! restart storm measured at 1,000 pairs. On its own thread and connection a
//! renewal waits only for the API server. kube-controller-manager's election
//! likewise runs beside, not among, its controllers.
//!
//! Losing the lead must stop the replica even when its main runtime is too
//! busy to notice at once: [`Leadership`] resolves for the caller, and a
//! replica that is still there `renew_every` later is ended by the election
//! thread itself (when asked to, as the operator does) — well before another
//! replica can have waited out the lease.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::metrics::OperatorMetrics;

#[derive(Clone)]
pub struct Elector {
    config: kube::Config,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
    renew_every: Duration,
    /// End the whole process this long after the lead is lost, if it has
    /// not ended by then.
    exit_after_loss: Option<Duration>,
}

fn lease_seconds() -> u64 {
    std::env::var("HAPAIR_LEADER_LEASE_SECONDS").ok().and_then(|v| v.parse().ok()).filter(|v| *v >= 2).unwrap_or(15)
}

/// What the holder asks of its election thread.
enum Ask {
    /// Stop renewing and hand the Lease over (a clean shutdown).
    Release(oneshot::Sender<()>),
}

/// This replica leads until this resolves (the lead is lost). Dropping it
/// stops the renewals without handing the Lease over; [`Leadership::release`]
/// hands it over.
pub struct Leadership {
    lost: oneshot::Receiver<()>,
    asks: mpsc::UnboundedSender<Ask>,
    done: bool,
}

impl Leadership {
    /// Whether the lead is lost (without waiting).
    pub fn is_lost(&mut self) -> bool {
        if !self.done {
            self.done = !matches!(self.lost.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        }
        self.done
    }

    /// Hands leadership over on a clean shutdown so the next replica need
    /// not wait out the lease. Bounded: an API server that does not answer
    /// leaves the Lease to run out.
    pub async fn release(self) {
        let (tx, rx) = oneshot::channel();
        if self.asks.send(Ask::Release(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

impl Future for Leadership {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        match Pin::new(&mut self.lost).poll(cx) {
            Poll::Ready(_) => {
                self.done = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Elector {
    pub fn new(config: kube::Config, namespace: &str, name: &str, identity: &str) -> Self {
        Self::with_duration(config, namespace, name, identity, Duration::from_secs(lease_seconds()))
    }

    /// An elector whose Lease lasts `duration`, renewed every fifth of it.
    pub fn with_duration(
        config: kube::Config,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Elector {
            config,
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            renew_every: duration / 5,
            exit_after_loss: None,
        }
    }

    /// Once the lead is lost, the process ends if it is still there one
    /// renewal period later (a busy runtime that has not yet stopped acting).
    pub fn exit_on_loss(mut self) -> Self {
        self.exit_after_loss = Some(self.renew_every);
        self
    }

    fn now() -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::now())
    }

    /// Waits until this replica leads. The election thread renews from then
    /// on, whatever the caller does next (a slow first sync of the caches
    /// must not let the Lease lapse while this replica goes on to act).
    pub async fn acquire(&self, metrics: &OperatorMetrics) -> Result<Leadership, kube::Error> {
        let (acquired_tx, acquired) = oneshot::channel();
        let (lost_tx, lost) = oneshot::channel();
        let (asks, asks_rx) = mpsc::unbounded_channel();
        let this = self.clone();
        let leader = metrics.leader.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("leader-election".into())
            .spawn(move || {
                let _span = span.entered();
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = acquired_tx.send(Err(kube::Error::Service(Box::new(e))));
                        return;
                    }
                };
                rt.block_on(this.elect(leader, acquired_tx, lost_tx, asks_rx));
            })
            .map_err(|e| kube::Error::Service(Box::new(e)))?;
        match acquired.await {
            Ok(Ok(())) => Ok(Leadership { lost, asks, done: false }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(kube::Error::Service("the leader election thread ended".into())),
        }
    }

    /// The election thread: acquire, then renew until the lead is lost or
    /// the holder lets go.
    async fn elect(
        self,
        leader: prometheus::IntGauge,
        mut acquired: oneshot::Sender<Result<(), kube::Error>>,
        lost: oneshot::Sender<()>,
        mut asks: mpsc::UnboundedReceiver<Ask>,
    ) {
        let api: Api<Lease> = match Client::try_from(self.config.clone()) {
            Ok(c) => Api::namespaced(c, &self.namespace),
            Err(e) => {
                let _ = acquired.send(Err(e));
                return;
            }
        };
        // A caller that stopped waiting (a timeout) ends the attempt.
        let taken = tokio::select! {
            taken = self.take(&api) => taken,
            _ = acquired.closed() => return,
        };
        // The lead counts from when the write that took it was sent, as
        // every renewal does: the Lease changed no earlier than that.
        let (mut current, mut last) = match taken {
            Ok(taken) => taken,
            Err(e) => {
                let _ = acquired.send(Err(e));
                return;
            }
        };
        leader.set(1);
        info!(lease = %self.name, "acquired leadership");
        if acquired.send(Ok(())).is_err() {
            // The caller is gone: nothing will act on this lead.
            self.hand_over(&api).await;
            leader.set(0);
            return;
        }
        // Each renewal is sent one period after the last one that
        // succeeded was *sent*, not one period after its answer: under load
        // an answer takes seconds (2.3 s in `make bench-scale`'s creation
        // burst), and counting the period from it left the next renewal
        // only 3.7 s before the lead had to end, which it missed. A failed
        // one is tried again a third of a period after it was sent (at once
        // if it took longer).
        let mut next = last + self.renew_every;
        loop {
            tokio::select! {
                ask = asks.recv() => {
                    leader.set(0);
                    // Dropped without a word: stop renewing, keep the Lease
                    // to run out (the caller may not have stopped acting).
                    if let Some(Ask::Release(done)) = ask {
                        self.hand_over(&api).await;
                        let _ = done.send(());
                    }
                    return;
                }
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            // A renewal counts from when it was sent, and may take until
            // the moment this replica must stop acting anyway (as
            // client-go's renew deadline): an API server that answers in
            // 4 s under load still keeps its leader, one that does not
            // answer in time does not.
            let sent = Instant::now();
            let deadline = last + self.duration.saturating_sub(2 * self.renew_every);
            next = Instant::now() + self.renew_every / 3;
            match tokio::time::timeout(deadline.saturating_duration_since(sent), self.renew(&api, &mut current)).await {
                Ok(Ok(true)) => {
                    last = sent;
                    next = sent + self.renew_every;
                }
                Ok(Ok(false)) => break,
                Ok(Err(why)) => warn!(%why, "leader lease renewal failed"),
                Err(_) => warn!(after = ?sent.elapsed(), "leader lease renewal failed: no answer in time"),
            }
            // Stop acting well before another replica may take over.
            if Instant::now() >= last + self.duration.saturating_sub(2 * self.renew_every) {
                warn!(since = ?last.elapsed(), "leader lease not renewed in time: stepping down");
                break;
            }
        }
        leader.set(0);
        let _ = lost.send(());
        if let Some(grace) = self.exit_after_loss {
            tokio::time::sleep(grace).await;
            error!(after = ?grace, "lost leadership and still running: ending the process");
            std::process::exit(1);
        }
    }

    /// Takes the Lease: when nobody holds it, this replica already does, or
    /// its holder has not renewed it for a whole lease duration as seen on
    /// this replica's clock.
    async fn take(&self, api: &Api<Lease>) -> Result<(Lease, Instant), kube::Error> {
        let mut seen: Option<(String, Instant)> = None;
        loop {
            match api.get_opt(&self.name).await? {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                        spec: Some(self.spec(1)),
                    };
                    let sent = Instant::now();
                    if let Ok(written) = api.create(&PostParams::default(), &lease).await {
                        return Ok((written, sent));
                    }
                }
                Some(mut lease) => {
                    let rv = lease.resource_version().unwrap_or_default();
                    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
                    if seen.as_ref().is_none_or(|(r, _)| *r != rv) {
                        seen = Some((rv, Instant::now()));
                    }
                    let expired = seen.as_ref().is_some_and(|(_, t)| t.elapsed() >= self.duration);
                    if holder.is_empty() || holder == self.identity || expired {
                        let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                        lease.spec = Some(self.spec(transitions + i32::from(holder != self.identity)));
                        let sent = Instant::now();
                        if let Ok(written) = api.replace(&self.name, &PostParams::default(), &lease).await {
                            return Ok((written, sent));
                        }
                    }
                }
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// One renewal: the Lease as this replica last wrote it, its renew time
    /// moved on, written back in one request (an overloaded API server
    /// answers one request sooner than a read and a write). `Ok(false)`:
    /// another replica holds the Lease — stop at once. A conflict (someone
    /// wrote it since) reads it again: still this replica's (an annotation
    /// added by hand, say), it is written again; another's, stop. `Err`: no
    /// answer to trust either way (a failed read or write); tried again next
    /// period, and the lead ends when none succeeded for long enough. Each
    /// says why in the log: a slow API server and a Lease someone deleted
    /// call for different fixes.
    async fn renew(&self, api: &Api<Lease>, current: &mut Lease) -> Result<bool, String> {
        for _ in 0..2 {
            let mut lease = current.clone();
            let Some(spec) = lease.spec.as_mut() else {
                return Err("it has no spec".to_string());
            };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                warn!(holder = ?spec.holder_identity, "the leader lease names another replica: stepping down");
                return Ok(false);
            }
            spec.renew_time = Some(Elector::now());
            match api.replace(&self.name, &PostParams::default(), &lease).await {
                Ok(written) => {
                    *current = written;
                    return Ok(true);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    *current = api.get(&self.name).await.map_err(|e| format!("reading it after a conflict: {e}"))?;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    warn!("the leader lease was deleted: stepping down");
                    return Ok(false);
                }
                Err(e) => return Err(format!("writing it: {e}")),
            }
        }
        Err("written by someone else twice in a row".to_string())
    }

    fn spec(&self, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            lease_transitions: Some(transitions),
            acquire_time: Some(Self::now()),
            renew_time: Some(Self::now()),
            ..Default::default()
        }
    }

    /// Empties the holder so the next replica need not wait out the lease.
    async fn hand_over(&self, api: &Api<Lease>) {
        if let Ok(mut lease) = api.get(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = Some(String::new());
            let _ = api.replace(&self.name, &PostParams::default(), &lease).await;
        }
    }
}
