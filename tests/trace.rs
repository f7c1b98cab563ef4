//! Integration tests of the trace format through the `tiervisor trace` CLI:
//! import of a real program's valgrind lackey output, info/dump agreement, and
//! one-line errors (status 2, no panic) for damaged files.

mod common;

use common::{tiervisor, Scratch};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn info_json(trace: &Path) -> serde_json::Value {
    let o = tiervisor()
        .args(["trace", "info", "--json", "--top", "3"])
        .arg(trace)
        .output()
        .unwrap();
    assert!(o.status.success(), "trace info: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Dump lines without the `#` heading: (time, page, vcpu, op, kind, source).
fn dump(trace: &Path, limit: Option<u64>) -> Vec<Vec<String>> {
    let mut cmd = tiervisor();
    cmd.args(["trace", "dump"]).arg(trace);
    if let Some(l) = limit {
        cmd.args(["--limit", &l.to_string()]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "trace dump: {}", stderr(&o));
    stdout(&o)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

/// `tiervisor trace import --lackey -` fed straight from a running valgrind.
fn import_real_program(program: &[&str], trace: &Path) -> (Output, String) {
    // Next to the trace, in the test's scratch directory.
    let log = trace.with_file_name("valgrind.log");
    let mut valgrind = Command::new("valgrind")
        .args(["--tool=lackey", "--trace-mem=yes"])
        .arg(format!("--log-file={}", log.display()))
        .args(program)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("valgrind is missing: run resources/scripts/setup.sh (make setup)");
    assert!(valgrind.wait().unwrap().success());
    let import = tiervisor()
        .args(["trace", "import", "--lackey", "-", "-o"])
        .arg(trace)
        .stdin(std::fs::File::open(&log).unwrap())
        .output()
        .unwrap();
    (import, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn real_program_under_lackey_imports_and_info_dump_agree() {
    let dir = Scratch::new("trace-true");
    let trace = dir.join("true.tvt");
    let (import, lackey_log) = import_real_program(&["/bin/true"], &trace);
    let summary = stderr(&import);
    assert!(import.status.success(), "{summary}");
    assert_eq!(summary.lines().count(), 1, "{summary}");

    // The clock is lackey's own instruction count: compare with valgrind's total.
    let guest_instrs: u64 = lackey_log
        .lines()
        .find_map(|l| {
            l.split_once("guest instrs:")
                .map(|(_, n)| n.trim().replace(',', ""))
        })
        .expect("lackey prints its instruction count")
        .parse()
        .unwrap();
    assert!(
        summary.contains(&format!("({guest_instrs} instructions,")),
        "{summary}"
    );

    let info = info_json(&trace);
    let records = dump(&trace, None);
    assert_eq!(info["records"].as_u64().unwrap(), records.len() as u64);
    assert!(records.len() > 1000, "a real program makes many accesses");
    assert_eq!(info["clock"], "instructions");
    assert_eq!(info["metadata"]["importer"], "lackey");
    for (op, key) in [("read", "read"), ("write", "write"), ("exec", "exec")] {
        let n = records.iter().filter(|r| r[3] == op).count() as u64;
        assert_eq!(info["ops"][key].as_u64().unwrap(), n, "{op}");
        assert!(n > 0, "/bin/true reads, writes and executes");
    }
    let pages: std::collections::HashSet<&str> = records.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(info["distinct_pages"].as_u64().unwrap(), pages.len() as u64);
    // Exec records are code, the rest data; time never goes backwards in an import.
    assert!(records.iter().all(|r| (r[3] == "exec") == (r[4] == "code")));
    let times: Vec<u64> = records.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(*times.last().unwrap() <= guest_instrs);
    assert_eq!(dump(&trace, Some(5)), records[..5].to_vec());
}

#[test]
fn handwritten_lackey_lines_dump_exactly() {
    let dir = Scratch::new("trace-handwritten");
    let input = dir.join("small.lackey");
    std::fs::write(
        &input,
        "==1== Lackey\nI  00401000,3\n L 7ff000ffc,8\n S 00602010,4\nprogram output\nI  00401003,2\n M 00602010,4\nI  00402000,5\n",
    )
    .unwrap();
    let trace = dir.join("small.tvt");
    let o = tiervisor()
        .args(["trace", "import", "--description", "hand made", "--lackey"])
        .arg(&input)
        .arg("-o")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 valgrind, 1 skipped"),
        "{}",
        stderr(&o)
    );
    let lines: Vec<String> = dump(&trace, None).iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        lines,
        [
            "1 0x401 0 exec code full",
            "1 0x7ff000 0 read data full",
            "1 0x7ff001 0 read data full",
            "1 0x602 0 write data full",
            "2 0x602 0 write data full",
            "3 0x402 0 exec code full",
        ]
    );
    assert_eq!(info_json(&trace)["description"], "hand made");

    let no_instr = dir.join("small-noinstr.tvt");
    let o = tiervisor()
        .args(["trace", "import", "--no-instr", "--lackey"])
        .arg(&input)
        .arg("-o")
        .arg(&no_instr)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(info_json(&no_instr)["records"], 4);
}

/// Runs `trace info` and `trace dump` on a damaged file: status 2, one line, no panic.
fn assert_one_line_error(trace: &Path, expect: &str) {
    for sub in ["info", "dump"] {
        let o = tiervisor()
            .args(["trace", sub])
            .arg(trace)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{sub}: {err}");
        assert_eq!(err.lines().count(), 1, "{sub}: {err}");
        assert!(err.starts_with("tiervisor: "), "{sub}: {err}");
        assert!(err.contains(expect), "{sub}: expected {expect:?} in {err}");
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn damaged_traces_give_one_line_errors() {
    let dir = Scratch::new("trace-damaged");
    let input = dir.join("damage.lackey");
    let text: String = (0..20_000u64)
        .map(|i| format!(" L {:x},8\n", 0x10000 + i * 64))
        .collect();
    std::fs::write(&input, text).unwrap();
    let trace = dir.join("damage.tvt");
    let o = tiervisor()
        .args(["trace", "import", "--lackey"])
        .arg(&input)
        .arg("-o")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&trace).unwrap();

    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x55;
    let path = dir.join("flipped.tvt");
    std::fs::write(&path, &flipped).unwrap();
    assert_one_line_error(&path, "corrupt trace at byte offset");

    let path = dir.join("cut.tvt");
    std::fs::write(&path, &bytes[..mid]).unwrap();
    assert_one_line_error(&path, "truncated trace");

    let path = dir.join("text.tvt");
    std::fs::write(&path, "this is not a trace\n").unwrap();
    assert_one_line_error(&path, "not a tiervisor trace");

    let mut future = bytes.clone();
    future[8] = 9;
    let path = dir.join("future.tvt");
    std::fs::write(&path, &future).unwrap();
    assert_one_line_error(&path, "version 9 is not supported");

    assert_one_line_error(&dir.join("missing.tvt"), "No such file");
}

#[test]
fn a_failed_import_leaves_the_output_as_it_was() {
    let dir = Scratch::new("trace-failed-import");
    let trace = dir.join("kept.tvt");
    std::fs::write(&trace, "an earlier file").unwrap();
    let not_lackey = dir.join("not-lackey.txt");
    std::fs::write(&not_lackey, "root:x:0:0:root:/root:/bin/bash\nhello\n").unwrap();
    let missing = dir.join("missing.lackey");
    for (input, expect) in [
        (&not_lackey, "no lackey records"),
        (&missing, "No such file"),
    ] {
        let o = tiervisor()
            .args(["trace", "import", "--lackey"])
            .arg(input)
            .arg("-o")
            .arg(&trace)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert_eq!(std::fs::read(&trace).unwrap(), b"an earlier file");
    }
    // Nothing half-written is left beside it either.
    let dir = trace.parent().unwrap();
    let partial = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".kept.tvt.partial-")
        });
    assert!(!partial, "a partial trace was left in {}", dir.display());
}
