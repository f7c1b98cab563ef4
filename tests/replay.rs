//! `tiervisor replay` end to end: a trace written with the trace writer, replayed by
//! the real binary, JSON and table output, and the usage errors.

mod common;

use common::{tiervisor, Scratch};
use std::path::Path;

use tiering::access::{Access, AccessOp, AccessSource, PageKind};
use tiering::trace::{TraceHeader, TraceWriter};

/// A scan over 2,000 pages repeated 5 times, with a hot set of 50 pages touched
/// between scan steps: structure the advisors differ on.
fn write_trace(path: &Path) {
    let mut w = TraceWriter::create(path, &TraceHeader::default()).unwrap();
    let mut t = 0;
    for round in 0..5u64 {
        for page in 0..2000u64 {
            for p in [10_000 + page, (page * 7 + round) % 50] {
                t += 500;
                let op = if p % 3 == 0 {
                    AccessOp::Write
                } else {
                    AccessOp::Read
                };
                let a = Access {
                    time_ns: t,
                    page: p,
                    vcpu: 0,
                    op,
                    kind: PageKind::Data,
                    source: AccessSource::Full,
                };
                w.write(&a).unwrap();
            }
        }
    }
    w.finish().unwrap();
}

fn replay_json(trace: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = tiervisor()
        .args(["replay", "--trace"])
        .arg(trace)
        .args([
            "--ram-fraction",
            "0.25",
            "--advisor",
            "leap,stride,lru,lfu,none,oracle",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn field(r: &serde_json::Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {r}"))
}

#[test]
fn replay_reports_every_advisor_and_the_oracle_is_the_limit() {
    let dir = Scratch::new("replay-advisors");
    let trace = dir.join("mixed.tvt");
    write_trace(&trace);
    for visibility in ["full", "sampled:4"] {
        let reports = replay_json(&trace, &["--visibility", visibility]);
        let names: Vec<&str> = reports
            .iter()
            .map(|r| r["advisor"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["leap", "stride", "lru", "lfu", "none", "oracle"]);
        let by = |n: &str| reports.iter().find(|r| r["advisor"] == n).unwrap();
        let none = field(by("none"), "demand_faults");
        for r in &reports {
            assert_eq!(field(r, "accesses"), 20_000);
            assert_eq!(field(r, "distinct_pages"), 2050);
            assert_eq!(field(r, "ram_budget_pages"), 512);
            let (issued, useful) = (field(r, "prefetch_issued"), field(r, "prefetch_useful"));
            assert!(useful + field(r, "prefetch_wasted") <= issued);
            let coverage = r["coverage"].as_f64().unwrap();
            let faults = field(r, "demand_faults") as f64;
            assert!((coverage - (none as f64 - faults) / none as f64).abs() < 1e-9);
            assert!(field(r, "stall_ns") > 0);
            for key in ["advisor_cpu_ns", "cold_faults", "evictions"] {
                field(r, key);
            }
        }
        let oracle = field(by("oracle"), "demand_faults");
        for other in ["leap", "stride", "lru", "lfu", "none"] {
            assert!(
                oracle <= field(by(other), "demand_faults"),
                "{visibility}: oracle vs {other}"
            );
        }
        // A sequential scan is what readahead is for.
        assert!(
            field(by("stride"), "demand_faults") < none / 2,
            "{visibility}: stride"
        );
    }
}

#[test]
fn table_output_and_usage_errors() {
    let dir = Scratch::new("replay-table");
    let trace = dir.join("table.tvt");
    write_trace(&trace);
    let out = tiervisor()
        .args(["replay", "--advisor", "lru,none", "--trace"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("demand_faults") && table.lines().any(|l| l.starts_with("lru ")),
        "{table}"
    );

    let bad = |args: &[&str], expect: &str| {
        let out = tiervisor()
            .args(["replay", "--trace"])
            .arg(&trace)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.starts_with("tiervisor: ") && err.contains(expect),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    };
    // The bench's constrained tier file parses and changes the tiers: with 32 pages
    // of NVMe and 64 of SSD, and no HDD, more pages land in the slow network tier.
    let constrained = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../resources/tiers/bench-constrained.toml");
    let lru_stall = |extra: &[&str]| {
        let reports = replay_json(&trace, extra);
        let lru = reports.iter().find(|r| r["advisor"] == "lru").unwrap();
        field(lru, "stall_ns")
    };
    let unbounded = lru_stall(&[]);
    let small = lru_stall(&["--tiers", constrained.to_str().unwrap()]);
    assert!(small > unbounded, "{small} <= {unbounded}");
    // The six tiers in speed order (tier 5, 1 ms in the replay, before the 2 ms tier
    // 4): pages stay off the slowest tier while tier 5 has room.
    let six = |file: &str| {
        let path = constrained.with_file_name(file);
        lru_stall(&["--tiers", path.to_str().unwrap()])
    };
    let (by_number, by_speed) = (six("default.toml"), six("by-speed.toml"));
    assert!(by_speed < by_number, "{by_speed} >= {by_number}");
    bad(&["--advisor", "lru,magic"], "unknown advisor \"magic\"");
    bad(&["--ram-fraction", "1.5"], "--ram-fraction");
    bad(&["--window-us", "0"], "--window-us must be at least 1");
    bad(
        &["--visibility", "full", "--dirty-harvest", "1"],
        "--dirty-harvest",
    );
    // A harvest every window shows lru the written pages, at a write-protect fault
    // each: stall for sampling beyond the sampled minor faults (33 us each).
    let write_protect = |extra: &[&str]| {
        let reports = replay_json(&trace, extra);
        let lru = reports.iter().find(|r| r["advisor"] == "lru").unwrap();
        field(lru, "sample_stall_ns") - field(lru, "samples") * 33_000
    };
    assert_eq!(write_protect(&[]), 0);
    assert!(write_protect(&["--dirty-harvest", "1"]) > 0);
    let missing = dir.join("missing.tvt");
    let out = tiervisor()
        .args(["replay", "--trace"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let garbage = dir.join("garbage.tvt");
    std::fs::write(&garbage, b"not a trace at all").unwrap();
    let out = tiervisor()
        .args(["replay", "--trace"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a tiervisor trace"));
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let dir = Scratch::new("replay-pipe");
    // `tiervisor replay ... | head -1`: the pipe's reader closes before the report is
    // written. That is not an error: no panic, no message, exit status 0.
    let trace = dir.join("pipe.tvt");
    write_trace(&trace);
    let mut child = tiervisor()
        .args(["replay", "--advisor", "lru,none", "--json", "--trace"])
        .arg(&trace)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the read end: every write now fails with EPIPE
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn every_command_help_has_examples() {
    for cmd in [&["replay"][..], &["train"], &["trace"]] {
        let out = tiervisor().args(cmd).arg("--help").output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Examples:\n") && text.contains("Exit status:"),
            "{cmd:?}: {text}"
        );
    }
}
