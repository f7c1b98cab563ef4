//! `tiervisor train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Trace files to learn from.
    #[arg(long, num_args = 1..)]
    pub trace: Vec<std::path::PathBuf>,
}
pub fn run(_args: TrainArgs) -> i32 {
    super::usage_error("train: not built yet")
}
