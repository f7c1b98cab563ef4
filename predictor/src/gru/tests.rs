//! Unit tests of the GRU predictor. Models are tiny so the tests take seconds in release.

use std::path::PathBuf;

use super::anomaly::{score_detections, AnomalyConfig};
use super::features::{FeatureConfig, FeatureExtractor, Sample, WindowBatch, NUM_FEATURES};
use super::model::{AccessModel, ModelFileError, ModelMeta};
use super::online::{OnlineConfig, OnlineMode};
use super::synth::{generate, mini_replay, phases, repeated, Pattern};
use super::train::{evaluate, samples_from_accesses, TrainConfig, Trainer};
use super::{GruAdvisor, GruOptions};

mod readahead;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gru-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn features_of_a_sequential_scan() {
    let cfg = FeatureConfig::default();
    let mut fx = FeatureExtractor::new(cfg);
    let mut batch = WindowBatch::default();
    let mut samples: Vec<Sample> = Vec::new();
    // Window 0 touches all 16 pages of block 0 once, in order.
    for a in generate(Pattern::Loop { base: 0, pages: 16 }, 16, 1, 0) {
        fx.on_access(&a);
    }
    fx.end_window(&mut batch, &mut samples, 0);
    let i = batch
        .blocks
        .iter()
        .position(|&b| b == 0)
        .expect("touched block stepped");
    let f = batch.features[i];
    assert_eq!(f.len(), NUM_FEATURES);
    assert!((f[0] - (17f32).ln() / 10.0).abs() < 1e-6, "log count");
    assert_eq!(f[1], 1.0, "touched flag");
    assert_eq!(f[8], 1.0, "all pages of the block touched");
    assert!(f[10] > 0.9, "sequential fraction {}", f[10]);
    assert!(
        (f[3] + f[4] + f[5] - 1.0).abs() < 1e-6,
        "op fractions sum to one"
    );
    // The next block is a stepped candidate with no touches and a touched neighbour.
    let j = batch
        .blocks
        .iter()
        .position(|&b| b == 1)
        .expect("neighbour stepped");
    assert_eq!(batch.features[j][1], 0.0);
    assert_eq!(batch.features[j][12], 1.0, "previous block touched");
}

#[test]
fn labels_say_whether_the_block_comes_back_within_the_horizon() {
    // Block 0 is touched every other window: each label must be 1 with horizon 2.
    let cfg = FeatureConfig {
        horizon: 2,
        seq_len: 4,
        ..FeatureConfig::default()
    };
    let mut fx = FeatureExtractor::new(cfg);
    let (mut batch, mut samples) = (WindowBatch::default(), Vec::new());
    for w in 0..20u64 {
        let page = if w % 2 == 0 { 3 } else { 1000 };
        for a in generate(
            Pattern::Loop {
                base: page,
                pages: 1,
            },
            4,
            w,
            w * 1000,
        ) {
            fx.on_access(&a);
        }
        fx.end_window(&mut batch, &mut samples, 100);
    }
    let zero: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.features
                .iter()
                .any(|f| f[1] == 1.0 && f[9] > 0.0 && f[9] < 0.1)
        })
        .collect();
    assert!(!zero.is_empty(), "samples of the periodic block");
    for s in &zero {
        assert_eq!(s.labels.len(), 4);
        assert!(s.labels.iter().all(|&l| l == 1.0), "{:?}", s.labels);
    }
}

#[test]
fn a_sample_holds_one_block_s_features_of_consecutive_windows() {
    // Blocks come and go (random pages over 64 blocks, some windows skipped by each
    // block), so steps have gaps; every sample must be the features the extractor
    // produced for one block in the `seq_len` windows starting `need - 1` before the
    // window that emitted it.
    let cfg = FeatureConfig {
        seq_len: 4,
        horizon: 2,
        idle_windows: 2,
        ..FeatureConfig::default()
    };
    let need = (cfg.seq_len + cfg.horizon) as u64;
    let mut fx = FeatureExtractor::new(cfg);
    let (mut batch, mut samples) = (WindowBatch::default(), Vec::new());
    let mut produced = std::collections::HashMap::new();
    let mut emitted = Vec::new();
    for w in 0..60u64 {
        let pattern = Pattern::Random {
            base: (w % 3) * 256,
            pages: 1024,
        };
        for a in generate(pattern, 40, w + 1, w * 1000) {
            fx.on_access(&a);
        }
        let before = samples.len();
        fx.end_window(&mut batch, &mut samples, 8);
        for (&b, f) in batch.blocks.iter().zip(&batch.features) {
            produced.insert((w, b), *f);
        }
        emitted.extend((before..samples.len()).map(|i| (w, i)));
    }
    assert!(emitted.len() > 20, "{} samples", emitted.len());
    let blocks: std::collections::BTreeSet<u64> = produced.keys().map(|&(_, b)| b).collect();
    for (w, i) in emitted {
        let s = &samples[i];
        let first = w + 1 - need;
        let matches = blocks.iter().any(|&b| {
            (0..cfg.seq_len as u64)
                .all(|j| produced.get(&(first + j, b)) == Some(&s.features[j as usize]))
        });
        assert!(matches, "sample {i} of window {w} is no block's history");
    }
}

