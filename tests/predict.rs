//! Integration tests of the GRU predictor: `tiervisor train` on real trace files, its
//! error handling, `gru` in the replay simulator next to the baselines, `gru` in a live
//! VM (background learning), and pattern-change detection on spliced real traces.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use predictor::gru::synth::{generate, phases, repeated, Pattern};
use predictor::replay::{replay_all, replay_all_saving, ReplayConfig, TraceInput, Visibility};
use predictor::saved_model::ModelSaver;
use tiering::access::Access;
use tiering::trace::{Clock, TraceHeader, TraceWriter};

fn write_trace(path: &Path, accesses: &[Access]) {
    let header = TraceHeader {
        clock: Clock::Nanoseconds,
        description: "synthetic (tests/predict.rs)".into(),
        ..TraceHeader::default()
    };
    let mut w = TraceWriter::create(path, &header).unwrap();
    w.write_all(accesses).unwrap();
    w.finish().unwrap();
}

/// `tiervisor ARGS` run to completion (common's command: stdin closed).
fn tiervisor(args: &[&str]) -> std::process::Output {
    common::tiervisor()
        .args(args)
        .output()
        .expect("run tiervisor")
}

/// `tiervisor train --trace TRACE -o MODEL` with `extra` options.
fn train(trace: &Path, model: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        "--trace",
        trace.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tiervisor(&args)
}

/// A loop plus a skewed phase: structure a small model learns in a few steps.
fn training_trace() -> Vec<Access> {
    phases(
        &[
            (
                Pattern::Loop {
                    base: 0,
                    pages: 3000,
                },
                60_000,
            ),
            (
                Pattern::Hot {
                    base: 10_000,
                    pages: 4000,
                    hot: 400,
                },
                60_000,
            ),
        ],
        11,
    )
    .0
}

