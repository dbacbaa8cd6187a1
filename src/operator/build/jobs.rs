//! The Jobs the operator starts for a pair: the resync Job (`hapair
//! resync`) and the user's split-brain repair Job, on one skeleton.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, KeyToPath, PodSpec, PodTemplateSpec, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::common::{
    BuildContext, TLS_DIR, TLS_FILE_MODE, env, field_env, labels, meta, restricted_security_context, tls_secret_name,
};
use crate::api::{HighAvailabilityPair, Member};
use crate::tls;

/// The label of a Job the operator runs for a pair: what it is for. It
/// names the Job (`<pair>-<label>`), is written on it as an annotation and
/// in the resync order, and is how a later round finds it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncLabel {
    /// A returning member's diverged files, once per epoch: `resync-<epoch>`.
    Returning { epoch: i64 },
    /// A resync request: `resync-<epoch>-<id>`.
    Request { epoch: i64, id: String },
    /// The full resync after a standby outage past its limit:
    /// `outage-<epoch>-<since>` (the condition's transition, Unix seconds).
    Outage { epoch: i64, since: i64 },
    /// A split brain's dry run (the difference): `splitbrain-<epoch>-<since>-diff`.
    SplitBrainDiff { epoch: i64, since: i64 },
    /// A split brain's repair: `splitbrain-<epoch>-<since>`.
    SplitBrain { epoch: i64, since: i64 },
    /// The former active's resync after a split brain resolved by keeping
    /// the other side: `splitbrain-<epoch>-handover`.
    SplitBrainHandover { epoch: i64 },
    /// The user's repair Job after the split-brain resync so labelled:
    /// `<label>-repair`.
    Repair(Box<ResyncLabel>),
}

impl ResyncLabel {
    /// The repair Job's label for the resync labelled `label`.
    pub fn repair_of(label: &str) -> String {
        format!("{label}-repair")
    }
}

impl std::fmt::Display for ResyncLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResyncLabel::Returning { epoch } => write!(f, "resync-{epoch}"),
            ResyncLabel::Request { epoch, id } => write!(f, "resync-{epoch}-{id}"),
            ResyncLabel::Outage { epoch, since } => write!(f, "outage-{epoch}-{since}"),
            ResyncLabel::SplitBrainDiff { epoch, since } => write!(f, "splitbrain-{epoch}-{since}-diff"),
            ResyncLabel::SplitBrain { epoch, since } => write!(f, "splitbrain-{epoch}-{since}"),
            ResyncLabel::SplitBrainHandover { epoch } => write!(f, "splitbrain-{epoch}-handover"),
            ResyncLabel::Repair(of) => write!(f, "{of}-repair"),
        }
    }
}

impl std::str::FromStr for ResyncLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a hapair Job label");
        let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
        if let Some(rest) = s.strip_prefix("resync-") {
            return Ok(match rest.split_once('-') {
                None => ResyncLabel::Returning { epoch: num(rest)? },
                Some((epoch, id)) if !id.is_empty() => ResyncLabel::Request { epoch: num(epoch)?, id: id.to_string() },
                Some(_) => return Err(bad()),
            });
        }
        if let Some(of) = s.strip_suffix("-repair") {
            return Ok(ResyncLabel::Repair(Box::new(of.parse()?)));
        }
        if let Some(rest) = s.strip_prefix("outage-") {
            let (epoch, since) = rest.split_once('-').ok_or_else(bad)?;
            return Ok(ResyncLabel::Outage { epoch: num(epoch)?, since: num(since)? });
        }
        let rest = s.strip_prefix("splitbrain-").ok_or_else(bad)?;
        let (epoch, rest) = rest.split_once('-').ok_or_else(bad)?;
        let epoch = num(epoch)?;
        Ok(match rest {
            "handover" => ResyncLabel::SplitBrainHandover { epoch },
            r => match r.strip_suffix("-diff") {
                Some(since) => ResyncLabel::SplitBrainDiff { epoch, since: num(since)? },
                None => ResyncLabel::SplitBrain { epoch, since: num(r)? },
            },
        })
    }
}

/// Label on a resync Job and its pod: which component this is.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Annotations on a resync Job: its order's label, target and dry-run flag.
pub const ANN_RESYNC_LABEL: &str = "hapair.dev/resync-label";
pub const ANN_RESYNC_TARGET: &str = "hapair.dev/resync-target";
pub const ANN_RESYNC_DRY_RUN: &str = "hapair.dev/resync-dry-run";
/// Container name of the resync Job.
pub const RESYNC_CONTAINER: &str = "resync";

