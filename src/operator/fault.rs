//! Fault injection for the end-to-end tests. Compiled in only with the
//! `fault-injection` feature, which the test targets enable and release
//! builds (the image) never do: the production binary has no hook at all.

/// Called right after the Lease moved (the commit point of a failover),
/// before the Service selector follows. With `HAPAIR_FAULT_EXIT_AFTER_LEASE_CAS`
/// set, the operator dies here, as a crash at the worst moment would.
#[cfg(feature = "fault-injection")]
pub fn after_lease_moved() {
    if std::env::var_os("HAPAIR_FAULT_EXIT_AFTER_LEASE_CAS").is_some() {
        tracing::warn!("fault injection: exiting between the lease move and the selector move");
        std::process::exit(86);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_lease_moved() {}
