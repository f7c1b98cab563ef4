//! Legacy devices for tiervisor.
