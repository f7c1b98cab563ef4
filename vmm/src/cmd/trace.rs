//! `tiervisor trace ...`: inspect, dump and import memory access traces
//! (format: `docs/trace-format.md`, code: `tiering::trace`).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tiering::access::Access;
use tiering::trace::lackey::{self, InstrFetches, LackeyOptions};
use tiering::trace::summary::TraceSummary;
use tiering::trace::{TraceHeader, TraceReader, TraceWriter};

const TRACE_EXAMPLES: &str = "\
Examples:
  Record a real program's accesses with valgrind and import them:
    valgrind --tool=lackey --trace-mem=yes --log-fd=3 gzip -c big.txt 3>&1 >/dev/null 2>&1 \\
        | tiervisor trace import --lackey - -o gzip.tvt --description 'gzip -c big.txt'
  Record a VM's accesses (tier files under /var/tmp/tv), then summarise them:
    TIERVISOR_WORKDIR=/var/tmp/tv tiervisor run --kernel resources/out/testguest.elf \\
        --tiers resources/tiers/bench-live.toml --ram-budget 16M \\
        --cmdline 'workload=zipf mem=64M iters=200000 seed=1' --trace-out vm.tvt
    tiervisor trace info vm.tvt --json
  The first records as text:
    tiervisor trace dump vm.tvt --limit 20

Exit status: 0; 2 for bad input (unreadable or damaged trace, input without lackey records).";