fn test_cfg() -> FeatureConfig {
    let mut cfg = FeatureConfig::default();
    if let Some(h) = std::env::var("GRU_H").ok().and_then(|h| h.parse().ok()) {
        cfg.horizon = h;
    }
    cfg
}

/// Online learning off: the advisor's decisions do not depend on training.
fn no_online_learning() -> OnlineConfig {
    OnlineConfig {
        mode: OnlineMode::Off,
        ..OnlineConfig::default()
    }
}

fn tiny_model() -> (AccessModel, ModelMeta) {
    let cfg = test_cfg();
    // Seeded, so these tests run the same every time (with unseeded weights the
    // anomaly test failed once in a fresh clone; seeds 1-40 all pass it).
    (
        AccessModel::new_cpu_seeded(8, 1),
        ModelMeta::new(&cfg, 8, 256),
    )
}

#[test]
fn model_file_round_trip_and_errors() {
    let (model, meta) = tiny_model();
    let path = tmp("round.bpk");
    model.save(&meta, &path).unwrap();
    let (loaded, meta2) = AccessModel::load_cpu(&path).unwrap();
    assert_eq!(meta, meta2);
    let s = samples_for(Pattern::Loop { base: 0, pages: 64 }, 20_000);
    let a = evaluate(&model, &s[..64], 0.5);
    let b = evaluate(&loaded, &s[..64], 0.5);
    assert!(
        (a.loss - b.loss).abs() < 1e-6,
        "same weights give the same loss"
    );

    let bytes = std::fs::read(&path).unwrap();
    // Truncated weights.
    let cut = tmp("cut.bpk");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    assert!(matches!(
        AccessModel::load_cpu(&cut),
        Err(ModelFileError::Corrupt { .. })
    ));
    // Another format version in the header.
    let mut m2 = meta.clone();
    m2.format_version = 99;
    let v = tmp("version.bpk");
    model.save(&m2, &v).unwrap();
    let err = AccessModel::load_cpu(&v).expect_err("version mismatch refused");
    assert!(
        matches!(err, ModelFileError::Version { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("retrain"), "{err}");
    // Another feature set.
    let mut m3 = meta.clone();
    m3.feature_set = "other".into();
    let f = tmp("features.bpk");
    model.save(&m3, &f).unwrap();
    assert!(matches!(
        AccessModel::load_cpu(&f),
        Err(ModelFileError::FeatureSet { .. })
    ));
    // Not a model at all.
    let junk = tmp("junk.bpk");
    std::fs::write(&junk, b"hello world, not a model").unwrap();
    assert!(matches!(
        AccessModel::load_cpu(&junk),
        Err(ModelFileError::NotAModel { .. })
    ));
    // Missing file.
    assert!(matches!(
        AccessModel::load_cpu(&tmp("missing.bpk")),
        Err(ModelFileError::Io { .. })
    ));
    // The only user of the scratch directory: leave nothing in /tmp.
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

fn samples_for(p: Pattern, n: usize) -> Vec<Sample> {
    let mut s = Vec::new();
    samples_from_accesses(generate(p, n, 7, 0), test_cfg(), 256, 32, &mut s);
    s
}

#[test]
fn training_reduces_loss_on_a_learnable_pattern() {
    // A loop over 48 blocks at 256 accesses per window: each block comes back every
    // 3 windows, a pattern recency and neighbour features make learnable.
    let samples = samples_for(
        Pattern::Loop {
            base: 0,
            pages: 768,
        },
        80_000,
    );
    assert!(samples.len() > 200, "{} samples", samples.len());
    let (model, _) = tiny_model();
    let before = evaluate(&model, &samples, 0.5);
    let mut t = Trainer::new(
        &model,
        TrainConfig {
            lr: 1e-2,
            batch: 64,
        },
    );
    for k in 0..60 {
        let batch: Vec<&Sample> = samples
            .iter()
            .cycle()
            .skip(k * 64 % samples.len())
            .take(64)
            .collect();
        t.step(&batch, 1.0);
    }
    let after = evaluate(&t.inference_model(), &samples, 0.5);
    assert!(
        after.loss < before.loss * 0.8,
        "loss {} -> {}",
        before.loss,
        after.loss
    );
    assert!(after.auc > 0.8, "AUC {}", after.auc);
}

/// A tiny model trained offline for a few seconds on `p`.
fn pretrained(p: Pattern) -> (AccessModel, ModelMeta) {
    let samples = samples_for(p, 120_000);
    let (model, meta) = tiny_model();
    let mut t = Trainer::new(
        &model,
        TrainConfig {
            lr: 1e-2,
            batch: 128,
        },
    );
    for k in 0..80 {
        let batch: Vec<&Sample> = samples
            .iter()
            .cycle()
            .skip(k * 128 % samples.len())
            .take(128)
            .collect();
        t.step(&batch, 1.0);
    }
    (t.inference_model(), meta)
}

fn inline_opts() -> GruOptions {
    GruOptions {
        online: OnlineConfig {
            mode: OnlineMode::Inline,
            train_every: 4,
            ..OnlineConfig::default()
        },
        prefetch_threshold: 0.8,
        // The model-driven plan (off by default: it lost on the evaluation traces).
        window_prefetch: true,
        successor_depth: 0,
        trend_candidates: false,
        min_window_events: 1,
        // The loop's next window is a quarter of RAM: let the plan cover it.
        prefetch_ram_divisor: 1,
        // These tests learn within a few hundred windows: more samples per window.
        samples_per_window: 32,
        ..GruOptions::default()
    }
}

/// `trace` through the replay simulator and PagingPolicy (what `tiervisor replay`
/// and the VMM use) with `ram_pages` of RAM and the default (sampled) visibility.
fn replay_in_sim(
    trace: &[tiering::access::Access],
    advisor: Box<dyn tiering::advisor::Advisor>,
    ram_pages: usize,
) -> crate::replay::AdvisorReport {
    replay_in_sim_seeing(
        trace,
        advisor,
        ram_pages,
        crate::replay::ReplayConfig::default(),
    )
}

/// [`replay_in_sim`] with another replay configuration (visibility).
fn replay_in_sim_seeing(
    trace: &[tiering::access::Access],
    advisor: Box<dyn tiering::advisor::Advisor>,
    ram_pages: usize,
    cfg: crate::replay::ReplayConfig,
) -> crate::replay::AdvisorReport {
    use crate::replay::registry::ReplayContext;
    use crate::replay::{replay_advisor, TraceInput};
    let distinct: std::collections::HashSet<u64> = trace.iter().map(|a| a.page).collect();
    let input = TraceInput::Memory {
        accesses: trace.to_vec().into(),
        clock: tiering::trace::Clock::Nanoseconds,
    };
    let ctx = ReplayContext {
        ram_budget_pages: ram_pages,
        distinct_pages: distinct.len() as u64,
        ..ReplayContext::default()
    };
    let name = advisor.name().to_string();
    replay_advisor(
        &input,
        advisor,
        &name,
        &cfg,
        &ctx,
        tiering::trace::Clock::Nanoseconds,
        4096,
    )
    .unwrap()
}

#[test]
fn first_touch_runs_are_prefetched_when_enabled() {
    // A heap growing one page at a time, each new page used a few times: with the
    // first-touch source on, most first touches are prefetched zero-fills.
    let trace = repeated(1000..3000, 4, tiering::access::AccessOp::Write);
    let (model, meta) = tiny_model();
    let run = |first_touch_run| {
        let opts = GruOptions {
            first_touch_run,
            // The first-touch source alone: readahead (on by default since session
            // 15) follows this growing heap as well.
            readahead_min_window: 0,
            online: no_online_learning(),
            ..GruOptions::default()
        };
        let adv = GruAdvisor::new(model.clone(), meta.clone(), opts);
        replay_in_sim(&trace, Box::new(adv), 256)
    };
    let (off, on) = (run(0), run(2));
    // Measured: 670 cold faults against 2,000 (session 5: the trend source is off by
    // default); with a run of 2 at most two of every three first touches can be
    // prefetched. The region's record starts from shadow outcomes.
    assert!(
        on.cold_faults * 3 < off.cold_faults * 2,
        "off {off:?} on {on:?}"
    );
    assert!(on.accuracy >= 0.9, "on {on:?}");
}

#[test]
fn shadow_outcomes_keep_random_access_from_wasting_prefetches() {
    // Uniform random faults over 4x RAM: a successor link almost never repeats.
    // Session 4's gate explored untried links (and one in 8 anyway) and so prefetched
    // pages that were not used; with shadow outcomes a link must be seen used before it
    // is followed, and here almost none is.
    let trace = generate(
        Pattern::Random {
            base: 4096,
            pages: 2048,
        },
        40_000,
        11,
        0,
    );
    let (model, meta) = tiny_model();
    let run = |shadow_horizon: f32, explore: bool| {
        let mut opts = GruOptions {
            shadow_horizon,
            first_touch_run: 0,
            online: no_online_learning(),
            ..GruOptions::default()
        };
        if explore {
            // Session 4's gate.
            opts.source_threshold = 0.6;
            opts.min_uses = 0;
        }
        let adv = GruAdvisor::new(model.clone(), meta.clone(), opts);
        replay_in_sim(&trace, Box::new(adv), 512)
    };
    let (shadows, explored) = (run(0.25, false), run(0.0, true));
    // Measured (session 6, the two-fault link context on in both): 1,696 prefetches,
    // 654 used, against none (session 5, without it: 2,105 and 321 against 181 and 26).
    assert!(
        explored.prefetch_issued > 4 * shadows.prefetch_issued.max(25),
        "explored {explored:?} shadows {shadows:?}"
    );
    let wasted = |r: &crate::replay::AdvisorReport| r.prefetch_issued - r.prefetch_useful;
    assert!(
        wasted(&shadows) * 4 < wasted(&explored),
        "explored {explored:?} shadows {shadows:?}"
    );
}

#[test]
fn a_successor_link_is_followed_only_where_the_fault_before_led_there_too() {
    use tiering::access::{Access, AccessOp, AccessSource, PageKind};
    use tiering::advisor::Advisor;
    // Pages X -> A -> B fault twice: the link A -> B earns its record from a shadow
    // outcome. Then A faults after Y: the one-fault link says B, but the path through
    // A is new, so with the two-fault context on B is not read; after X it is.
    const X: u64 = 100;
    const Y: u64 = 200;
    const A: u64 = 300;
    const B: u64 = 400;
    let (model, meta) = tiny_model();
    let run = |link_context: bool| {
        let opts = GruOptions {
            link_context,
            first_touch_run: 0,
            online: no_online_learning(),
            ..GruOptions::default()
        };
        let mut adv = GruAdvisor::new(model.clone(), meta.clone(), opts);
        let mut t = 0;
        // Touches `before`, `page` and `B`: a page prefetched earlier in the round is
        // a used prefetch, any other a demand fault followed by the advisor's
        // prefetches. Returns the pages prefetched; then evicts everything.
        let mut round = |adv: &mut GruAdvisor, before: u64, page: u64| {
            let mut got: Vec<u64> = Vec::new();
            for p in [before, page, B] {
                if got.contains(&p) {
                    adv.on_prefetch_outcome(p, true);
                    continue;
                }
                t += 1000;
                let access = Access {
                    time_ns: t,
                    page: p,
                    vcpu: 0,
                    op: AccessOp::Read,
                    kind: PageKind::Data,
                    source: AccessSource::Full,
                };
                adv.on_access(&access, false);
                adv.on_fill(p, false);
                let mut out = Vec::new();
                adv.prefetch(t, 8, &mut out);
                for &q in &out {
                    adv.on_fill(q, true);
                }
                got.extend(out);
            }
            for p in [before, page, B] {
                adv.on_evict(p);
            }
            got
        };
        round(&mut adv, X, A);
        round(&mut adv, X, A);
        let after_y = round(&mut adv, Y, A);
        let after_x = round(&mut adv, X, A);
        (after_y, after_x)
    };
    let (after_y, after_x) = run(true);
    assert!(!after_y.contains(&B), "a new path through A: {after_y:?}");
    assert!(
        after_x.contains(&B),
        "the path X -> A -> B repeats: {after_x:?}"
    );
    let (after_y, _) = run(false);
    assert!(
        after_y.contains(&B),
        "one-fault links follow A -> B: {after_y:?}"
    );
}

#[test]
fn advisor_learns_a_repeating_pattern_and_beats_clock() {
    // A loop over 1,024 pages with RAM for 512, replayed through the same simulator and
    // PagingPolicy as `tiervisor replay`: CLOCK faults on every access; the GRU advisor
    // follows the fault stream's successor chain ahead of the loop. Base model
    // pre-trained on a loop of another size, online learning inline.
    let trace = generate(
        Pattern::Loop {
            base: 4096,
            pages: 1024,
        },
        60_000,
        3,
        0,
    );
    let (model, meta) = pretrained(Pattern::Loop {
        base: 1 << 20,
        pages: 1536,
    });
    let opts = GruOptions {
        online: OnlineConfig {
            mode: OnlineMode::Inline,
            train_every: 4,
            ..OnlineConfig::default()
        },
        ..GruOptions::default()
    };
    let full = crate::replay::ReplayConfig {
        visibility: crate::replay::Visibility::Full,
        ..Default::default()
    };
    let g = replay_in_sim_seeing(
        &trace,
        Box::new(GruAdvisor::new(model.clone(), meta.clone(), opts)),
        512,
        full,
    );
    let c = replay_in_sim(&trace, Box::new(crate::baselines::ClockAdvisor::new()), 512);
    // With every access seen, the chain runs ahead of the loop: 8,374 faults against
    // CLOCK's 60,000, accuracy 1.00.
    assert!(
        g.demand_faults * 4 < c.demand_faults,
        "gru {g:?} vs clock {c:?}"
    );
    assert!(g.accuracy >= 0.9, "accuracy {} {g:?}", g.accuracy);
    // As a live VM sees it, gru learns that a prefetched page was used only when it is
    // written (three accesses in four here are reads) or sampled, and counts the rest
    // as wasted when they leave RAM, so it stops following most links: 35,248 faults
    // (docs/predictor-experiments.md, "What the advisor hears of its prefetches"). It still beats
    // CLOCK, and what it prefetches is used.
    let g = replay_in_sim(
        &trace,
        Box::new(GruAdvisor::new(model.clone(), meta.clone(), opts)),
        512,
    );
    assert!(
        g.demand_faults < c.demand_faults,
        "gru {g:?} vs clock {c:?}"
    );
    assert!(g.accuracy >= 0.9, "accuracy {} {g:?}", g.accuracy);
    // With chain inference, the fault after each chain, one link past its end, tells
    // gru the chain was walked: 8,994 faults.
    let inferring = GruOptions {
        chain_inference: true,
        ..opts
    };
    let g = replay_in_sim(
        &trace,
        Box::new(GruAdvisor::new(model, meta, inferring)),
        512,
    );
    assert!(
        g.demand_faults * 4 < c.demand_faults,
        "gru {g:?} vs clock {c:?}"
    );
    assert!(g.accuracy >= 0.9, "accuracy {} {g:?}", g.accuracy);
}

#[test]
fn background_learning_never_blocks_and_delivers_weights() {
    let trace = generate(
        Pattern::Loop {
            base: 0,
            pages: 1024,
        },
        40_000,
        3,
        0,
    );
    let (model, meta) = tiny_model();
    let mut opts = inline_opts();
    opts.online.mode = OnlineMode::Background;
    opts.online.cpu_budget = 0.5;
    let mut gru = GruAdvisor::new(model, meta, opts);
    mini_replay(&mut gru, &trace, 512, 256, 512);
    assert_eq!(
        gru.learner().inline_steps,
        0,
        "no training in the caller's thread"
    );
}

#[test]
fn anomaly_detection_finds_an_injected_change() {
    // Two skewed-random phases over disjoint regions, then a scan storm.
    let (trace, changes) = phases(
        &[
            (
                Pattern::Hot {
                    base: 0,
                    pages: 4096,
                    hot: 256,
                },
                60_000,
            ),
            (
                Pattern::Hot {
                    base: 100_000,
                    pages: 4096,
                    hot: 256,
                },
                60_000,
            ),
            (
                Pattern::Loop {
                    base: 300_000,
                    pages: 50_000,
                },
                40_000,
            ),
        ],
        5,
    );
    let (model, meta) = tiny_model();
    let mut opts = inline_opts();
    opts.anomaly = AnomalyConfig::default();
    let mut gru = GruAdvisor::new(model, meta, opts);
    gru.detector_mut().keep_trace = true;
    mini_replay(&mut gru, &trace, 2048, 256, 256);
    if std::env::var_os("GRU_DEBUG").is_some() {
        for (w, (l, d)) in gru.detector_mut().trace.iter().enumerate() {
            eprintln!("w {w} loss {l:.3} drift {d:.3}");
        }
    }
    let change_windows: Vec<u64> = changes.iter().map(|&i| i as u64 / 256).collect();
    let detected: Vec<u64> = gru.anomalies().iter().map(|e| e.window).collect();
    let score = score_detections(&change_windows, &detected, 8);
    assert_eq!(
        score.recall, 1.0,
        "changes {change_windows:?} detected {detected:?}"
    );
    assert!(
        score.precision >= 0.5,
        "changes {change_windows:?} detected {detected:?}"
    );
}

#[test]
fn detection_scoring() {
    let s = score_detections(&[100, 200], &[103, 150, 205, 206], 10);
    assert_eq!(s.recall, 1.0);
    assert_eq!(s.precision, 0.75);
    assert_eq!(s.mean_delay, 4.0);
}

#[test]
fn the_first_touch_prior_zero_fills_a_start_other_programs_shared() {
    use super::prior::{FirstTouchPrior, PriorConfig};
    use std::sync::Arc;
    // A start sequence of scattered first touches (no runs), the same deltas in every
    // program wherever it starts, then each program's own pages.
    let start: Vec<u64> = (0..40u64)
        .map(|i| (i * 7919 + i * i * 104_729) % 100_003)
        .collect();
    let program = |base: u64, own: u64| -> Vec<u64> {
        let mut v: Vec<u64> = start.iter().map(|p| base + p).collect();
        // Not a run nor a stride, which other sources follow.
        v.extend((0..30).map(|i| own + i * i * 13 + i * 3));
        v
    };
    let prior = FirstTouchPrior::learn(
        &[program(1 << 20, 50_000), program(3 << 20, 90_000)],
        PriorConfig::default(),
    );
    assert!(prior.len() >= 30, "{} transitions", prior.len());
    // A third program, elsewhere: each page touched a few times.
    let trace = repeated(program(5 << 20, 70_000), 4, tiering::access::AccessOp::Read);
    let (model, meta) = tiny_model();
    let prior = Arc::new(prior);
    let run = |on: bool| {
        let opts = GruOptions {
            first_touch_prior: on,
            online: no_online_learning(),
            ..GruOptions::default()
        };
        let mut adv = GruAdvisor::new(model.clone(), meta.clone(), opts);
        adv.set_first_touch_prior(prior.clone());
        replay_in_sim(&trace, Box::new(adv), 256)
    };
    let (off, on) = (run(false), run(true));
    assert_eq!(
        off.cold_faults, 70,
        "every page's first touch faults: {off:?}"
    );
    // The first three first touches give the prior its context; most of the start's
    // other 37 are zero-filled ahead, and nothing of the program's own pages is.
    assert!(on.cold_faults <= 70 - 30, "off {off:?} on {on:?}");
    assert!(on.accuracy >= 0.95, "on {on:?}");
}

#[test]
fn a_late_prefetch_leaves_its_page_on_the_inactive_list() {
    use tiering::access::{Access, AccessOp, AccessSource, PageKind};
    use tiering::advisor::Advisor;
    // Eight prefetched pages, the first touched while still being read: the guest's
    // fault on a page in flight. Counted as a promotion, it leaves RAM last; left
    // inactive, first (the oldest fill), as a demand-faulted page would.
    let first_victim = |activate| {
        let (model, meta) = tiny_model();
        let opts = GruOptions {
            activate_on_late_prefetch: activate,
            online: no_online_learning(),
            ..GruOptions::default()
        };
        let mut adv = GruAdvisor::new(model, meta, opts);
        for page in 0..8 {
            adv.on_fill(page, true);
        }
        let late = Access {
            time_ns: 1,
            page: 0,
            vcpu: 0,
            op: AccessOp::Read,
            kind: PageKind::Data,
            source: AccessSource::MissingFault,
        };
        adv.on_access(&late, true);
        let mut out = Vec::new();
        adv.victims(1, &mut out);
        out
    };
    assert_eq!(first_victim(false), [0]);
    assert_eq!(first_victim(true), [1]);
}
