//! The pair's certificates over time: the operator renews the members' and
//! its own certificates when they are two-thirds through their life — or at
//! once when they have expired or do not read, which is how a pair whose
//! certificates ran out while nobody renewed them recovers by itself. The
//! new ones are issued by the pair's CA as the Secret holds it, so agents
//! that load them at different moments (each when the kubelet brings the
//! changed Secret into its pod) keep trusting each other; agents and the
//! operator pick them up without a restart or a failover ([`crate::tls::Material`]).
//!
//! The CA itself is rotated with an overlap ([`crate::tls::rotation`]) when
//! it is half through its life, when its key does not read, or when a
//! `rotateCertificates` request asks: each step is written once every
//! running agent reports (by fingerprint) that it loaded the step before.
//! A CA that has already expired is replaced with everything at once —
//! nothing trusts anything any more, so there is no overlap to keep.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::act::{self, ActError};
use super::context::Context;
use super::gather::Memory;
use super::observe::Observed;
use crate::api::{CertificateRotation, HighAvailabilityPair, Member, OperationPhase};
use crate::tls::{self, rotation};

/// What started the latest CA rotation (a request's id, or `automatic`).
pub const ROTATION_CAUSE: &str = "hapair.dev/rotation-cause";
/// When the rotation's current step was written.
pub const ROTATION_SINCE: &str = "hapair.dev/rotation-since";
/// An agent too old to report fingerprints is waited for this long per step.
const UNREPORTED_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(180);

/// The Secret's entries that are text (PEM all of them).
pub fn secret_text(secret: &Secret) -> std::collections::BTreeMap<String, String> {
    let data = secret.data.iter().flatten();
    data.filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?))).collect()
}

/// The operator's own identity towards the pair's agents, from its Secret.
pub fn client_identity(data: &std::collections::BTreeMap<String, String>) -> tls::Identity {
    let get = |k: &str| data.get(k).cloned().unwrap_or_default();
    tls::Identity { ca: get(tls::CA_CERT), cert: get(tls::CLIENT_CERT), key: get(tls::CLIENT_KEY) }
}

/// The pair's TLS Secret (made if missing), read for the first time: the
/// operator's client configuration, which follows the Secret from then on.
pub async fn load(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    mem: &mut Memory,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ActError> {
    let secret = act::ensure_tls(ctx, pair).await?;
    let data = secret_text(&secret);
    let material = tls::Material::new(&client_identity(&data))?;
    mem.tls = Some(material.clone());
    seen(mem, secret, &data);
    Ok(material.client_config()?)
}

/// Reads the pair's TLS Secret again: a renewed certificate or a new CA
/// bundle is used from the next call to an agent on (the poller's and
/// every other client built from the same material).
pub async fn reload(ctx: &Context, pair: &HighAvailabilityPair, mem: &mut Memory) -> Result<(), ActError> {
    let secret = act::ensure_tls(ctx, pair).await?;
    adopt(pair, mem, secret);
    Ok(())
}

/// What the Secret says, remembered: its expiry and the rotation it records.
fn seen(mem: &mut Memory, secret: Secret, data: &std::collections::BTreeMap<String, String>) {
    mem.certificates = Some(tls::expiry(data));
    let note = |k: &str| secret.annotations().get(k).cloned();
    let stage = match rotation::stage(data) {
        rotation::Stage::Steady => None,
        rotation::Stage::Trusting => Some("Trusting"),
        rotation::Stage::Presenting => Some("Presenting"),
    };
    let waiting = mem.rotation.under_way.as_ref().map(|r| r.waiting_for.clone()).unwrap_or_default();
    mem.rotation.last_cause = note(ROTATION_CAUSE);
    mem.rotation.under_way = stage.map(|stage| CertificateRotation {
        stage: stage.into(),
        cause: note(ROTATION_CAUSE),
        since: note(ROTATION_SINCE).and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.to_utc()),
        waiting_for: waiting,
    });
    mem.secret = Some(secret);
}

fn adopt(pair: &HighAvailabilityPair, mem: &mut Memory, secret: Secret) {
    let data = secret_text(&secret);
    seen(mem, secret, &data);
    let data = &data;
    if let Some(material) = &mem.tls {
        match material.replace(&client_identity(data)) {
            Ok(true) => info!(pair = %pair.name_any(), "TLS certificates reloaded"),
            Ok(false) => {}
            Err(e) => {
                warn!(pair = %pair.name_any(), error = %e, "the TLS Secret does not parse; keeping the certificates in use")
            }
        }
    }
}