#[derive(clap::Subcommand)]
#[command(after_help = TRACE_EXAMPLES)]
pub enum TraceCommand {
    /// Summarise a trace file: header, records, duration, pages, op/kind/source/vCPU split.
    Info {
        file: PathBuf,
        /// How many of the most accessed pages to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print records as text, one per line: time page vcpu op kind source.
    Dump {
        file: PathBuf,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Convert another tool's output into a trace.
    Import {
        /// Output of `valgrind --tool=lackey --trace-mem=yes` (`-` for stdin).
        #[arg(long, value_name = "FILE|-")]
        lackey: PathBuf,
        /// Trace file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Drop instruction fetches (they still advance the clock).
        #[arg(long, conflicts_with = "all_instr")]
        no_instr: bool,
        /// Keep every instruction fetch, not one per run on the same code page.
        #[arg(long)]
        all_instr: bool,
        /// One line stored in the header saying what was traced.
        #[arg(long)]
        description: Option<String>,
        /// Stop after this many records; the rest of the input is left unread
        /// (a piped valgrind then ends on SIGPIPE).
        #[arg(long, value_name = "N")]
        max_records: Option<u64>,
    },
}

pub fn run(c: TraceCommand) -> i32 {
    let result = match c {
        TraceCommand::Info { file, top, json } => info(&file, top, json),
        TraceCommand::Dump { file, limit } => dump(&file, limit),
        TraceCommand::Import {
            lackey,
            output,
            no_instr,
            all_instr,
            description,
            max_records,
        } => {
            let instr = match (no_instr, all_instr) {
                (true, _) => InstrFetches::None,
                (_, true) => InstrFetches::All,
                _ => InstrFetches::PageChanges,
            };
            let opts = LackeyOptions { instr, max_records };
            import_lackey(&lackey, &output, opts, description)
        }
    };
    match result {
        Ok(()) => 0,
        Err(msg) => super::usage_error(msg),
    }
}

fn open(file: &Path) -> Result<TraceReader<io::BufReader<File>>, String> {
    TraceReader::open(file).map_err(|e| format!("trace {}: {e}", file.display()))
}

fn info(file: &Path, top: usize, json: bool) -> Result<(), String> {
    let reader = open(file)?;
    let header = reader.header().clone();
    let summary =
        TraceSummary::from_records(reader).map_err(|e| format!("trace {}: {e}", file.display()))?;
    let file_bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let text = if json {
        info_json(file, file_bytes, &header, &summary, top)
    } else {
        info_text(file, file_bytes, &header, &summary, top)
    };
    super::print_stdout(&text)
}

fn footprint_mib(h: &TraceHeader, s: &TraceSummary) -> f64 {
    (s.distinct_pages() * u64::from(h.page_size)) as f64 / (1u64 << 20) as f64
}

fn info_text(file: &Path, bytes: u64, h: &TraceHeader, s: &TraceSummary, top: usize) -> String {
    let pct = |n: u64| 100.0 * n as f64 / s.records.max(1) as f64;
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<19} {v}\n"));
    line("file", format!("{} ({bytes} bytes)", file.display()));
    line(
        "format",
        format!("tiervisor trace v{}", tiering::trace::VERSION),
    );
    line("description", h.description.clone());
    line("page size", h.page_size.to_string());
    line("clock", h.clock.unit().to_string());
    line("vm id", h.vm_id.map_or("-".into(), |v| v.to_string()));
    for (k, v) in &h.metadata {
        line(&format!("meta {k}"), v.clone());
    }
    line("records", s.records.to_string());
    line(
        "bytes/record",
        format!("{:.2}", bytes as f64 / s.records.max(1) as f64),
    );
    line(
        "time",
        format!(
            "{}..{} ({} {})",
            s.first_time.unwrap_or(0),
            s.last_time.unwrap_or(0),
            s.duration(),
            h.clock.unit()
        ),
    );
    line("distinct pages", s.distinct_pages().to_string());
    line("footprint", format!("{:.2} MiB", footprint_mib(h, s)));
    let names = ["read", "write", "exec"];
    line(
        "ops",
        (0..3)
            .map(|i| format!("{} {} ({:.1}%)", names[i], s.ops[i], pct(s.ops[i])))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let names = ["unknown", "code", "data", "shared"];
    line("kinds", split(&names, &s.kinds, pct));
    let names = ["full", "missing-fault", "sampled-minor", "dirty-log"];
    line("sources", split(&names, &s.sources, pct));
    line(
        "vcpus",
        s.vcpus
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for (i, (page, n)) in s.top_pages(top).into_iter().enumerate() {
        line(
            if i == 0 { "top pages" } else { "" },
            format!("0x{page:x} {n} ({:.2}%)", pct(n)),
        );
    }
    o
}

/// "name n (p%)" for the non-zero entries.
fn split(names: &[&str], counts: &[u64], pct: impl Fn(u64) -> f64) -> String {
    let parts: Vec<String> = names
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0)
        .map(|(name, &n)| format!("{name} {n} ({:.1}%)", pct(n)))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn info_json(file: &Path, bytes: u64, h: &TraceHeader, s: &TraceSummary, top: usize) -> String {
    let v = serde_json::json!({
        "file": file.display().to_string(),
        "file_bytes": bytes,
        "version": tiering::trace::VERSION,
        "description": h.description,
        "page_size": h.page_size,
        "clock": h.clock.unit(),
        "vm_id": h.vm_id,
        "metadata": h.metadata,
        "records": s.records,
        "first_time": s.first_time,
        "last_time": s.last_time,
        "duration": s.duration(),
        "distinct_pages": s.distinct_pages(),
        "footprint_mib": footprint_mib(h, s),
        "ops": {"read": s.ops[0], "write": s.ops[1], "exec": s.ops[2]},
        "kinds": {"unknown": s.kinds[0], "code": s.kinds[1], "data": s.kinds[2], "shared": s.kinds[3]},
        "sources": {"full": s.sources[0], "missing_fault": s.sources[1],
                    "sampled_minor": s.sources[2], "dirty_log": s.sources[3]},
        "vcpus": s.vcpus.iter().map(|(v, n)| (v.to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "top_pages": s.top_pages(top).into_iter().map(|(p, n)| serde_json::json!({"page": p, "accesses": n})).collect::<Vec<_>>(),
    });
    format!("{v}\n")
}

fn format_record(out: &mut impl Write, a: &Access) -> io::Result<()> {
    let op = ["read", "write", "exec"][a.op as usize];
    let kind = ["unknown", "code", "data", "shared"][a.kind as usize];
    let source = ["full", "missing-fault", "sampled-minor", "dirty-log"][a.source as usize];
    writeln!(
        out,
        "{} 0x{:x} {} {op} {kind} {source}",
        a.time_ns, a.page, a.vcpu
    )
}

fn dump(file: &Path, limit: Option<u64>) -> Result<(), String> {
    let reader = open(file)?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let write = || -> io::Result<Result<(), String>> {
        writeln!(
            out,
            "# time({}) page vcpu op kind source",
            reader.header().clock.unit()
        )?;
        for (n, rec) in reader.enumerate() {
            if limit.is_some_and(|l| n as u64 >= l) {
                break;
            }
            match rec {
                Ok(a) => format_record(&mut out, &a)?,
                Err(e) => {
                    out.flush()?;
                    return Ok(Err(format!("trace {}: {e}", file.display())));
                }
            }
        }
        out.flush()?;
        Ok(Ok(()))
    };
    match write() {
        Ok(r) => r,
        // `trace dump FILE | head` is normal use, not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}

fn import_lackey(
    input: &Path,
    output: &Path,
    opts: LackeyOptions,
    description: Option<String>,
) -> Result<(), String> {
    let from_stdin = input.as_os_str() == "-";
    let description = description.unwrap_or_else(|| {
        if from_stdin {
            "valgrind lackey output (stdin)".into()
        } else {
            format!("valgrind lackey output {}", input.display())
        }
    });
    let mut header = lackey::header(&description);
    let mode = match opts.instr {
        InstrFetches::PageChanges => "page-changes",
        InstrFetches::All => "all",
        InstrFetches::None => "none",
    };
    header.metadata.insert("instr-fetches".into(), mode.into());
    let file = if from_stdin {
        None
    } else {
        Some(File::open(input).map_err(|e| format!("lackey input {}: {e}", input.display()))?)
    };
    // The trace is written next to `output` and renamed over it only once complete,
    // so a failed import leaves an existing file as it was.
    let partial = partial_path(output);
    let start = Instant::now();
    let imported = (|| {
        let mut writer = TraceWriter::create(&partial, &header)
            .map_err(|e| format!("trace {}: {e}", output.display()))?;
        let stats = match file {
            Some(f) => lackey::import(f, &mut writer, &opts),
            None => lackey::import(io::stdin().lock(), &mut writer, &opts),
        }
        .map_err(|e| format!("import into {}: {e}", output.display()))?;
        if stats.records == 0 && !stats.stopped_at_limit {
            return Err(format!(
                "no lackey records in {} ({} lines): expected the output of valgrind --tool=lackey --trace-mem=yes",
                if from_stdin { "stdin".into() } else { input.display().to_string() },
                stats.lines
            ));
        }
        writer
            .finish()
            .map_err(|e| format!("trace {}: {e}", output.display()))?;
        std::fs::rename(&partial, output)
            .map_err(|e| format!("trace {}: {e}", output.display()))?;
        Ok(stats)
    })();
    let stats = imported.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "tiervisor: imported {} lines{} ({} instructions, {} valgrind, {} skipped) -> {} records, {} pages ({:.1} MiB) in {:.2} s ({:.1} M lines/s, {:.0} MB/s)",
        stats.lines,
        if stats.stopped_at_limit {
            " (stopped at --max-records)"
        } else {
            ""
        },
        stats.instructions,
        stats.valgrind_lines,
        stats.skipped_lines,
        stats.records,
        stats.distinct_pages,
        (stats.distinct_pages << 12) as f64 / (1u64 << 20) as f64,
        secs,
        stats.lines as f64 / secs / 1e6,
        stats.bytes as f64 / secs / 1e6,
    );
    Ok(())
}

/// `DIR/.NAME.partial-PID` for `DIR/NAME`: same file system, so the final rename is atomic.
fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map_or_else(|| "trace".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}
