//! One module per subcommand; each returns the process exit status.
//! Exit status 2 means bad input (printed as one `tiervisor: ...` line).

pub mod replay;
pub mod run;
pub mod trace;
pub mod train;

/// Exit status for bad input or a host that cannot run the request.
pub const EXIT_USAGE: i32 = 2;

/// Print one error line and return [`EXIT_USAGE`].
pub fn usage_error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("tiervisor: {msg}");
    EXIT_USAGE
}
