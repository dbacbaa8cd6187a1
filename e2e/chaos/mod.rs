//! The chaos suite (`make chaos`): named fault cases injected at random
//! phases of the renewal cycle into pairs on the testbed's real nodes, with
//! the history checker and the safety checker on throughout.

pub mod cases;
pub mod clock;
pub mod crash;
pub mod run;
pub mod teardown;
pub mod volume;