#[test]
fn train_writes_a_model_that_replay_uses() {
    let dir = common::Scratch::new("predict-train");
    let t = dir.join("train.tvt");
    write_trace(&t, &training_trace());
    // A small model (2 epochs, 8 hidden units) trained on that trace into `name`.
    let train_small = |name: &str, extra: &[&str]| {
        let m = dir.join(name);
        let mut args = vec![
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--max-samples",
            "3000",
            "--ram-fractions",
            "0.25",
        ];
        args.extend_from_slice(extra);
        let out = train(&t, &m, &args);
        (m, out)
    };
    let (model, out) = train_small("m.bpk", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "train failed: {stderr}");
    assert!(
        stderr.contains("epoch 2: train loss"),
        "per-epoch loss reported: {stderr}"
    );
    assert!(
        stderr.contains("val loss") && stderr.contains("AUC"),
        "validation reported: {stderr}"
    );
    assert!(stdout.contains("wrote"), "{stdout}");
    let (trained, meta) = predictor::gru::AccessModel::load_cpu(&model).expect("model loads");
    assert_eq!(meta.hidden, 8);
    assert!(meta.trained_on.contains("train.tvt"));

    // The same seed (the default), trace and options train the same weights, so
    // `make model` reproduces the shipped model; another seed does not.
    let weights_with = |extra: &[&str], name: &str| {
        let (m, out) = train_small(name, extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (m, _) = predictor::gru::AccessModel::load_cpu(&m).expect("model loads");
        m.export_weights().expect("weights")
    };
    let first = trained.export_weights().expect("weights");
    assert_eq!(
        weights_with(&[], "again.bpk"),
        first,
        "same seed, same weights"
    );
    assert_ne!(weights_with(&["--seed", "2"], "seed2.bpk"), first);

    // The model drives `gru` in the simulator next to the baselines, on a trace it
    // has not seen (another seed, another size).
    let input = unseen_loop();
    let cfg = ReplayConfig {
        ram_fraction: 0.25,
        visibility: Visibility::Full,
        ..ReplayConfig::default()
    };
    let names: Vec<String> = ["gru", "none"].iter().map(|s| s.to_string()).collect();
    let reports = replay_all(&input, &names, &cfg, Some(model)).expect("replay");
    let gru = reports.iter().find(|r| r.advisor == "gru").unwrap();
    let none = reports.iter().find(|r| r.advisor == "none").unwrap();
    assert!(gru.windows > 0 && gru.advisor_cpu_ns > 0);
    assert!(
        // A loop larger than RAM makes every access a fault for recency policies; the
        // model (random initial weights, 2 epochs) must at least not do worse.
        gru.demand_faults <= none.demand_faults,
        "gru {} faults vs none {}",
        gru.demand_faults,
        none.demand_faults
    );
}

#[test]
fn train_refuses_bad_input_with_one_line() {
    let dir = common::Scratch::new("predict-bad");
    let model = dir.join("m.bpk");
    let missing = train(Path::new("/nonexistent/x.tvt"), &model, &[]);
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.starts_with("tiervisor: train: /nonexistent/x.tvt"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let t = dir.join("t.tvt");
    write_trace(
        &t,
        &generate(
            Pattern::Loop {
                base: 0,
                pages: 500,
            },
            5_000,
            1,
            0,
        ),
    );
    let junk = dir.join("junk.bpk");
    std::fs::write(&junk, b"not a model").unwrap();
    let bad_init = train(&t, &model, &["--init", junk.to_str().unwrap()]);
    assert_eq!(bad_init.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad_init.stderr);
    assert!(err.contains("not a tiervisor GRU model"), "{err}");

    for (args, expect) in [
        (&["--block-pages", "24"][..], "--block-pages 24"),
        (&["--lr", "NaN"][..], "--lr NaN must be a positive number"),
        (&["--threshold", "2"][..], "--threshold 2 must be in [0, 1]"),
        (&["--max-samples", "0"][..], "must be positive"),
    ] {
        let out = train(&t, &model, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("tiervisor: train: ") && err.contains(expect),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }

    // An unwritable model path is refused before the traces are replayed, not after
    // the training it would throw away.
    for output in [dir.join("no-such-dir").join("m.bpk"), dir.to_path_buf()] {
        let out = train(&t, &output, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot write the model file"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(out.stdout.is_empty(), "nothing trained first");
    }
}

#[test]
fn replay_refuses_a_corrupt_model_clearly() {
    let dir = common::Scratch::new("predict-corrupt");
    let junk = dir.join("junk.bpk");
    std::fs::write(&junk, b"TVGRU\0\0\x01garbage").unwrap();
    let input = TraceInput::Memory {
        accesses: Arc::from(generate(
            Pattern::Loop {
                base: 0,
                pages: 100,
            },
            1000,
            1,
            0,
        )),
        clock: Clock::Nanoseconds,
    };
    let names = vec!["gru".to_string()];
    let err =
        replay_all(&input, &names, &ReplayConfig::default(), Some(junk)).expect_err("refused");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn live_gru_learns_in_the_background_while_the_guest_verifies() {
    let dir = common::Scratch::new("predict-live");
    let metrics = dir.join("metrics.json");
    // 8M of working memory at a RAM budget of 25% (2M), as tests/tiered.rs does.
    let out = common::tiervisor()
        .env("TIERVISOR_WORKDIR", &dir)
        .env("RUST_LOG", "info")
        .arg("run")
        .arg("--kernel")
        .arg(common::testguest())
        .args(["--memory", "64M", "--ram-budget", "2M", "--advisor", "gru"])
        .args(["--cmdline", "workload=zipf mem=8M iters=60000 seed=3"])
        .arg("--tiers")
        .arg(common::ram_and_nvme_tiers(&dir, "64M"))
        .arg("--metrics-out")
        .arg(&metrics)
        .output()
        .unwrap();
    common::assert_guest_ok(&out, "the run");
    let m = common::read_metrics(&metrics);
    let online = &m["tiers"]["advisor_online"];
    assert_eq!(online["online_mode"], "background", "{online}");
    let n = |v: &serde_json::Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {online}"))
    };
    assert!(n(&online["model_windows"]) > 0, "{online}");
    // Every model window steps at least the blocks touched in it, and the cell's
    // time is part of the advisor's windows.
    assert!(
        n(&online["stepped_blocks"]) >= n(&online["model_windows"]),
        "{online}"
    );
    let inference_ms = online["inference_ms"].as_f64().unwrap_or(0.0);
    let end_window_ms = m["tiers"]["advisor_calls"]
        .as_array()
        .and_then(|calls| calls.iter().find(|c| c["call"] == "end_window"))
        .and_then(|c| c["ms"].as_f64())
        .unwrap_or(0.0);
    assert!(
        inference_ms > 0.0 && inference_ms <= end_window_ms,
        "{inference_ms} ms of cell in {end_window_ms} ms of windows: {}",
        m["tiers"]
    );
    assert!(n(&online["background"]["steps"]) >= 1, "{online}");
    assert!(n(&online["weight_updates"]) >= 1, "{online}");
    assert!(n(&online["background"]["cpu_ns"]) > 0, "{online}");
    // The summary line is logged at info level.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gru: online learning (background)"),
        "{stderr}"
    );
}

/// A loop over 2,000 pages, 80,000 accesses, of a seed and size no model here was
/// trained on.
fn unseen_loop() -> TraceInput {
    let accesses = generate(
        Pattern::Loop {
            base: 50_000,
            pages: 2000,
        },
        80_000,
        5,
        0,
    );
    TraceInput::Memory {
        accesses: Arc::from(accesses),
        clock: Clock::Nanoseconds,
    }
}

/// A VM's own model: the replay's online learning changes the base model's weights, the
/// advisor writes them when it ends, and a second run starts from that file and saves
/// again, the file's text counting both runs.
#[test]
fn gru_saves_the_model_online_learning_made_and_the_next_run_starts_from_it() {
    let dir = common::Scratch::new("predict-save");
    let input = unseen_loop();
    let cfg = ReplayConfig {
        ram_fraction: 0.25,
        ..ReplayConfig::default()
    };
    let names = vec!["gru".to_string()];
    let base = predictor::gru::base_model_path();
    let (base_model, _) = predictor::gru::AccessModel::load_cpu(&base).expect("base model");
    let first = dir.join("vm.bpk");
    let saver = ModelSaver::new(first.clone());
    replay_all_saving(&input, &names, &cfg, None, Some(saver.clone())).expect("replay");
    let saved = saver.outcome().expect("saved at the end").expect("written");
    assert!(saved.weight_updates > 0, "{saved:?}");
    assert!(
        saved.trained_on.ends_with(&format!(
            "fine-tuned online: runs 1, weight updates {}",
            saved.weight_updates
        )),
        "{saved:?}"
    );
    let (tuned, meta) = predictor::gru::AccessModel::load_cpu(&first).expect("loads");
    assert_eq!(meta.trained_on, saved.trained_on);
    let weights = |m: &predictor::gru::AccessModel| m.export_weights().expect("weights");
    assert_ne!(
        format!("{:?}", weights(&tuned)),
        format!("{:?}", weights(&base_model)),
        "online learning changed the weights"
    );
    // The next run starts from the VM's model and saves over it.
    let saver = ModelSaver::new(first.clone());
    replay_all_saving(
        &input,
        &names,
        &cfg,
        Some(first.clone()),
        Some(saver.clone()),
    )
    .expect("replay from the saved model");
    let again = saver.outcome().expect("saved").expect("written");
    assert!(
        again
            .trained_on
            .contains("fine-tuned online: runs 2, weight updates "),
        "{again:?}"
    );
    // A file that cannot be written: the outcome says so (the CLI refuses such a path
    // before it runs; this is the advisor's own report).
    let saver = ModelSaver::new(dir.join("no-such-dir").join("vm.bpk"));
    replay_all_saving(&input, &names, &cfg, None, Some(saver.clone())).expect("replay");
    let e = saver.outcome().expect("tried").expect_err("not writable");
    assert!(e.contains("no-such-dir"), "{e}");
}

/// `run --save-model` writes the VM's model when the guest has finished, `--model` starts
/// the next run from it, and bad input is one line with status 2 before the guest runs.
#[test]
fn live_vm_saves_its_model_and_starts_its_next_run_from_it() {
    let dir = common::Scratch::new("predict-live-save");
    let tiers = common::ram_and_nvme_tiers(&dir, "64M");
    let model = dir.join("vm.bpk");
    let run = |extra: &[&str]| {
        common::tiered_run(&dir, &tiers, "workload=zipf mem=8M iters=60000 seed=3")
            .args(["--ram-budget", "2M"])
            .args(extra)
            .output()
            .unwrap()
    };
    let m = model.to_str().unwrap();
    let out = run(&["--advisor", "gru", "--save-model", m]);
    common::assert_guest_ok(&out, "the run");
    let metrics = common::read_metrics(&dir.join("metrics.json"));
    let saved = &metrics["tiers"]["saved_model"];
    assert_eq!(saved["path"], m, "{saved}");
    assert_eq!(
        saved["weight_updates"], metrics["tiers"]["advisor_online"]["weight_updates"],
        "{metrics}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("saved this VM's model to"));
    let (_, meta) = predictor::gru::AccessModel::load_cpu(&model).expect("a model file");
    assert!(
        meta.trained_on.contains("fine-tuned online: runs 1"),
        "{meta:?}"
    );
    let out = run(&["--advisor", "gru", "--model", m, "--save-model", m]);
    assert!(out.status.success(), "{}", common::describe(&out));
    let (_, meta) = predictor::gru::AccessModel::load_cpu(&model).expect("a model file");
    assert!(
        meta.trained_on.contains("fine-tuned online: runs 2"),
        "{meta:?}"
    );
    // Bad input: one line, status 2, and the model file is left as it was.
    let before = std::fs::read(&model).unwrap();
    let junk = dir.join("junk.bpk");
    std::fs::write(&junk, b"not a model").unwrap();
    for (args, says) in [
        (
            vec!["--advisor", "leap", "--save-model", m],
            "--save-model is for the gru advisor",
        ),
        (
            vec!["--advisor", "gru", "--save-model", "/nonexistent/vm.bpk"],
            "cannot write model /nonexistent/vm.bpk",
        ),
        (
            vec!["--advisor", "gru", "--model", junk.to_str().unwrap()],
            "is not a tiervisor GRU model",
        ),
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            common::describe(&out)
        );
        let lines = common::error_lines(&out);
        assert!(
            lines.len() == 1 && lines[0].contains(says),
            "{args:?}: {lines:?}"
        );
    }
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

/// Records a test-guest run's access trace (real faults and samples of a real VM).
fn record_guest_trace(dir: &Path, name: &str, cmdline: &str) -> PathBuf {
    let trace = dir.join(format!("{name}.tvt"));
    let out = common::tiervisor()
        .env("TIERVISOR_WORKDIR", dir)
        .arg("run")
        .arg("--kernel")
        .arg(common::testguest())
        .args([
            "--memory",
            "64M",
            "--ram-budget",
            "2M",
            "--cmdline",
            cmdline,
        ])
        .arg("--tiers")
        .arg(common::ram_and_nvme_tiers(dir, "64M"))
        .arg("--trace-out")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::describe(&out));
    trace
}

#[test]
fn anomaly_detector_finds_changes_in_a_small_real_splice() {
    use predictor::changepoints::{build_splice, evaluate, format_table, Part, SEGMENT_SHIFT};

    let dir = common::Scratch::new("predict-splice");
    // Two real recordings (the test guest in a tiered VM) with a scan storm between.
    // The storm follows zipf, the quieter recording: the pointer chase raises false
    // alarms at a rate that depends on the host's speed, and an alarm just before a
    // change silences the detector (cooldown) through it. CI once lost both changes
    // of zipf|chase|storm that way.
    let zipf = record_guest_trace(&dir, "zipf", "workload=zipf mem=8M iters=20000 seed=5");
    let chase = record_guest_trace(&dir, "chase", "workload=chase mem=8M iters=20000 seed=6");
    let whole = |p: &PathBuf| Part::Trace {
        path: p.clone(),
        skip: 0,
        take: tiering::trace::read_all(p).unwrap().1.len(),
    };
    let parts = [
        whole(&zipf),
        Part::ScanStorm {
            pages: 8192,
            touches: 16,
            gap: 50,
        },
        whole(&chase),
    ];
    let splice = build_splice("zipf|storm|chase", &parts).unwrap();
    // Segments live in disjoint page ranges and the clock runs on.
    assert!(splice
        .accesses
        .windows(2)
        .all(|w| w[0].time_ns <= w[1].time_ns));
    assert_eq!(splice.accesses.last().unwrap().page >> SEGMENT_SHIFT, 2);
    assert_eq!(splice.segment_pages[1], 8192);

    let detect = |opts: predictor::gru::GruOptions| {
        let r = evaluate(
            &splice,
            &predictor::replay::ReplayConfig::default(),
            &predictor::gru::base_model_path(),
            opts,
            16,
        )
        .unwrap();
        eprintln!("{}", format_table(std::slice::from_ref(&r)));
        eprintln!("changes {:?}\ndetections {:?}", r.changes, r.detections);
        r
    };
    let opts = predictor::gru::GruOptions::default();
    let r = detect(opts);
    assert_eq!(r.changes.len(), 2, "{:?}", r.changes);
    assert!(r.changes[0].window < r.changes[1].window, "{:?}", r.changes);
    assert!(r.changes[1].window < r.model_windows, "{:?}", r.changes);
    // The storm (zipf -> thousands of never-seen pages) must be found within 16
    // windows. Storm -> chase mostly is not: the chase's loss is lower than the
    // storm's, and the detector looks for rises only (gru/anomaly.rs).
    let storm = r.changes[0].window;
    let found = |r: &predictor::changepoints::SpliceResult| {
        r.detections
            .iter()
            .any(|d| d.window >= storm && d.window <= storm + 16)
    };
    // After an alarm the detector reports nothing for `cooldown` windows, by design
    // (one change, one alarm). When one of zipf's own loss spikes (more of them on a
    // loaded host) raises an alarm just before the storm, the storm falls in that
    // blind spot, as the change after the storm of the bench's sqlite-join|storm|gzip
    // does (docs/anomaly.md). The signal must still be there: without the cooldown the
    // storm is found.
    let cooldown = opts.anomaly.cooldown;
    let blinded = r
        .detections
        .iter()
        .any(|d| d.window < storm && d.window + cooldown >= storm);
    if blinded && !found(&r) {
        eprintln!("an alarm just before the storm hid it; again without the cooldown");
        let mut no_cooldown = opts;
        no_cooldown.anomaly.cooldown = 0;
        let r = detect(no_cooldown);
        assert!(
            found(&r),
            "the storm was not found within 16 windows even without the cooldown: changes {:?}, detections {:?}",
            r.changes,
            r.detections
        );
        return;
    }
    assert!(
        found(&r),
        "the storm was not found within 16 windows: changes {:?}, detections {:?}",
        r.changes,
        r.detections
    );
    assert!(r.score.recall >= 0.5, "{:?}", r.score);
}

/// A program's first touches: a start sequence every program shares (as deltas,
/// wherever it is mapped), then its own scattered pages; each page read 4 times.
fn program_with_shared_start(base: u64, own: u64) -> Vec<Access> {
    let start = (0..40u64).map(|i| base + (i * 7919 + i * i * 104_729) % 100_003);
    let mine = (0..30u64).map(|i| own + i * i * 13 + i * 3);
    repeated(start.chain(mine), 4, tiering::access::AccessOp::Read)
}

#[test]
fn train_prior_writes_a_prior_that_replay_follows_and_bad_input_is_one_line() {
    let dir = common::Scratch::new("predict-prior");
    let (a, b, c) = (dir.join("a.tvt"), dir.join("b.tvt"), dir.join("c.tvt"));
    write_trace(&a, &program_with_shared_start(1 << 20, 50_000));
    write_trace(&b, &program_with_shared_start(3 << 20, 90_000));
    write_trace(&c, &program_with_shared_start(5 << 20, 70_000));
    let prior = dir.join("prior.json");
    let out = common::tiervisor()
        .args(["train-prior", "--trace"])
        .args([&a, &b])
        .arg("-o")
        .arg(&prior)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("transitions ->"));

    let cold_faults = |prior_env: Option<&Path>| {
        let mut cmd = common::tiervisor();
        match prior_env {
            Some(p) => cmd.env("TIERVISOR_GRU_PRIOR", p),
            None => cmd.env("TIERVISOR_GRU_FIRST_TOUCH_PRIOR", "0"),
        };
        let out = cmd
            .args([
                "replay",
                "--advisor",
                "gru",
                "--json",
                "--ram-fraction",
                "0.5",
            ])
            .arg("--trace")
            .arg(&c)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::describe(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["cold_faults"].as_u64().unwrap()
    };
    let (without, with) = (cold_faults(None), cold_faults(Some(&prior)));
    assert_eq!(without, 70);
    // 37 of the start's 40 first touches follow two deltas the prior knows; 28 were
    // zero-filled ahead when this was written (RAM is 35 pages here).
    assert!(
        with + 25 <= without,
        "the shared start is zero-filled ahead: {with} cold faults"
    );

    // A prior that is not there: one line naming it, exit 2, nothing on stdout.
    let absent = dir.join("absent.json");
    let out = common::tiervisor()
        .env("TIERVISOR_GRU_PRIOR", &absent)
        .args(["replay", "--advisor", "gru", "--trace"])
        .arg(&c)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::describe(&out));
    let err = common::error_lines(&out);
    assert_eq!(err.len(), 1, "{}", common::describe(&out));
    assert!(err[0].contains("absent.json"), "{}", err[0]);
    assert!(out.stdout.is_empty());

    // Bad options are refused before any trace is read.
    let out = common::tiervisor()
        .args(["train-prior", "--min-share", "0", "--trace"])
        .arg(&a)
        .arg("-o")
        .arg(&prior)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        common::error_lines(&out).len(),
        1,
        "{}",
        common::describe(&out)
    );
}
