//! The test guest's logic, kept free of hardware so the host can unit-test it:
//! command line, page patterns, random streams, workloads and their verification.
//! `main.rs` adds the boot code, the devices and the CPUs.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod acpi;
pub mod cmdline;
pub mod engine;
pub mod latency;
pub mod line;
pub mod pattern;
pub mod rng;
pub mod startinfo;
pub mod workload;
pub mod zipf;
