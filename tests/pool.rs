//! Integration tests of `tiervisor pool`: VMs in separate `tiervisor run` processes
//! share one RAM budget through a real manager process; bad pool input gets one clear
//! line and exit status 2.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_guest_ok, describe, error_lines, ram_and_nvme_tiers, read_metrics, status_field,
    thread_statuses, tiered_run, tiervisor, u, Scratch,
};

/// `tiervisor run` of the test guest in the pool at `pool`, its tiers and metrics in `dir`.
fn pool_vm(dir: &Path, pool: &Path, cmdline: &str, cpu: u32) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let tiers = ram_and_nvme_tiers(dir, "64M");
    let mut c = tiered_run(dir, &tiers, cmdline);
    c.args(["--cpu", &cpu.to_string()])
        .arg("--ram-pool")
        .arg(pool)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `tiervisor pool` on `pool`; `extra`: more flags (`--exit-when-empty` ends it when
/// the last VM has left).
fn start_manager(pool: &Path, size: &str, extra: &[&str]) -> Child {
    let child = tiervisor()
        .args(["pool", "--size", size, "--dir"])
        .arg(pool)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !pool.join("pool.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no pool.json");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn the_vm_that_refaults_gets_the_pages_the_other_does_not_use() {
    let root = Scratch::new("pool-share");
    let pool = root.join("pool");
    let manager = start_manager(&pool, "8M", &["--exit-when-empty"]);
    // 2,048 pages for two VMs: a Zipf workload over 12 MiB (3,072 pages) refaults at
    // any share; a pointer chase over 3 MiB (768 pages) fits in its half.
    let big = pool_vm(
        &root.join("big"),
        &pool,
        "workload=zipf mem=12M iters=150000 seed=1",
        0,
    )
    .spawn()
    .unwrap();
    let small = pool_vm(
        &root.join("small"),
        &pool,
        "workload=chase mem=3M iters=6000000 seed=2",
        1,
    )
    .spawn()
    .unwrap();
    let mut metrics = Vec::new();
    for (name, vm) in [("big", big), ("small", small)] {
        let out = vm.wait_with_output().unwrap();
        assert_guest_ok(&out, name);
        metrics.push(read_metrics(&root.join(name).join("metrics.json"))["tiers"].clone());
    }
    let out = manager.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "manager: {log}");
    assert_eq!(log.matches(" joined ").count(), 2, "{log}");
    assert_eq!(log.matches(" left;").count(), 2, "{log}");
    let (big, small) = (&metrics[0], &metrics[1]);
    // A VM that joins alone gets the whole pool, the next one half of it (from the
    // first); the Zipf VM had more than half the pool at some point.
    let initial = [big, small].map(|t| u(&t["pool"], "initial_budget_pages"));
    assert!(
        initial == [1024, 1024] || initial == [2048, 1024] || initial == [1024, 2048],
        "{initial:?}\n{log}"
    );
    assert!(u(&big["pool"], "max_budget_pages") > 1024, "{big}\n{log}");
    // The chase kept its working set: (almost) no refaults, against the Zipf VM's many.
    let refaults = |t: &serde_json::Value| u(t, "demand_faults") - u(t, "zero_fills");
    assert!(refaults(big) > 1000, "{big}");
    assert!(
        refaults(small) * 20 < refaults(big),
        "small {} big {}\n{log}",
        refaults(small),
        refaults(big)
    );
    // Every member's files are gone, and the manager's pool.json with them.
    let left: Vec<_> = std::fs::read_dir(&pool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "pool.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A pool of `size` (its manager with `--exit-when-empty` and `manager_flags`) and the
/// test-guest VMs `vms` (name, command line, CPU) in it, all started at once; checks
/// that every guest and the manager end well, and returns the manager's log.
fn vms_in_a_pool(
    name: &str,
    size: &str,
    manager_flags: &[&str],
    vms: &[(&str, &str, u32)],
) -> (String, Scratch) {
    let root = Scratch::new(name);
    let pool = root.join("pool");
    let mut flags = vec!["--exit-when-empty"];
    flags.extend_from_slice(manager_flags);
    let manager = start_manager(&pool, size, &flags);
    let children: Vec<_> = vms
        .iter()
        .map(|&(name, cmdline, cpu)| {
            let vm = pool_vm(&root.join(name), &pool, cmdline, cpu)
                .spawn()
                .unwrap();
            (name, vm)
        })
        .collect();
    for (name, vm) in children {
        let out = vm.wait_with_output().unwrap();
        assert_guest_ok(&out, name);
    }
    let out = manager.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "manager: {log}");
    (log, root)
}

/// Two VMs whose working sets (8 MiB of uniform random access each) do not fit in an
/// 8 MiB pool together: both refault at their halves round after round.
fn two_vms_in_too_small_a_pool(name: &str, manager_flags: &[&str]) -> (String, Scratch) {
    vms_in_a_pool(
        name,
        "8M",
        manager_flags,
        &[
            ("vm0", "workload=random mem=8M iters=20000 seed=7", 0),
            ("vm1", "workload=random mem=8M iters=20000 seed=8", 1),
        ],
    )
}

/// The manager says that such a pool is over-committed, and what to do about it (once
/// per spell: on a loaded host a VM starved of CPU can refault too little for a second
/// or more, which ends one). Without turns it then concentrates: one VM gets more than
/// its half (1,024 pages) while both still run.
#[test]
fn a_pool_too_small_for_its_vms_working_sets_is_reported_over_committed() {
    let (log, _root) = two_vms_in_too_small_a_pool("pool-overcommit", &[]);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("over-committed:"))
        .collect();
    assert!(!lines.is_empty(), "{log}");
    for line in lines {
        assert!(
            line.contains("all 2 VMs have refaulted at their budgets")
                && line.contains("Until they fit, the first VMs")
                && line.contains("`--slice-ms` runs them in turns"),
            "{log}"
        );
    }
    assert!(!log.contains(", waits"), "{log}");
    let over = log.find("over-committed:").unwrap();
    let left = log[over..].find(" left;").map_or(log.len(), |i| over + i);
    let raised = log[over..left].lines().any(|l| {
        l.split(" -> ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|pages| pages > 1024)
    });
    assert!(
        raised,
        "no VM got more than its half once over-committed\n{log}"
    );
}

/// With `--turns-when-over-committed` the manager then runs them in turns (one at a
/// time here), until one has left (what each holds at the end of its turn, nearly
/// the whole pool, never fits twice): the other is paused meanwhile, and both finish.
#[test]
fn an_over_committed_pool_runs_its_vms_in_turns_when_asked_to() {
    let (log, root) = two_vms_in_too_small_a_pool(
        "pool-overcommit-turns",
        &["--slice-ms", "200", "--turns-when-over-committed"],
    );
    let over = log.find("over-committed").expect(&log);
    assert!(
        log[over..].contains("They run in turns of 200 ms, 1 at once"),
        "{log}"
    );
    let waits = log.find(", waits").expect(&log);
    assert!(over < waits, "{log}");
    let again = log.find("all run at once again").expect(&log);
    assert!(waits < again, "{log}");
    let paused: f64 = (0..2)
        .map(|i| {
            let m = read_metrics(&root.join(format!("vm{i}")).join("metrics.json"));
            m["tiers"]["pool"]["paused_ms"].as_f64().unwrap()
        })
        .sum();
    assert!(paused > 0.0, "no VM was paused\n{log}");
}

/// Load control's way back: a big VM (8 MiB of random access) and two small ones (3
/// MiB each) over-commit an 8 MiB pool and take turns, one at a time; once the big one
/// has left, what the small ones hold at the ends of their turns fits, and they run
/// all at once again though more remain than run at once in turns.
#[test]
fn vms_in_turns_run_all_at_once_again_once_their_working_sets_fit() {
    let (log, _root) = vms_in_a_pool(
        "pool-fits-again",
        "8M",
        &["--slice-ms", "200", "--turns-when-over-committed"],
        &[
            ("big", "workload=random mem=8M iters=25000 seed=7", 0),
            ("small0", "workload=random mem=3M iters=3000000 seed=8", 1),
            ("small1", "workload=random mem=3M iters=3000000 seed=9", 1),
        ],
    );
    let over = log.find("over-committed").expect(&log);
    let (again, line) = line_from(&log, "the 2 VMs held");
    assert!(over < again, "{log}");
    assert!(
        line.contains("at the ends of their last turns") && line.ends_with("all run at once again"),
        "{log}"
    );
}

/// Where `needle` first is in the manager's `log`, and the rest of its line from there.
fn line_from<'a>(log: &'a str, needle: &str) -> (usize, &'a str) {
    let at = log.find(needle).expect(log);
    (at, log[at..].lines().next().unwrap())
}

/// `--turns-first`: a batch of VMs starts in turns, one at a time, and runs all at once
/// once what each held at the end of its turn is known to fit in the pool. (Two small
/// VMs: with three, a VM of the over-committed test beside them, still filling its
/// memory, once read as idle and gave its pages away; samples of a filling VM no
/// longer count, docs/pool.md.)
#[test]
fn a_pool_started_in_turns_runs_its_vms_all_at_once_once_their_sets_are_known_to_fit() {
    let (log, _root) = vms_in_a_pool(
        "pool-turns-first",
        "8M",
        &["--slice-ms", "200", "--turns-first"],
        &[
            ("vm0", "workload=random mem=2M iters=3000000 seed=7", 0),
            ("vm1", "workload=random mem=2M iters=3000000 seed=8", 1),
        ],
    );
    let waits = log.find(", waits").expect(&log);
    let (again, line) = line_from(&log, "the 2 VMs held");
    assert!(waits < again, "{log}");
    assert!(line.ends_with("all run at once again"), "{log}");
    assert!(!log.contains("over-committed"), "{log}");
}

/// Context switches so far of the thread named `name` of process `pid` (voluntary plus
/// involuntary, /proc/PID/task/TID/status), or None while it has no such thread.
fn thread_switches(pid: u32, name: &str) -> Option<u64> {
    let (_, status) = thread_statuses(pid).into_iter().find(|(n, _)| n == name)?;
    let count = |key: &str| -> Option<u64> { status_field(&status, key)?.parse().ok() };
    Some(count("voluntary_ctxt_switches")? + count("nonvoluntary_ctxt_switches")?)
}

/// A member's thread sleeps between rounds (100 ms) rather than waking every 2 ms: each
/// wake-up on the vCPU's host CPU took it from the guest, and a kv VM alone in a pool
/// ran its 99.9th-percentile operation in 31.6-75.7 us against 1.4-3.2 us once the
/// thread slept (docs/pool.md, "Waking up").
#[test]
fn a_member_thread_sleeps_between_rounds() {
    let root = Scratch::new("pool-quiet");
    let pool = root.join("pool");
    let manager = start_manager(&pool, "16M", &["--exit-when-empty"]);
    let mut vm = pool_vm(
        &root.join("vm"),
        &pool,
        "workload=chase mem=3M iters=100000000 seed=2",
        0,
    )
    .spawn()
    .unwrap();
    let start = Instant::now();
    let before = loop {
        if let Some(n) = thread_switches(vm.id(), "ram-pool") {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no ram-pool thread"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_secs(1));
    let after = thread_switches(vm.id(), "ram-pool").expect("the VM ended early");
    // SAFETY: kill on the pid of a child we started and have not waited for.
    unsafe { libc::kill(vm.id() as i32, libc::SIGTERM) };
    vm.wait().unwrap();
    manager.wait_with_output().unwrap();
    // Ten rounds a second, each a report and a look at the budget file; polling every
    // 2 ms made it 500.
    assert!(after - before <= 60, "{} switches in 1 s", after - before);
}

#[test]
fn bad_pool_input_is_one_line_and_exit_status_2() {
    let root = Scratch::new("pool-bad");
    let pool = root.join("pool");
    // No manager there.
    let out = pool_vm(
        &root.join("vm"),
        &pool,
        "workload=scan mem=1M iters=10 seed=1",
        0,
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let lines = error_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no pool manager runs there"), "{lines:?}");
    // --ram-pool and --ram-budget together.
    let out = pool_vm(
        &root.join("vm"),
        &pool,
        "workload=scan mem=1M iters=10 seed=1",
        0,
    )
    .args(["--ram-budget", "2M"])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // A second manager on a directory one runs in.
    let manager = start_manager(&pool, "4M", &[]);
    let out = tiervisor()
        .args(["pool", "--size", "4M", "--dir"])
        .arg(&pool)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        error_lines(&out)[0].contains("another manager"),
        "{}",
        describe(&out)
    );
    // A size below a page.
    let out = tiervisor()
        .args(["pool", "--size", "100", "--dir"])
        .arg(root.join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // SIGTERM ends the manager cleanly.
    // SAFETY: kill on the pid of a child we started and have not waited for.
    unsafe { libc::kill(manager.id() as i32, libc::SIGTERM) };
    let out = manager.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!pool.join("pool.json").exists());
}

#[test]
fn an_admin_policy_sets_the_advisor_priority_and_thresholds_of_its_app_type() {
    let root = Scratch::new("pool-policy");
    let pool = root.join("pool");
    let policy = root.join("policy.toml");
    std::fs::write(
        &policy,
        "[defaults]\npriority = 1\nadvisor = \"none\"\n\
         [app.db]\npriority = 4\nadvisor = \"lru\"\n\
         thresholds = { ram = 0.4, nvme = 0.05, ssd = 0.01, hdd = 0.001 }\n",
    )
    .unwrap();
    // Runs until SIGTERM: two VMs join it one after the other.
    let manager = start_manager(&pool, "4M", &[]);
    let dir = root.join("vm");
    let out = pool_vm(&dir, &pool, "workload=zipf mem=6M iters=20000 seed=1", 0)
        .arg("--policy")
        .arg(&policy)
        .args(["--app-type", "db"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let m = read_metrics(&dir.join("metrics.json"));
    let t = &m["tiers"];
    assert_eq!(t["advisor"], "lru", "{t}");
    let p = &t["policy"];
    assert_eq!(p["app_type"], "db", "{p}");
    assert_eq!(p["priority"], 4, "{p}");
    assert_eq!(p["thresholds"]["nvme"], 0.05, "{p}");
    assert_eq!(p["thresholds"]["hdd"], 0.001, "{p}");
    // The flag wins over the file; without --app-type the [defaults] apply.
    let out = pool_vm(&dir, &pool, "workload=zipf mem=6M iters=20000 seed=1", 0)
        .arg("--policy")
        .arg(&policy)
        .args(["--advisor", "stride"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let t = read_metrics(&dir.join("metrics.json"))["tiers"].clone();
    assert_eq!(t["advisor"], "stride", "{t}");
    assert_eq!(t["policy"]["priority"], 1, "{t}");
    assert_eq!(t["policy"]["thresholds"]["nvme"], 0.2, "{t}");
    // SIGTERM the manager; its log shows the VM joined with the policy's priority.
    // SAFETY: kill on the pid of a child we started and have not waited for.
    unsafe { libc::kill(manager.id() as i32, libc::SIGTERM) };
    let log = manager.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&log.stderr);
    assert!(log.contains("joined (priority 4"), "{log}");
    // An unknown application type, and a bad file: one line naming it, status 2.
    let refused = |app: &str| {
        let out = pool_vm(&dir, &pool, "workload=scan mem=1M iters=10 seed=1", 0)
            .arg("--policy")
            .arg(&policy)
            .args(["--app-type", app])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        error_lines(&out)
    };
    assert_eq!(
        refused("web"),
        [format!(
            "tiervisor: {}: no application type \"web\"; the file has: db",
            policy.display()
        )]
    );
    std::fs::write(&policy, "[app.db]\npriority = 2000\n").unwrap();
    assert_eq!(
        refused("db"),
        [format!(
            "tiervisor: {}:2: app.db.priority: must be 1-1000, got 2000",
            policy.display()
        )]
    );
}

#[test]
fn vms_taking_turns_are_paused_and_staged_and_both_finish() {
    let root = Scratch::new("pool-turns");
    let pool = root.join("pool");
    // One VM runs at a time, for 100 ms; the pool holds one working set (6 MiB of
    // Zipf) but not two.
    let manager = start_manager(
        &pool,
        "8M",
        &[
            "--exit-when-empty",
            "--slice-ms",
            "100",
            "--run-slots",
            "1",
            "--prestaging",
        ],
    );
    let vms: Vec<Child> = ["a", "b"]
        .iter()
        .map(|name| {
            pool_vm(
                &root.join(name),
                &pool,
                "workload=zipf mem=6M iters=600000 seed=3",
                0,
            )
            .spawn()
            .unwrap()
        })
        .collect();
    let (mut staged, mut prestaged) = (0, 0);
    for (name, vm) in ["a", "b"].iter().zip(vms) {
        let out = vm.wait_with_output().unwrap();
        assert_guest_ok(&out, name);
        let t = read_metrics(&root.join(name).join("metrics.json"))["tiers"].clone();
        let p = &t["pool"];
        assert!(p["paused_ms"].as_f64().unwrap() > 0.0, "{name}: {p}");
        staged += u(p, "staged_pages");
        prestaged += u(p, "prestaged_pages");
    }
    let out = manager.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    // Turns went back and forth, and a turn that came back staged the VM's pages, whose
    // member said when they were in: the turn's clock started then.
    assert!(log.matches(", waits").count() >= 2, "{log}");
    assert!(log.contains("its turn: runs, pages asked back"), "{log}");
    assert!(log.contains(": pages staged in "), "{log}");
    assert!(!log.contains("staging not reported"), "{log}");
    // Each turn runs its slice, or twice its staging time when that is longer.
    for line in log.lines().filter(|l| l.contains(": pages staged in ")) {
        let number_after = |key: &str| -> u64 {
            let rest = &line[line.find(key).unwrap() + key.len()..];
            rest.split(' ').next().unwrap().parse().unwrap()
        };
        let (staging, turn) = (number_after("staged in "), number_after("its turn's "));
        assert!(turn >= 100 && turn + 1 >= 2 * staging, "{line}");
    }
    assert!(staged > 1000, "{staged} pages staged\n{log}");
    // The running VM's set (about 1,570 pages) leaves room in its 1,984: lent to the VM
    // next in line, which staged part of its set before its turn.
    assert!(log.contains("stages its pages before its turn"), "{log}");
    assert!(prestaged > 0, "{log}");
}
