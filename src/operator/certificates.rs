//! The pair's certificates over time: the operator renews the members' and
//! its own certificates when they are two-thirds through their life — or at
//! once when they have expired or do not read, which is how a pair whose
//! certificates ran out while nobody renewed them recovers by itself. The
//! new ones are issued by the pair's CA as the Secret holds it, so agents
//! that load them at different moments (each when the kubelet brings the
//! changed Secret into its pod) keep trusting each other; agents and the
//! operator pick them up without a restart or a failover ([`crate::tls::Material`]).

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
use crate::api::HighAvailabilityPair;
use crate::tls;

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
    let data = secret_text(&act::ensure_tls(ctx, pair).await?);
    let material = tls::Material::new(&client_identity(&data))?;
    mem.certificates = Some(tls::expiry(&data));
    mem.tls = Some(material.clone());
    Ok(material.client_config()?)
}

/// Reads the pair's TLS Secret again: a renewed certificate or a new CA
/// bundle is used from the next call to an agent on (the poller's and
/// every other client built from the same material).
pub async fn reload(ctx: &Context, pair: &HighAvailabilityPair, mem: &mut Memory) -> Result<(), ActError> {
    let secret = act::ensure_tls(ctx, pair).await?;
    adopt(pair, mem, &secret_text(&secret));
    Ok(())
}

fn adopt(pair: &HighAvailabilityPair, mem: &mut Memory, data: &std::collections::BTreeMap<String, String>) {
    mem.certificates = Some(tls::expiry(data));
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
        adopt(pair, mem, &data);
        return Ok(None);
    }
    let was = tls::expiry(&data).members;
    let renewed = match tls::renew_leaves(&data, &name, &ns, pair.spec.certificates.lifetime_seconds) {
        Ok(r) => r,
        Err(e) => {
            // The CA key is missing or broken: nothing can be issued by it.
            let note = format!(
                "cannot renew the pair's certificates: {e}; delete the Secret {} to have a new CA made (the members restart with it)",
                secret.name_any()
            );
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
        Ok(_) => {}
        // Changed meanwhile: read again next round.
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Some(Duration::from_millis(200))),
        Err(e) => return Err(e.into()),
    }
    adopt(pair, mem, &renewed);
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
