//! `tiervisor run` end to end under real KVM: the test guest's workloads with 1 and 2
//! vCPUs, exit paths through tiny hand-assembled PVH guests, bad input, metrics.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

const WORKLOADS: [&str; 7] = ["scan", "stride", "random", "zipf", "chase", "phases", "kv"];

fn run_workload(workload: &str, vcpus: u32) {
    let guest = testguest();
    let cmdline = format!("workload={workload} mem=4M iters=20000 seed=7");
    let start = Instant::now();
    let out = tiervisor()
        .args([
            "run",
            "--memory",
            "64M",
            "--vcpus",
            &vcpus.to_string(),
            "--cmdline",
            &cmdline,
        ])
        .arg("--kernel")
        .arg(&guest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("testguest: workload="))
        .unwrap_or_else(|| panic!("no result line\n{}", describe(&out)));
    assert!(
        line.contains(&format!("workload={workload} ")) && line.contains("ops=20000"),
        "{line}"
    );
    assert!(line.contains("result=ok"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // The operation times: quantiles in order, none above the run's own time.
    let field = |key: &str| -> u64 {
        let at = line
            .find(&format!(" {key}="))
            .unwrap_or_else(|| panic!("no {key}: {line}"));
        line[at + key.len() + 2..]
            .split(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad {key}: {line}"))
    };
    let quantiles = ["op_p50_ns", "op_p99_ns", "op_p999_ns", "op_max_ns"].map(field);
    assert!(quantiles[0] > 0, "{line}");
    assert!(quantiles.windows(2).all(|w| w[0] <= w[1]), "{line}");
    assert!(quantiles[3] <= field("ns"), "{line}");
    eprintln!("{workload} vcpus={vcpus}: {:?} {line}", start.elapsed());
}

#[test]
fn every_workload_passes_with_1_vcpu() {
    for w in WORKLOADS {
        run_workload(w, 1);
    }
}

#[test]
fn every_workload_passes_with_2_vcpus() {
    for w in WORKLOADS {
        run_workload(w, 2);
    }
}

#[test]
fn guest_failure_status_propagates() {
    // An unknown workload must end the guest with result=FAIL and a non-zero status.
    let out = tiervisor()
        .args([
            "run",
            "--memory",
            "64M",
            "--cmdline",
            "workload=nosuch mem=4M iters=10 seed=1",
        ])
        .arg("--kernel")
        .arg(testguest())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("result=FAIL"), "{}", describe(&out));
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.status.code().is_some());
}

/// Writes a tiny hand-assembled guest named `name` and runs it with 16 MiB of memory
/// and `extra` options.
fn run_tiny_guest(name: &str, code: &[u8], extra: &[&str]) -> Output {
    let kernel = write_tiny_guest(name, code);
    tiervisor()
        .args(["run", "--memory", "16M"])
        .args(extra)
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .unwrap()
}

#[test]
fn debug_exit_value_becomes_exit_status() {
    for (value, status) in [(0u32, 0), (3, 3), (0x1ff, 0xff), (0x100, 0)] {
        let out = run_tiny_guest(&format!("exit{value}"), &code_debug_exit(value), &[]);
        assert_eq!(out.status.code(), Some(status), "{}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
        assert!(error_lines(&out).is_empty(), "{}", describe(&out));
    }
}

#[test]
fn runs_with_stdin_closed() {
    use std::os::unix::process::CommandExt;
    let kernel = write_tiny_guest("closed-stdin", &code_debug_exit(5));
    let mut cmd = tiervisor();
    cmd.args(["run", "--memory", "16M", "--kernel"])
        .arg(&kernel);
    // SAFETY: close(2) is async-signal-safe; the child then runs with no fd 0, as a
    // CI job without standard input may.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
}

#[test]
fn i8042_reset_ends_the_vm_with_status_0() {
    let out = run_tiny_guest("reset", &code_i8042_reset(), &["--vcpus", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn triple_fault_is_an_error_with_rip() {
    let out = run_tiny_guest("triple", &code_triple_fault(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = error_lines(&out).join("\n");
    assert!(err.contains("rip=0x"), "{}", describe(&out));
}

#[test]
fn guest_kvm_error_is_reported_with_rip() {
    let out = run_tiny_guest("int3", &code_ring0_int3(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = error_lines(&out);
    assert_eq!(err.len(), 1, "{}", describe(&out));
    assert!(
        err[0].contains("KVM internal error") || err[0].contains("triple fault"),
        "{}",
        describe(&out)
    );
    assert!(err[0].contains("rip=0x"), "{}", describe(&out));
}

#[test]
fn sigterm_stops_a_spinning_guest_cleanly() {
    let kernel = write_tiny_guest("spin", &code_spin());
    let dir = scratch("spin");
    let metrics = dir.join("m.json");
    let mut child = tiervisor()
        .args(["run", "--memory", "16M", "--vcpus", "2", "--kernel"])
        .arg(&kernel)
        .arg("--metrics-out")
        .arg(&metrics)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the guest has run (metrics would show the boot-timer mark), then stop.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tiervisor did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    assert!(m["boot_ms"].as_f64().unwrap() > 0.0, "{m}");
}

fn assert_bad_input(args: &[&str], expect: &str) {
    let out = tiervisor().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one line\n{}",
        describe(&out)
    );
    assert!(lines[0].starts_with("tiervisor: "), "{}", lines[0]);
    assert!(
        lines[0].contains(expect),
        "{args:?}: want '{expect}' in: {}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn bad_inputs_give_one_line_and_status_2() {
    let dir = scratch("bad");
    let text = dir.join("notes.txt");
    std::fs::write(
        &text,
        "these are not the kernels you are looking for\n".repeat(200),
    )
    .unwrap();
    let text = text.to_str().unwrap();
    let tiny = write_tiny_guest("bad-ok", &code_debug_exit(0));
    let tiny = tiny.to_str().unwrap();
    let long = "x".repeat(100 * 1024);

    assert_bad_input(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        "cannot read kernel /nonexistent/vmlinuz",
    );
    assert_bad_input(&["run", "--kernel", text], "is not a kernel");
    assert_bad_input(
        &["run", "--kernel", tiny, "--memory", "1M"],
        "minimum is 16M",
    );
    assert_bad_input(
        &["run", "--kernel", tiny, "--memory", "100T"],
        "larger than this host's physical RAM",
    );
    assert_bad_input(&["run", "--kernel", tiny, "--memory", "lots"], "not a size");
    assert_bad_input(
        &["run", "--kernel", tiny, "--vcpus", "64"],
        "--vcpus 64 is more than",
    );
    assert_bad_input(
        &["run", "--kernel", tiny, "--cmdline", &long],
        "--cmdline is 102400 bytes",
    );
    assert_bad_input(
        &["run", "--kernel", tiny, "--initrd", "/nonexistent/initrd"],
        "cannot read initrd",
    );
    assert_bad_input(
        &["run", "--kernel", tiny, "--advisor", "gru"],
        "--advisor gru needs --tiers",
    );
}

#[test]
fn metrics_have_boot_ms_overhead_and_exit_counts() {
    let dir = scratch("metrics");
    let path = dir.join("run.json");
    let out = tiervisor()
        .args([
            "run",
            "--memory",
            "64M",
            "--cmdline",
            "workload=scan mem=4M iters=1000 seed=1",
        ])
        .arg("--kernel")
        .arg(testguest())
        .arg("--metrics-out")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let boot_ms = m["boot_ms"].as_f64().expect("boot_ms");
    assert!(
        boot_ms > 0.0 && boot_ms < m["run_ms"].as_f64().unwrap(),
        "{m}"
    );
    let overhead = m["vmm_overhead_kib"].as_u64().expect("vmm_overhead_kib");
    assert!(overhead > 0, "{m}");
    // The guest touched its RAM; that must not be counted as VMM overhead.
    assert!(m["guest_rss_kib"].as_u64().unwrap() >= 4096, "{m}");
    assert!(m["exits"]["io"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["exit_status"], 0);
    assert_eq!(m["vcpus"], 1);
    assert_eq!(m["memory_mib"], 64);
    assert_eq!(m["boot_protocol"], "pvh");
}

#[test]
fn help_shows_examples() {
    let out = tiervisor().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("Examples:") && text.contains("--metrics-out"),
        "{text}"
    );
}
