//! Access prediction for tiervisor.
