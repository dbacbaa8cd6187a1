//! The pair's Services and where they route. Each Service has no selector;
//! the operator writes its one EndpointSlice itself (see
//! [`build::endpoint_slice`] for why) and removes every other route to it:
//! a selector someone gives the Service, the slices and the Endpoints object
//! kube-controller-manager makes for one, a slice made by hand.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tracing::info;

use super::build;
use super::context::Context;
use super::observe::{Observed, ServiceShape, SliceShape};
use super::writes::{apply_params, not_found};
use crate::api::{HighAvailabilityPair, LABEL_SERVICE_NAME, LABEL_SLICE_MANAGED_BY, Member, SLICE_MANAGER};

/// Writes the EndpointSlice behind the pair's Service `service` when the
/// stored one does not route to `member`'s pod as built (or is missing).
/// Returns whether it wrote.
pub async fn write_slice(
    slices: &Api<EndpointSlice>,
    pair: &HighAvailabilityPair,
    service: &str,
    member: Option<Member>,
    obs: &Observed,
    have: Option<&SliceShape>,
) -> Result<bool, kube::Error> {
    let pod = member.and_then(|m| obs.member(m).pod.as_ref());
    let want = build::endpoint_slice(pair, service, member, pod, have.map(|h| h.address_type.as_str()));
    if have.is_some_and(|h| h.matches(&want)) {
        return Ok(false);
    }
    let name = build::slice_name(service);
    if have.is_some_and(|h| h.address_type != want.address_type) {
        // The address type cannot change in place (the pod came back with
        // the other IP family): replace the slice.
        slices.delete(&name, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
    }
    slices.patch(&name, &apply_params(), &Patch::Apply(&want)).await?;
    Ok(true)
}

/// Writes one of the pair's Services when its routing shape differs from
/// `want`. A selector someone added is removed, and what
/// kube-controller-manager made for it deleted (see
/// [`remove_foreign_routes`]): with a selector, it routes the Service to
/// whatever pods it matches beside the operator's slice. Returns whether it
/// wrote.
pub async fn write_service(
    client: &kube::Client,
    ns: &str,
    services: &Api<Service>,
    name: &str,
    want: &Service,
    have: Option<&ServiceShape>,
) -> Result<bool, kube::Error> {
    if have.is_some_and(|h| h.matches(want)) {
        return Ok(false);
    }
    let selector = have.is_some_and(|h| !h.selector.is_empty());
    if selector {
        // Server-side apply removes only fields this manager owned; a
        // selector written by someone else (a hand edit, the operator's
        // older releases under another manager) goes by a plain patch.
        let patch = json!({"spec": {"selector": null}});
        services.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    services.patch(name, &apply_params(), &Patch::Apply(want)).await?;
    if selector {
        remove_foreign_routes(client, ns, name, Endpoints::Delete).await?;
    }
    Ok(true)
}

/// Removes every other route to the pair's Service `service` than the
/// operator's slice: the slices someone else made for it (what
/// kube-controller-manager made while it had a selector, what its mirroring
/// controller copies from an Endpoints object, a hand-made one), and the
/// legacy Endpoints object the endpoints controller left behind, which the
/// mirroring controller would otherwise turn into a slice again: kube-proxy
/// routes by every slice that names the Service.
///
/// `Endpoints::Delete` when the Service just lost a selector: the endpoints
/// controller made an Endpoints object for it and does not remove it.
/// `Endpoints::IfMirrored` on the periodic sweep: an Endpoints object routes
/// only through the slice mirrored from it, so it is deleted only when a
/// foreign slice is found — a quiet pair's sweep is one list, not a blind
/// delete as well.
pub async fn remove_foreign_routes(
    client: &kube::Client,
    ns: &str,
    service: &str,
    legacy: Endpoints,
) -> Result<(), kube::Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), ns);
    if legacy == Endpoints::Delete {
        endpoints.delete(service, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
    }
    let labels = format!("{LABEL_SERVICE_NAME}={service},{LABEL_SLICE_MANAGED_BY}!={SLICE_MANAGER}");
    let found = slices.list_metadata(&ListParams::default().labels(&labels)).await?;
    if legacy == Endpoints::IfMirrored && !found.items.is_empty() {
        // First, or the mirroring controller makes the slice again.
        endpoints.delete(service, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
    }
    for s in found.items {
        let name = s.metadata.name.unwrap_or_default();
        info!(%service, slice = %name, "removing an EndpointSlice the operator did not make");
        slices.delete(&name, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
    }
    Ok(())
}

/// What [`remove_foreign_routes`] does with the Service's Endpoints object.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Endpoints {
    /// Delete it whatever the slices say.
    Delete,
    /// Delete it only if a slice the operator did not make names the Service.
    IfMirrored,
}

/// [`remove_foreign_routes`] for the pair's Services.
pub async fn sweep_pair_slices(ctx: &Context, pair: &HighAvailabilityPair) -> Result<(), kube::Error> {
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    remove_foreign_routes(&ctx.client, &ns, &name, Endpoints::IfMirrored).await?;
    if pair.spec.service.standby {
        // Only while that name is the pair's: otherwise it may be someone else's Service.
        remove_foreign_routes(&ctx.client, &ns, &build::standby_service_name(&name), Endpoints::IfMirrored).await?;
    }
    Ok(())
}
