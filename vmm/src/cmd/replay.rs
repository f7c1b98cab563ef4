//! `tiervisor replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Trace file to replay.
    #[arg(long)]
    pub trace: std::path::PathBuf,
}
pub fn run(_args: ReplayArgs) -> i32 {
    super::usage_error("replay: not built yet")
}