/// Name of the resync Job for an order (`<pair>-resync-<epoch>` for the
/// automatic one; the order's label names it).
pub fn resync_job_name(pair: &str, label: &str) -> String {
    let name = format!("{pair}-{label}");
    // Job names become pod label values: at most 63 characters.
    if name.len() <= 63 {
        return name;
    }
    let digest: String = Sha256::digest(name.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{digest}", name[..54].trim_end_matches('-'))
}

/// The resync Job: `hapair resync` driving `target`'s agent at `address`
/// with the pair's client identity. Failed runs are retried by the Job
/// controller with its exponential back-off (`backoffLimit`); every run
/// plans afresh, so a retry finishes what a killed run began.
pub fn resync_job(
    pair: &HighAvailabilityPair,
    target: Member,
    address: std::net::SocketAddr,
    order: &crate::proto::ResyncOrder,
    ctx: &BuildContext,
) -> Job {
    let name = pair.name_any();
    let job_name = resync_job_name(&name, &order.label);
    let mut labels = labels(&name);
    labels.insert(LABEL_COMPONENT.into(), "resync".into());
    let word = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let env_vars = vec![
        env("HAPAIR_PAIR", name.clone()),
        field_env("HAPAIR_NAMESPACE", "metadata.namespace"),
        env("HAPAIR_TARGET", target.as_str()),
        env("HAPAIR_TARGET_ADDRESS", address.to_string()),
        env("HAPAIR_TLS_DIR", TLS_DIR),
        env("HAPAIR_RESYNC_LABEL", order.label.clone()),
        env("HAPAIR_ONLY_ON_TARGET", word(serde_json::to_value(order.only_on_target).unwrap_or_default())),
        env("HAPAIR_CONFLICT", word(serde_json::to_value(order.conflict).unwrap_or_default())),
        env("HAPAIR_CLOCKS_AGREE", order.clocks_agree.to_string()),
        env("HAPAIR_DRY_RUN", order.dry_run.to_string()),
        env("HAPAIR_FULL", order.full.to_string()),
    ];
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        containers: vec![Container {
            name: RESYNC_CONTAINER.into(),
            image: Some(ctx.agent_image.clone()),
            args: Some(vec!["resync".into()]),
            env: Some(env_vars),
            volume_mounts: Some(vec![VolumeMount {
                name: "hapair-tls".into(),
                mount_path: TLS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            }]),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            security_context: Some(restricted_security_context()),
            ..Default::default()
        }],
        volumes: Some(vec![Volume {
            name: "hapair-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls_secret_name(&name)),
                items: Some(vec![
                    KeyToPath { key: tls::CA_CERT.into(), path: "ca.crt".into(), ..Default::default() },
                    KeyToPath { key: tls::CLIENT_CERT.into(), path: "tls.crt".into(), ..Default::default() },
                    KeyToPath { key: tls::CLIENT_KEY.into(), path: "tls.key".into(), ..Default::default() },
                ]),
                default_mode: Some(TLS_FILE_MODE),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut m = meta(pair, job_name);
    m.labels = Some(labels.clone());
    m.annotations = Some(BTreeMap::from([
        (ANN_RESYNC_LABEL.to_string(), order.label.clone()),
        (ANN_RESYNC_TARGET.to_string(), target.to_string()),
        (ANN_RESYNC_DRY_RUN.to_string(), order.dry_run.to_string()),
    ]));
    run_to_completion(m, labels, pod)
}

/// A Job the operator owns: retried by the Job controller with its back-off
/// (`backoffLimit: 4`), given up after an hour.
fn run_to_completion(metadata: ObjectMeta, labels: BTreeMap<String, String>, pod: PodSpec) -> Job {
    Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(4),
            active_deadline_seconds: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The split-brain repair Job (`splitBrain.repairJob`): the user's
/// container, run once the file resync labelled `label` has succeeded, with
/// the kept member, the epoch and both members' agent addresses in its
/// environment. Its Job carries the label `<label>-repair`.
pub fn repair_job(
    pair: &HighAvailabilityPair,
    container: &Container,
    label: &str,
    kept: Member,
    epoch: i64,
    addresses: [Option<std::net::SocketAddr>; 2],
) -> Job {
    let name = pair.name_any();
    let repair_label = ResyncLabel::repair_of(label);
    let mut labels = labels(&name);
    labels.insert(LABEL_COMPONENT.into(), "repair".into());
    let mut c = container.clone();
    let env_vars = c.env.get_or_insert_with(Vec::new);
    env_vars.extend([
        env("HAPAIR_PAIR", name.clone()),
        env("HAPAIR_KEPT_MEMBER", kept.as_str()),
        env("HAPAIR_EPOCH", epoch.to_string()),
        env("HAPAIR_PRIMARY_ADDRESS", addresses[0].map(|a| a.to_string()).unwrap_or_default()),
        env("HAPAIR_SECONDARY_ADDRESS", addresses[1].map(|a| a.to_string()).unwrap_or_default()),
    ]);
    let mut m = meta(pair, resync_job_name(&name, &repair_label));
    m.labels = Some(labels.clone());
    m.annotations = Some(BTreeMap::from([
        (ANN_RESYNC_LABEL.to_string(), repair_label),
        (ANN_RESYNC_TARGET.to_string(), kept.to_string()),
        (ANN_RESYNC_DRY_RUN.to_string(), "false".into()),
    ]));
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        containers: vec![c],
        ..Default::default()
    };
    run_to_completion(m, labels, pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_label_reads_back_as_what_it_was_written_from() {
        let labels = [
            ResyncLabel::Returning { epoch: 3 },
            ResyncLabel::Request { epoch: 3, id: "nightly-check-2".into() },
            ResyncLabel::Outage { epoch: 4, since: 1_795_000_000 },
            ResyncLabel::SplitBrainDiff { epoch: 5, since: 1_795_000_001 },
            ResyncLabel::SplitBrain { epoch: 5, since: 1_795_000_001 },
            ResyncLabel::SplitBrainHandover { epoch: 6 },
            ResyncLabel::Repair(Box::new(ResyncLabel::SplitBrain { epoch: 5, since: 1_795_000_001 })),
            ResyncLabel::Repair(Box::new(ResyncLabel::SplitBrainHandover { epoch: 6 })),
        ];
        for l in labels {
            assert_eq!(l.to_string().parse::<ResyncLabel>(), Ok(l.clone()), "{l}");
        }
        assert_eq!(ResyncLabel::repair_of("splitbrain-6-handover"), "splitbrain-6-handover-repair");
        for bad in
            ["", "resync-", "resync-x", "resync-3-", "outage-3", "splitbrain-x-1", "other-1", "splitbrain-1-y-diff"]
        {
            assert!(bad.parse::<ResyncLabel>().is_err(), "{bad:?} must not parse");
        }
    }
}
