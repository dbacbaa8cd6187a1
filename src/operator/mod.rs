//! `hapair operator`: watches pairs and keeps exactly one member active.

pub mod build;
pub mod decide;
pub mod observe;
pub mod status;