/// Renews the certificates when they are due; otherwise how long until
/// they are (`None`: unknown, the Secret not read yet).
pub async fn renew_when_due(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    mem: &mut Memory,
) -> Result<Option<Duration>, ActError> {
    let Some(due) = mem.certificates.and_then(|c| c.renew_after) else { return Ok(None) };
    let now = chrono::Utc::now();
    if now < due {
        return Ok(Some((due - now).to_std().unwrap_or_default()));
    }
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut secret = act::ensure_tls(ctx, pair).await?;
    let data = secret_text(&secret);
    // Another writer (a second look after a conflict) may have renewed them.
    if tls::expiry(&data).renew_after.is_some_and(|t| now < t) {
        adopt(pair, mem, secret);
        return Ok(None);
    }
    // A CA key that does not read issues nothing: the CA is rotated
    // instead ([`rotate`]), which issues new certificates too.
    if !rotation::ca_key_reads(&data) {
        adopt(pair, mem, secret);
        return Ok(None);
    }
    let was = tls::expiry(&data).members;
    let renewed = match tls::renew_leaves(&data, &name, &ns, pair.spec.certificates.lifetime_seconds) {
        Ok(r) => r,
        Err(e) => {
            let note = format!("cannot renew the pair's certificates: {e}");
            act::warn(ctx, pair, "CertificateRenewalFailed", note).await;
            // Tried again in five minutes (and told again), not every round.
            let retry = Duration::from_secs(300);
            if let Some(c) = &mut mem.certificates {
                c.renew_after = Some(now + retry);
            }
            return Ok(Some(retry));
        }
    };
    secret.data = Some(renewed.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect());
    secret.meta_mut().managed_fields = None;
    match api.replace(&secret.name_any(), &PostParams::default(), &secret).await {
        Ok(written) => adopt(pair, mem, written),
        // Changed meanwhile: read again next round.
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Some(Duration::from_millis(200))),
        Err(e) => return Err(e.into()),
    }
    let until = tls::expiry(&renewed).members;
    let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("?".into(), |t| t.to_rfc3339());
    let note = format!(
        "renewed the members' and the operator's certificates (were valid until {}, now until {}); the agents load them within about a minute, without a restart",
        fmt(was),
        fmt(until)
    );
    info!(pair = %name, "{note}");
    act::tell(ctx, pair, EventType::Normal, "CertificatesRenewed", note).await;
    Ok(mem.certificates.and_then(|c| c.renew_after).map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default()))
}

/// The `rotateCertificates` request acknowledged and not yet begun: its id.
fn requested(pair: &HighAvailabilityPair, mem: &Memory) -> Option<String> {
    let req = pair.spec.operation.as_ref().filter(|r| r.rotate_certificates.is_some())?;
    let status = mem.status.as_ref().or(pair.status.as_ref())?;
    let running = status.operations.iter().any(|o| o.id == req.id && o.phase == OperationPhase::Running);
    (running && mem.rotation.last_cause.as_deref() != Some(req.id.as_str())).then(|| req.id.clone())
}

