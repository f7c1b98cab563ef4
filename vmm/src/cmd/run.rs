//! `tiervisor run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Kernel image: PVH ELF or bzImage.
    #[arg(long)]
    pub kernel: std::path::PathBuf,
}
pub fn run(_args: RunArgs) -> i32 {
    super::usage_error("run: not built yet")
}
