//! The tiervisor VMM as a library: guest memory, boot, KVM set-up, vCPUs, devices
//! wiring and the event loop. The `tiervisor` binary (main.rs) is its CLI; the
//! tiering layer builds on [`memory`] and [`machine`].

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod event_loop;
pub mod host;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod pool;
pub mod stop;
pub mod tiered;
pub mod vcpu;
pub mod vm;
