//! The guest's command line: `workload=NAME mem=SIZE iters=N seed=S` (DESIGN.md).
//!
//! Every key is optional ([`Config::default`] says what a missing one means); an unknown
//! key, a bad value or a repeated key is an error. Errors display as the `reason=...`
//! tail of the result line, so they are single `key=value` tokens without spaces.

use thiserror::Error;

/// Bytes in one page: the unit every workload accesses and verifies.
pub const PAGE_SIZE: u64 = 4096;
/// Smallest working memory: the phases workload needs four regions of a few pages.
pub const MIN_MEM: u64 = 16 * PAGE_SIZE;

/// The access patterns the guest can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Sequential pass over all pages, wrapping around.
    Scan,
    /// Column-major passes with a fixed stride of [`crate::workload::STRIDE_PAGES`].
    Stride,
    /// Uniformly random pages.
    Random,
    /// Zipf(0.99)-skewed pages, the hot ones scattered by a permutation.
    Zipf,
    /// Pointer chasing along one random cycle through all pages.
    Chase,
    /// Four phases over four distinct regions, each with its own pattern.
    Phases,
    /// A hash-table key-value store with Zipf keys and page-sized values.
    Kv,
}

impl Workload {
    /// Every workload, in the order the docs list them.
    pub const ALL: [Workload; 7] = [
        Workload::Scan,
        Workload::Stride,
        Workload::Random,
        Workload::Zipf,
        Workload::Chase,
        Workload::Phases,
        Workload::Kv,
    ];

    /// The name used on the command line and in the result line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Scan => "scan",
            Workload::Stride => "stride",
            Workload::Random => "random",
            Workload::Zipf => "zipf",
            Workload::Chase => "chase",
            Workload::Phases => "phases",
            Workload::Kv => "kv",
        }
    }

    /// Looks a workload up by its command-line name.
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Access pattern.
    pub workload: Workload,
    /// Working memory in bytes (a multiple of [`PAGE_SIZE`]).
    pub mem: u64,
    /// Number of operations (page accesses, or gets/puts for kv).
    pub iters: u64,
    /// Seed of every random choice; the same seed gives the same checksum.
    pub seed: u64,
}

impl Default for Config {
    /// `workload=scan mem=64M iters=100000 seed=1`.
    fn default() -> Self {
        Config {
            workload: Workload::Scan,
            mem: 64 << 20,
            iters: 100_000,
            seed: 1,
        }
    }
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CmdlineError<'a> {
    /// A word that is not `key=value`.
    #[error("bad-cmdline word={0}")]
    NotKeyValue(&'a str),
    /// A key this guest does not know.
    #[error("unknown-key key={0}")]
    UnknownKey(&'a str),
    /// The same key twice.
    #[error("repeated-key key={0}")]
    RepeatedKey(&'a str),
    /// A value that does not parse for its key.
    #[error("bad-value key={key} value={value}")]
    BadValue {
        /// The key.
        key: &'a str,
        /// The refused value.
        value: &'a str,
    },
    /// `mem` below [`MIN_MEM`] or not a whole number of pages.
    #[error("bad-value key=mem value={0} need=multiple-of-4K-at-least-64K")]
    BadMem(&'a str),
}

/// Parses a size with an optional binary suffix: `4096`, `64K`, `512M`, `2G`
/// (also lower case and with a trailing `B`/`iB`, e.g. `64KiB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    let shift = match suffix {
        "" | "B" | "b" => 0,
        "K" | "k" | "KB" | "kB" | "KiB" | "kiB" => 10,
        "M" | "m" | "MB" | "MiB" => 20,
        "G" | "g" | "GB" | "GiB" => 30,
        "T" | "t" | "TB" | "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

/// Parses a plain decimal count (`iters`, `seed`); `0x` hex is accepted for seeds.
fn parse_count(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses the whole command line (words separated by ASCII whitespace).
pub fn parse(cmdline: &str) -> Result<Config, CmdlineError<'_>> {
    let mut config = Config::default();
    let mut seen = [false; 4];
    for word in cmdline.split_ascii_whitespace() {
        let (key, value) = word
            .split_once('=')
            .ok_or(CmdlineError::NotKeyValue(word))?;
        let bad = CmdlineError::BadValue { key, value };
        let slot = match key {
            "workload" => {
                config.workload = Workload::from_name(value).ok_or(bad)?;
                0
            }
            "mem" => {
                let mem = parse_size(value).ok_or(bad)?;
                if mem < MIN_MEM || mem % PAGE_SIZE != 0 {
                    return Err(CmdlineError::BadMem(value));
                }
                config.mem = mem;
                1
            }
            "iters" => {
                config.iters = parse_count(value).ok_or(bad)?;
                2
            }
            "seed" => {
                config.seed = parse_count(value).ok_or(bad)?;
                3
            }
            _ => return Err(CmdlineError::UnknownKey(key)),
        };
        if seen[slot] {
            return Err(CmdlineError::RepeatedKey(key));
        }
        seen[slot] = true;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("3GiB"), Some(3 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("-5M"), None);
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
        assert_eq!(parse_size("17179869184G"), None, "overflow is refused");
    }

    #[test]
    fn full_command_line_parses() {
        let config = parse("workload=zipf mem=64M iters=200000 seed=1").unwrap();
        assert_eq!(
            config,
            Config {
                workload: Workload::Zipf,
                mem: 64 << 20,
                iters: 200_000,
                seed: 1
            }
        );
    }

    #[test]
    fn missing_keys_take_defaults_and_order_does_not_matter() {
        assert_eq!(parse("").unwrap(), Config::default());
        let config = parse("  seed=0x10\tworkload=kv ").unwrap();
        assert_eq!(config.workload, Workload::Kv);
        assert_eq!(config.seed, 16);
        assert_eq!(config.mem, Config::default().mem);
        assert_eq!(config.iters, Config::default().iters);
    }

    #[test]
    fn every_workload_name_round_trips() {
        for workload in Workload::ALL {
            let line = format!("workload={}", workload.name());
            assert_eq!(parse(&line).unwrap().workload, workload);
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert_eq!(
            parse("workload=zipf foo=1"),
            Err(CmdlineError::UnknownKey("foo"))
        );
        assert_eq!(
            parse("workload=fast"),
            Err(CmdlineError::BadValue {
                key: "workload",
                value: "fast"
            })
        );
        assert_eq!(
            parse("console=ttyS0 x"),
            Err(CmdlineError::UnknownKey("console"))
        );
        assert_eq!(parse("quiet"), Err(CmdlineError::NotKeyValue("quiet")));
        assert_eq!(
            parse("iters=1e6").unwrap_err().to_string(),
            "bad-value key=iters value=1e6"
        );
        assert_eq!(
            parse("iters=-1").unwrap_err().to_string(),
            "bad-value key=iters value=-1"
        );
        assert_eq!(parse("mem=4K"), Err(CmdlineError::BadMem("4K")));
        assert_eq!(parse("mem=65537"), Err(CmdlineError::BadMem("65537")));
        assert_eq!(
            parse("seed=1 seed=2"),
            Err(CmdlineError::RepeatedKey("seed"))
        );
        assert_eq!(
            parse("mem=lots").unwrap_err().to_string(),
            "bad-value key=mem value=lots"
        );
    }
}
