//! hapair: a Kubernetes operator that runs an application as an
//! active/standby pair and keeps exactly one member serving.
//!
//! - [`api`]: the `HighAvailabilityPair` resource and its generated CRD.
//! - [`cli`]: the `kubectl hapair` plugin's command line.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod proto;
pub mod resync;
pub mod sync;
pub mod telemetry;
pub mod tls;
