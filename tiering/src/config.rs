//! The tier file: which tiers a VM's memory may live in, how big each is and what backs it.
//!
//! ```toml
//! [tier1]
//! capacity = "64M"
//! backend = "ram"
//!
//! [tier2]
//! capacity = "16M"
//! file = "${WORKDIR}/tier2.img"   # or device = "/dev/nvme0n1p3"
//! profile = "nvme"                # nvme | ssd | hdd; or latency_us / bandwidth; or nothing
//!
//! [tier5]
//! capacity = "1G"
//! nbd = "unix:${WORKDIR}/nbd.sock" # or "tcp:127.0.0.1:10809"
//! export = "tier5"
//! ```
//!
//! A tier file may first say which storage tiers are faster than which, fastest
//! first, when the numbering does not (a local network store that answers faster
//! than a disk): `order = [2, 3, 5, 4]`. Tiers it leaves out follow in their numbering.
//! Where an evicted page goes (its probability's band) and where a full tier spills
//! follow this order.
//!
//! Paths: `${WORKDIR}` expands to the work directory given at run time (the
//! `TIERVISOR_WORKDIR` environment variable, else the current directory), and a relative
//! path is taken relative to that directory, so one file serves every run.
//!
//! Every error names the line and the field (`tiers.toml:7: tier2.capacity: ...`).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

use crate::policy::StorageOrder;

/// Number of tiers: 0 hot set, 1 RAM, 2-4 files or block devices, 5 NBD.
pub const TIER_COUNT: usize = 6;

/// Environment variable naming the directory `${WORKDIR}` and relative paths refer to.
pub const WORKDIR_ENV: &str = "TIERVISOR_WORKDIR";

/// Latency and bandwidth a tier emulates on top of the real device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceProfile {
    Nvme,
    Ssd,
    Hdd,
    /// Measured or made-up figures: added latency per request, bytes per second.
    Custom {
        latency_us: u64,
        bandwidth_bytes_per_s: u64,
    },
}

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

/// What holds a tier's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierBackendSpec {
    /// Host RAM (tiers 0 and 1).
    Ram,
    /// A regular file, created and sized at start.
    File {
        path: PathBuf,
        profile: Option<DeviceProfile>,
    },
    /// An existing block device.
    Device {
        path: PathBuf,
        profile: Option<DeviceProfile>,
    },
    /// An export of an NBD server.
    Nbd { address: NbdAddress, export: String },
}

/// One tier as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSpec {
    pub index: usize,
    pub capacity_bytes: u64,
    pub backend: TierBackendSpec,
}

/// A parsed tier file: `tiers[i]` is tier i if the file names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TierConfig {
    pub tiers: [Option<TierSpec>; TIER_COUNT],
    /// The storage tiers from fastest to slowest (`order`; by default their numbering).
    pub order: StorageOrder,
}

/// Why a tier file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TierConfigError {
    #[error("cannot read tier file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    #[error("{file}: no tier is described: name at least [tier1] with backend = \"ram\"")]
    Empty { file: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    order: Option<Spanned<Vec<i64>>>,
    tier0: Option<Spanned<RawTier>>,
    tier1: Option<Spanned<RawTier>>,
    tier2: Option<Spanned<RawTier>>,
    tier3: Option<Spanned<RawTier>>,
    tier4: Option<Spanned<RawTier>>,
    tier5: Option<Spanned<RawTier>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    capacity: Option<Spanned<String>>,
    backend: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    latency_us: Option<Spanned<u64>>,
    bandwidth: Option<Spanned<String>>,
    nbd: Option<Spanned<String>>,
    export: Option<Spanned<String>>,
}

