//! One module per subcommand; each returns the process exit status.
//! Exit status 2 means bad input (printed as one `tiervisor: ...` line).

pub mod pool;
pub mod replay;
pub mod run;
pub mod trace;
pub mod train;
pub mod train_prior;

/// Exit status for bad input or a host that cannot run the request.
pub const EXIT_USAGE: i32 = 2;

/// Print one error line and return [`EXIT_USAGE`].
pub fn usage_error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("tiervisor: {msg}");
    EXIT_USAGE
}

/// Why a file could not be written at `path` once a long command ends (a directory
/// named as the file, no such directory), or `None`. Commands check their output paths
/// with it before the work, so a run is not thrown away for a typo. It creates nothing.
pub fn unwritable_output(path: &std::path::Path) -> Option<String> {
    if path.is_dir() {
        return Some("it is a directory".into());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.exists() {
        Some(format!("there is no directory {}", dir.display()))
    } else if !dir.is_dir() {
        Some(format!("{} is not a directory", dir.display()))
    } else {
        None
    }
}

/// Write a command's result to stdout. A reader that went away (`tiervisor replay
/// ... | head`) is not an error: the rest of the output is not wanted.
pub fn print_stdout(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}
