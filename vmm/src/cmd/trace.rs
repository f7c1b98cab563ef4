//! `tiervisor trace ...`.
#[derive(clap::Subcommand)]
pub enum TraceCommand {
    /// Summarise a trace file.
    Info { file: std::path::PathBuf },
}
pub fn run(_c: TraceCommand) -> i32 {
    super::usage_error("trace: not built yet")
}