/// Parse a size such as `4096`, `64K`, `16M`, `2G`, `1T`, `16MiB` or `16MB` (binary units).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// Where a span starts: 1-based line number.
pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// For a parse error without a field we know: guess `table.key` from the text at the line.
pub(crate) fn field_at(source: &str, line: usize) -> String {
    let mut table = String::new();
    for (i, text) in source.lines().enumerate() {
        let text = text.trim();
        if text.starts_with('[') {
            table = text
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
        }
        if i + 1 == line {
            let key = text
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(|c| c == '[' || c == ']');
            return match (table.is_empty(), text.starts_with('[')) {
                (_, true) => key.to_string(),
                (true, false) => key.to_string(),
                (false, false) => format!("{table}.{key}"),
            };
        }
    }
    String::from("(end of file)")
}

struct Ctx<'a> {
    file: String,
    source: &'a str,
    workdir: PathBuf,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        field: String,
        message: String,
    ) -> Result<T, TierConfigError> {
        Err(TierConfigError::Invalid {
            file: self.file.clone(),
            line: line_of(self.source, span.start),
            field,
            message,
        })
    }

    fn path(&self, text: &str) -> PathBuf {
        let dir = self.workdir.to_string_lossy();
        let expanded = text.replace("${WORKDIR}", &dir);
        let p = PathBuf::from(expanded);
        if p.is_absolute() {
            p
        } else {
            self.workdir.join(p)
        }
    }
}

impl TierConfig {
    /// Read and check a tier file; `${WORKDIR}` comes from [`WORKDIR_ENV`] or the current dir.
    pub fn load(path: &Path) -> Result<Self, TierConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| TierConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        // Absolute, so `${WORKDIR}/x` and a relative `x` name the same file.
        let workdir = std::env::var_os(WORKDIR_ENV)
            .map(|d| cwd.join(d))
            .unwrap_or(cwd);
        Self::parse(&path.display().to_string(), &source, &workdir)
    }

    /// Parse tier file text; `file` names it in errors, `workdir` resolves paths.
    pub fn parse(file: &str, source: &str, workdir: &Path) -> Result<Self, TierConfigError> {
        let ctx = Ctx {
            file: file.to_string(),
            source,
            workdir: workdir.to_path_buf(),
        };
        let raw: RawFile = match toml::from_str(source) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let line = line_of(source, span.start);
                let mut message = e.message().replace('\n', " ");
                if message.starts_with("unknown field `order`") {
                    // TOML puts a key after a table header inside that table.
                    message =
                        "`order` goes at the top of the file, before the first [tierN]".into();
                }
                return ctx.err(span, field_at(source, line), message);
            }
        };
        let mut config = TierConfig::default();
        if let Some(order) = &raw.order {
            let tiers: Option<Vec<u8>> = order
                .get_ref()
                .iter()
                .map(|&t| u8::try_from(t).ok())
                .collect();
            config.order = match tiers.and_then(|t| StorageOrder::starting_with(&t)) {
                Some(o) => o,
                None => {
                    return ctx.err(
                        order.span(),
                        "order".into(),
                        format!(
                            "list storage tiers (2-5), fastest first, each at most once: got {:?}",
                            order.get_ref()
                        ),
                    )
                }
            };
        }
        let raws = [
            raw.tier0, raw.tier1, raw.tier2, raw.tier3, raw.tier4, raw.tier5,
        ];
        for (index, entry) in raws.into_iter().enumerate() {
            if let Some(entry) = entry {
                config.tiers[index] = Some(check_tier(&ctx, index, entry)?);
            }
        }
        if config.tiers.iter().all(Option::is_none) {
            return Err(TierConfigError::Empty {
                file: file.to_string(),
            });
        }
        Ok(config)
    }

    /// Capacity of a tier in pages of `page_size` (0 when the file does not name it).
    pub fn capacity_pages(&self, index: usize, page_size: u64) -> u64 {
        self.tiers[index]
            .as_ref()
            .map_or(0, |t| t.capacity_bytes / page_size)
    }
}

