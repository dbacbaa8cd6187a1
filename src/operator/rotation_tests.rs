//! The `rotateCertificates` request and the CA rotation's waiting rule,
//! decided without a cluster.

use chrono::Utc;

use super::decide;
use super::tests::{clock, enabled, op_status, registered, spec, with_op};
use crate::api::{CertificateRotation, Member, OperationPhase};
use crate::operator::certificates::waiting_for;
use crate::operator::observe::{Observed, RotationObs};
use crate::tls::{self, rotation};

const ROTATE: &str = "{id: rot-1, rotateCertificates: {}}";

fn under_way(cause: &str, stage: &str, waiting: Vec<Member>) -> RotationObs {
    RotationObs {
        last_cause: Some(cause.into()),
        under_way: Some(CertificateRotation {
            stage: stage.into(),
            cause: Some(cause.into()),
            since: Some(Utc::now()),
            waiting_for: waiting,
        }),
    }
}

#[test]
fn a_rotation_request_runs_until_the_rotation_it_began_is_over_and_says_what_it_waits_for() {
    let s = with_op("", ROTATE);
    let first = decide(&s, Some(&registered()), &enabled(), &clock());
    let op = op_status(&first);
    assert_eq!(
        (op.phase, op.message.as_deref()),
        (OperationPhase::Running, Some("rotating the pair's CA and certificates"))
    );
    assert_eq!(first.lease, None, "a rotation moves no role");

    let mut obs = enabled();
    obs.rotation = under_way("rot-1", "Trusting", vec![Member::Secondary]);
    let trusting = decide(&s, Some(&first.status), &obs, &clock());
    let message = op_status(&trusting).message.clone().unwrap();
    assert!(message.starts_with("the new CA is trusted beside the old; waiting for secondary"), "{message}");
    assert_eq!(op_status(&trusting).phase, OperationPhase::Running);

    obs.rotation = RotationObs { last_cause: Some("rot-1".into()), under_way: None };
    let done = decide(&s, Some(&trusting.status), &obs, &clock());
    assert_eq!((op_status(&done).phase, op_status(&done).reason.as_deref()), (OperationPhase::Succeeded, Some("Done")));
    // Over is over: the same id does not rotate again.
    let again = decide(&s, Some(&done.status), &obs, &clock());
    assert!(again.status.operations[0].phase.is_terminal());
}

#[test]
fn a_rotation_request_waits_for_one_under_way_and_is_taken_with_one_member_and_paused() {
    let s = with_op("", ROTATE);
    let first = decide(&s, Some(&registered()), &enabled(), &clock());
    let mut obs = enabled();
    obs.rotation = under_way("automatic", "Presenting", vec![]);
    let plan = decide(&s, Some(&first.status), &obs, &clock());
    assert_eq!(op_status(&plan).message.as_deref(), Some("waiting for the rotation under way (automatic) to finish"));
    // The automatic one finishing is not this request's.
    obs.rotation = RotationObs { last_cause: Some("automatic".into()), under_way: None };
    let plan = decide(&s, Some(&plan.status), &obs, &clock());
    assert_eq!(op_status(&plan).phase, OperationPhase::Running);

    for extra in ["standby: Removed", "paused: true"] {
        let plan = decide(&spec(&format!("{extra}\noperation: {ROTATE}")), Some(&registered()), &enabled(), &clock());
        assert_eq!(op_status(&plan).phase, OperationPhase::Running, "{extra}");
    }
}

fn reporting(obs: &mut Observed, m: Member, identity: &std::collections::BTreeMap<String, String>) {
    let a = obs.member_mut(m).agent.last.as_mut().unwrap();
    a.certificate_sha256 = rotation::fingerprint(&identity[&tls::member_cert_key(m).0]);
    a.trusted_ca_sha256 = rotation::fingerprints(&identity[tls::CA_CERT]);
}

#[test]
fn each_step_waits_for_every_member_with_a_pod_to_report_the_one_before() {
    let steady = tls::generate_pair_material("db", "prod", 600).unwrap();
    let trusting = rotation::begin(&steady, "db", "prod", 600).unwrap();
    let presenting = rotation::present(&trusting, "db", "prod", 600).unwrap();
    let now = Utc::now();
    let mut obs = enabled();
    for m in Member::BOTH {
        reporting(&mut obs, m, &steady);
    }
    assert_eq!(waiting_for(&trusting, &obs, None, Some(now), now), Member::BOTH.to_vec());
    reporting(&mut obs, Member::Primary, &trusting);
    assert_eq!(waiting_for(&trusting, &obs, None, Some(now), now), [Member::Secondary]);
    // A member removed by spec, or without a pod, mounts the Secret as it is
    // when it starts: not waited for.
    assert_eq!(waiting_for(&trusting, &obs, Some(Member::Secondary), Some(now), now), []);
    let mut podless = obs.clone();
    podless.secondary.pod = None;
    assert_eq!(waiting_for(&trusting, &podless, None, Some(now), now), []);
    // A member that does not answer (frozen, its node gone) is waited for.
    let mut silent = obs.clone();
    silent.secondary.agent.last = None;
    assert_eq!(waiting_for(&trusting, &silent, None, Some(now), now), [Member::Secondary]);

    reporting(&mut obs, Member::Secondary, &trusting);
    assert_eq!(waiting_for(&trusting, &obs, None, Some(now), now), []);
    // Trusting both CAs is not presenting the new CA's certificate.
    assert_eq!(waiting_for(&presenting, &obs, None, Some(now), now), Member::BOTH.to_vec());
    reporting(&mut obs, Member::Secondary, &presenting);
    reporting(&mut obs, Member::Primary, &presenting);
    assert_eq!(waiting_for(&presenting, &obs, None, Some(now), now), []);

    // An agent too old to report what it loaded: waited for a grace period.
    let mut old = obs.clone();
    old.primary.agent.last.as_mut().unwrap().certificate_sha256 = None;
    assert_eq!(waiting_for(&presenting, &old, None, Some(now), now), [Member::Primary]);
    let later = now + chrono::TimeDelta::seconds(181);
    assert_eq!(waiting_for(&presenting, &old, None, Some(now), later), []);
}
