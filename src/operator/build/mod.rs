//! Build: pure construction of every object the operator owns for a pair.
//! Nothing here talks to the API server or reads an observation; `act`
//! writes what these return. Each builder imports only `common`.

pub mod common;
pub mod jobs;
pub mod netpol;
pub mod objects;
pub mod placement;
pub mod routing;

pub use common::*;
pub use jobs::{
    ANN_RESYNC_DRY_RUN, ANN_RESYNC_LABEL, ANN_RESYNC_TARGET, LABEL_COMPONENT, RESYNC_CONTAINER, ResyncLabel,
    repair_job, resync_job, resync_job_name,
};
pub use objects::*;
pub use routing::*;