fn check_profile(
    ctx: &Ctx,
    name: &str,
    raw: &RawTier,
) -> Result<Option<DeviceProfile>, TierConfigError> {
    if let Some(p) = &raw.profile {
        if raw.latency_us.is_some() || raw.bandwidth.is_some() {
            return ctx.err(
                p.span(),
                format!("{name}.profile"),
                "give either a named profile or latency_us/bandwidth, not both".into(),
            );
        }
        return match p.get_ref().as_str() {
            "nvme" => Ok(Some(DeviceProfile::Nvme)),
            "ssd" => Ok(Some(DeviceProfile::Ssd)),
            "hdd" => Ok(Some(DeviceProfile::Hdd)),
            other => ctx.err(
                p.span(),
                format!("{name}.profile"),
                format!("unknown profile \"{other}\": use nvme, ssd or hdd, or latency_us and bandwidth"),
            ),
        };
    }
    let latency_us = raw.latency_us.as_ref().map(|l| *l.get_ref());
    let bandwidth = match &raw.bandwidth {
        Some(b) => match parse_size(b.get_ref()) {
            Some(0) | None => {
                return ctx.err(
                    b.span(),
                    format!("{name}.bandwidth"),
                    format!(
                        "\"{}\" is not a positive size per second such as \"500M\"",
                        b.get_ref()
                    ),
                )
            }
            Some(v) => Some(v),
        },
        None => None,
    };
    Ok(match (latency_us, bandwidth) {
        (None, None) => None,
        (l, b) => Some(DeviceProfile::Custom {
            latency_us: l.unwrap_or(0),
            bandwidth_bytes_per_s: b.unwrap_or(u64::MAX),
        }),
    })
}

