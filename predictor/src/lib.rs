//! Access prediction for tiervisor: advisors behind `tiering::advisor::Advisor`
//! (baselines, the GRU) and the replay simulator that compares them.

pub mod baselines;
#[cfg(feature = "gru")]
pub mod changepoints;
pub mod replay;

pub use replay::registry::{
    make_advisor, make_live_advisor, LiveAdvisor, ReplayContext, UnknownAdvisor,
};

#[cfg(feature = "gru")]
pub mod gru;
#[cfg(feature = "gru")]
pub mod live;
