//! Crash points for the end-to-end tests: the named steps of the operator's
//! work at which a test can make it die, as a crash at that moment would.
//! The hooks are compiled in only with the `fault-injection` feature, which
//! the test targets enable and release builds (the image) never do: the
//! production binary has no hook at all. The names are public in every
//! build, so a test can walk through all of them.
//!
//! Two ways to arm a step:
//! - `HAPAIR_FAULT_EXIT_AT=step[,step…]`: die every time one is reached
//!   (a test that plays the Deployment and restarts the process itself);
//! - `HAPAIR_FAULT_CRASH_FILE=path`: when that file exists and names the
//!   step, the first replica to reach it removes the file and dies — one
//!   crash per arming, whichever replica leads by then. The chaos suite
//!   arms a step per round this way without restarting anything.
//!
//! With `HAPAIR_FAULT_TRACE_FILE=path`, every step reached is appended to
//! that file, one name a line: a test that armed a step no replica reached
//! can tell a procedure that took another path (a handover whose standby
//! held the final files already never asks it to pull) from a hook that
//! does not work.

/// The steps, in the order a reconcile that carries out a procedure takes
/// them (`act::apply`). Each is reached only by a reconcile that does a step
/// of some procedure: asks an agent to drain or sync, starts a Job, writes the
/// Lease, or publishes an Event — not by a quiet status refresh.
pub const STEPS: &[&str] = &[
    // The active was asked to drain (a switchover's or failback's first step).
    "drain-asked",
    // The standby was asked to pull now (the handover's catch-up).
    "sync-asked",
    // A resync or split-brain repair Job was created.
    "job-started",
    // The Lease was created (a new pair, or one whose Lease was deleted).
    "lease-created",
    // The Lease was moved to the other member: a failover's commit point.
    "lease-moved",
    // A hand-edited Lease was written again.
    "lease-restored",
    // The VIP's EndpointSlice (where it routes) or its Service's shape was written.
    "vip-written",
    // The standby Service or its EndpointSlice was written.
    "standby-service-written",
    // A member pod's role label was written.
    "role-labelled",
    // The pair's status (history, operations, conditions) was written.
    "status-written",
    // The reconcile's Events were published: its last step.
    "events-published",
];

#[cfg(feature = "fault-injection")]
pub fn step(name: &'static str) {
    debug_assert!(STEPS.contains(&name), "{name} is not a named step");
    let always = std::env::var("HAPAIR_FAULT_EXIT_AT").is_ok_and(|v| v.split(',').any(|s| s.trim() == name));
    let armed = || {
        let path = std::env::var_os("HAPAIR_FAULT_CRASH_FILE")?;
        let wanted = std::fs::read_to_string(&path).ok()?;
        // Removing the file is what claims the crash: of two replicas (or
        // two pairs' reconciles) reaching it at once, one dies.
        (wanted.trim() == name && std::fs::remove_file(&path).is_ok()).then_some(())
    };
    if let Some(path) = std::env::var_os("HAPAIR_FAULT_TRACE_FILE") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
        if let Err(e) = file.and_then(|mut f| f.write_all(format!("{name}\n").as_bytes())) {
            tracing::warn!(error = %e, "fault injection: cannot trace the step");
        }
    }
    if always || armed().is_some() {
        tracing::warn!(step = name, "fault injection: the operator dies at this step");
        std::process::exit(86);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn step(_name: &'static str) {}