fn check_tier(
    ctx: &Ctx,
    index: usize,
    entry: Spanned<RawTier>,
) -> Result<TierSpec, TierConfigError> {
    let name = format!("tier{index}");
    let table_span = entry.span();
    let raw = entry.into_inner();
    let Some(capacity) = &raw.capacity else {
        return ctx.err(
            table_span,
            format!("{name}.capacity"),
            "missing: give a size such as \"64M\"".into(),
        );
    };
    let capacity_bytes = match parse_size(capacity.get_ref()) {
        Some(c) if c >= crate::access::PAGE_SIZE => c,
        _ => {
            return ctx.err(
                capacity.span(),
                format!("{name}.capacity"),
                format!(
                    "\"{}\" is not a size of at least 4K (e.g. \"64M\", \"2G\")",
                    capacity.get_ref()
                ),
            )
        }
    };
    // Which backend keys are present decides the kind; exactly one is allowed.
    let kinds: Vec<(&str, std::ops::Range<usize>)> = [
        ("backend", raw.backend.as_ref().map(|s| s.span())),
        ("file", raw.file.as_ref().map(|s| s.span())),
        ("device", raw.device.as_ref().map(|s| s.span())),
        ("nbd", raw.nbd.as_ref().map(|s| s.span())),
    ]
    .into_iter()
    .filter_map(|(k, s)| s.map(|s| (k, s)))
    .collect();
    if kinds.len() > 1 {
        let (k, s) = kinds[1].clone();
        return ctx.err(
            s,
            format!("{name}.{k}"),
            format!(
                "give one of backend, file, device or nbd, not {} and {k}",
                kinds[0].0
            ),
        );
    }
    let backend = match kinds.first().map(|(k, _)| *k) {
        None => {
            return ctx.err(
                table_span,
                format!("{name}.backend"),
                "missing: give backend = \"ram\", file, device or nbd".into(),
            )
        }
        Some("backend") => {
            let b = raw.backend.as_ref().expect("present");
            if b.get_ref() != "ram" {
                return ctx.err(b.span(), format!("{name}.backend"), format!("unknown backend \"{}\": only \"ram\" (use file/device/nbd keys for the others)", b.get_ref()));
            }
            TierBackendSpec::Ram
        }
        Some("file") => TierBackendSpec::File {
            path: ctx.path(raw.file.as_ref().expect("present").get_ref()),
            profile: check_profile(ctx, &name, &raw)?,
        },
        Some("device") => TierBackendSpec::Device {
            path: ctx.path(raw.device.as_ref().expect("present").get_ref()),
            profile: check_profile(ctx, &name, &raw)?,
        },
        Some(_) => {
            let n = raw.nbd.as_ref().expect("present");
            let text = n
                .get_ref()
                .replace("${WORKDIR}", &ctx.workdir.to_string_lossy());
            let address = if let Some(p) = text.strip_prefix("unix:") {
                NbdAddress::Unix(ctx.path(p))
            } else if let Some(hp) = text.strip_prefix("tcp:") {
                if !hp
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    return ctx.err(
                        n.span(),
                        format!("{name}.nbd"),
                        format!("\"{text}\" is not tcp:HOST:PORT"),
                    );
                }
                NbdAddress::Tcp(hp.to_string())
            } else {
                return ctx.err(
                    n.span(),
                    format!("{name}.nbd"),
                    format!("\"{text}\" must start with unix: or tcp:"),
                );
            };
            let export = raw
                .export
                .as_ref()
                .map(|e| e.get_ref().clone())
                .unwrap_or_default();
            TierBackendSpec::Nbd { address, export }
        }
    };
    // Which tiers may use which backend.
    let (allowed, what) = match index {
        0 | 1 => (matches!(backend, TierBackendSpec::Ram), "backend = \"ram\""),
        2..=4 => (
            matches!(
                backend,
                TierBackendSpec::File { .. } | TierBackendSpec::Device { .. }
            ),
            "file = PATH or device = PATH",
        ),
        _ => (
            matches!(backend, TierBackendSpec::Nbd { .. }),
            "nbd = \"unix:PATH\" or \"tcp:HOST:PORT\"",
        ),
    };
    if !allowed {
        let (k, s) = kinds[0].clone();
        return ctx.err(
            s,
            format!("{name}.{k}"),
            format!("tier {index} needs {what}"),
        );
    }
    if !matches!(
        backend,
        TierBackendSpec::File { .. } | TierBackendSpec::Device { .. }
    ) {
        for (k, s) in [
            ("profile", raw.profile.as_ref().map(|s| s.span())),
            ("latency_us", raw.latency_us.as_ref().map(|s| s.span())),
            ("bandwidth", raw.bandwidth.as_ref().map(|s| s.span())),
        ] {
            if let Some(s) = s {
                return ctx.err(
                    s,
                    format!("{name}.{k}"),
                    "device profiles apply to file and device tiers only".into(),
                );
            }
        }
    }
    if let (Some(e), false) = (&raw.export, matches!(backend, TierBackendSpec::Nbd { .. })) {
        return ctx.err(
            e.span(),
            format!("{name}.export"),
            "export applies to nbd tiers only".into(),
        );
    }
    Ok(TierSpec {
        index,
        capacity_bytes,
        backend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TierConfig, TierConfigError> {
        TierConfig::parse("t.toml", text, Path::new("/w"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn full_file_parses_and_expands_workdir() {
        let c = parse(
            "[tier0]\ncapacity = \"1M\"\nbackend = \"ram\"\n\
             [tier2]\ncapacity = \"8M\"\nfile = \"${WORKDIR}/t2.img\"\nprofile = \"nvme\"\n\
             [tier3]\ncapacity = \"8M\"\nfile = \"t3.img\"\nlatency_us = 140\nbandwidth = \"500M\"\n\
             [tier4]\ncapacity = \"8M\"\ndevice = \"/dev/sdz\"\n\
             [tier5]\ncapacity = \"1G\"\nnbd = \"unix:${WORKDIR}/nbd.sock\"\nexport = \"t5\"\n",
        )
        .unwrap();
        assert_eq!(c.tiers[0].as_ref().unwrap().backend, TierBackendSpec::Ram);
        assert!(c.tiers[1].is_none());
        assert_eq!(
            c.tiers[2].as_ref().unwrap().backend,
            TierBackendSpec::File {
                path: "/w/t2.img".into(),
                profile: Some(DeviceProfile::Nvme)
            }
        );
        assert_eq!(
            c.tiers[3].as_ref().unwrap().backend,
            TierBackendSpec::File {
                path: "/w/t3.img".into(),
                profile: Some(DeviceProfile::Custom {
                    latency_us: 140,
                    bandwidth_bytes_per_s: 500 << 20
                })
            }
        );
        assert_eq!(
            c.tiers[4].as_ref().unwrap().backend,
            TierBackendSpec::Device {
                path: "/dev/sdz".into(),
                profile: None
            }
        );
        assert_eq!(
            c.tiers[5].as_ref().unwrap().backend,
            TierBackendSpec::Nbd {
                address: NbdAddress::Unix("/w/nbd.sock".into()),
                export: "t5".into()
            }
        );
        assert_eq!(c.capacity_pages(5, 4096), 1 << 18);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err("[tier1]\ncapacity = \"64M\"\nbackend = \"ram\"\n[tier2]\ncapacity = \"12Q\"\nfile = \"x\"\n");
        assert!(e.starts_with("t.toml:5: tier2.capacity:"), "{e}");
        let e = err("[tier2]\ncapacity = \"1M\"\nfile = \"x\"\nprofile = \"floppy\"\n");
        assert!(e.starts_with("t.toml:4: tier2.profile:"), "{e}");
        let e = err("[tier1]\ncapacity = \"1M\"\nbackend = \"ram\"\ncolour = 3\n");
        assert!(e.starts_with("t.toml:4: tier1.colour:"), "{e}");
        let e = err("[tier1]\ncapacity = 64\nbackend = \"ram\"\n");
        assert!(e.starts_with("t.toml:2: tier1.capacity:"), "{e}");
        let e = err("[tier2]\ncapacity = \"1M\"\nbackend = \"ram\"\n");
        assert!(e.starts_with("t.toml:3: tier2.backend:"), "{e}");
        let e = err("[tier5]\ncapacity = \"1M\"\nnbd = \"ftp:x\"\n");
        assert!(e.starts_with("t.toml:3: tier5.nbd:"), "{e}");
        let e = err("[tier1]\nbackend = \"ram\"\n");
        assert!(e.starts_with("t.toml:1: tier1.capacity: missing"), "{e}");
        let e = err("[tier9]\ncapacity = \"1M\"\n");
        assert!(e.contains("t.toml:1:") && e.contains("tier9"), "{e}");
        let e = err("[tier1\n");
        assert!(e.starts_with("t.toml:1:"), "{e}");
        let e = err("order = [2, 3, 3]\n[tier1]\ncapacity = \"1M\"\nbackend = \"ram\"\n");
        assert!(e.starts_with("t.toml:1: order: list storage tiers"), "{e}");
        let e = err("order = [1, 2]\n[tier1]\ncapacity = \"1M\"\nbackend = \"ram\"\n");
        assert!(e.starts_with("t.toml:1: order:"), "{e}");
        let e = err("[tier1]\ncapacity = \"1M\"\nbackend = \"ram\"\norder = [2]\n");
        assert!(
            e.starts_with("t.toml:4: tier1.order: `order` goes at the top"),
            "{e}"
        );
    }

    #[test]
    fn order_names_the_fastest_tiers_first() {
        let ram = "[tier1]\ncapacity = \"1M\"\nbackend = \"ram\"\n";
        assert_eq!(parse(ram).unwrap().order, StorageOrder::default());
        let c = parse(&format!("order = [2, 3, 5]\n{ram}")).unwrap();
        assert_eq!(c.order.tiers(), [2, 3, 5, 4]);
    }
}
