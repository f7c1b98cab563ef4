//! Tiered guest memory for tiervisor.
//!
//! Mechanism only: how pages are observed, stored and moved. Which pages to move
//! is asked of an [`advisor::Advisor`], implemented by baselines and the GRU in the
//! `predictor` crate, so this crate carries no ML dependency.

pub mod access;
pub mod admin;
pub mod advisor;
pub mod backend;
pub mod config;
mod engine;
pub mod layout;
pub mod metrics;
pub mod pagekind;
pub mod policy;
pub mod pool;
pub mod runtime;
#[cfg(test)]
mod runtime_tests;
pub mod share;
mod stores;
pub mod trace;
pub mod uffd;