/// The members whose agents have not loaded the rotation's current step:
/// every member with a pod is waited for (a frozen agent holds the
/// rotation, which is safe: the overlap stays), except one removed by
/// `spec.standby` (a pod started later mounts the Secret as it is then).
pub fn waiting_for(
    data: &std::collections::BTreeMap<String, String>,
    obs: &Observed,
    removed: Option<Member>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Member> {
    let stage = rotation::stage(data);
    let bundle = data.get(tls::CA_CERT).map(|b| rotation::fingerprints(b)).unwrap_or_default();
    let graced = since.is_some_and(|t| now - t > UNREPORTED_GRACE);
    let loaded = |m: Member| {
        let Some(a) = obs.member(m).agent.last.as_ref() else { return false };
        if a.certificate_sha256.is_none() {
            // An agent of a version that does not report what it loaded.
            return graced;
        }
        match stage {
            rotation::Stage::Steady => true,
            rotation::Stage::Trusting => bundle.iter().all(|f| a.trusted_ca_sha256.contains(f)),
            rotation::Stage::Presenting => {
                let expected = data.get(&tls::member_cert_key(m).0).and_then(|c| rotation::fingerprint(c));
                expected.is_some() && a.certificate_sha256 == expected
            }
        }
    };
    Member::BOTH
        .into_iter()
        .filter(|m| Some(*m) != removed && obs.member(*m).pod.is_some())
        .filter(|m| !loaded(*m))
        .collect()
}

/// Takes the CA rotation's next step when it is due; how soon to look
/// again while one is under way.
pub async fn rotate(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    mem: &mut Memory,
    obs: &Observed,
) -> Result<Option<Duration>, ActError> {
    let Some(secret) = mem.secret.clone() else { return Ok(None) };
    let data = secret_text(&secret);
    let (ns, name) = (pair.namespace().unwrap_or_default(), pair.name_any());
    let lifetime = pair.spec.certificates.lifetime_seconds;
    let now = chrono::Utc::now();
    let expiry = tls::expiry(&data);
    let stage = rotation::stage(&data);
    let (next, cause, event) = if stage == rotation::Stage::Steady {
        let due = expiry.ca_renew_after.is_some_and(|t| t <= now) || !rotation::ca_key_reads(&data);
        let Some(cause) = requested(pair, mem).or_else(|| due.then(|| "automatic".to_string())) else {
            return Ok(None);
        };
        if expiry.ca.is_none_or(|t| t <= now) {
            let next = tls::generate_pair_material(&name, &ns, lifetime)?;
            let note = "the pair's CA had expired or did not read: a new CA and new certificates were made at once (nothing could trust the old ones any more); the agents load them within about a minute";
            (next, cause, Some((EventType::Warning, "CertificatesRegenerated", note.to_string())))
        } else {
            let note = format!(
                "rotating the pair's CA ({cause}): the new CA is trusted beside the old one first; the members' certificates from it follow once both agents trust it, then the old CA is dropped"
            );
            (
                rotation::begin(&data, &name, &ns, lifetime)?,
                cause,
                Some((EventType::Normal, "CertificateRotationStarted", note)),
            )
        }
    } else {
        let cause = mem.rotation.last_cause.clone().unwrap_or_else(|| "automatic".into());
        let since = mem.rotation.under_way.as_ref().and_then(|r| r.since);
        let removed = mem.status.as_ref().or(pair.status.as_ref()).and_then(|s| s.removed_member);
        let waiting = waiting_for(&data, obs, removed, since, now);
        // Certificates already expired trust nothing either way: no reason to wait.
        let expired = expiry.members.is_none_or(|t| t <= now);
        if let Some(r) = mem.rotation.under_way.as_mut() {
            r.waiting_for = waiting.clone();
        }
        if !waiting.is_empty() && !expired {
            return Ok(Some(Duration::from_secs(1)));
        }
        match stage {
            rotation::Stage::Trusting => (rotation::present(&data, &name, &ns, lifetime)?, cause, None),
            _ => {
                let note = format!(
                    "rotated the pair's CA ({cause}): every agent presents a certificate from the new CA, and the old CA is trusted no more"
                );
                (rotation::finish(&data), cause, Some((EventType::Normal, "CertificatesRotated", note)))
            }
        }
    };
    let mut secret = secret;
    secret.data = Some(next.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect());
    secret.meta_mut().managed_fields = None;
    let notes = secret.annotations_mut();
    notes.insert(ROTATION_CAUSE.into(), cause);
    notes.insert(ROTATION_SINCE.into(), now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    match api.replace(&secret.name_any(), &PostParams::default(), &secret).await {
        Ok(written) => {
            let stage = rotation::stage(&next);
            info!(pair = %name, stage = stage.words(), "CA rotation: step written");
            if let Some(r) = mem.rotation.under_way.as_mut() {
                r.waiting_for.clear();
            }
            adopt(pair, mem, written);
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Changed meanwhile (a renewal, a hand edit): read it again.
            reload(ctx, pair, mem).await?;
            return Ok(Some(Duration::from_millis(200)));
        }
        Err(e) => return Err(e.into()),
    }
    if let Some((type_, reason, note)) = event {
        act::tell(ctx, pair, type_, reason, note).await;
    }
    Ok(Some(Duration::from_secs(1)))
}
