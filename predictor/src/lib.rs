//! Access prediction for tiervisor: advisors behind `tiering::advisor::Advisor`
//! (baselines, the GRU) and the replay simulator that compares them.

pub mod baselines;
pub mod replay;

pub use replay::registry::{make_advisor, ReplayContext, UnknownAdvisor};

#[cfg(feature = "gru")]
pub mod gru;
