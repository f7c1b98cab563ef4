//! A learned advisor's own model, written out when the advisor ends: the per-VM model
//! that online learning fine-tuned from the base model, so that the VM's next run (or
//! replay) can start from it (`tiervisor run --save-model`, `--model`;
//! docs/predictor.md, "Per-VM models across runs").
//!
//! The advisor writes the file as it is dropped (the fault handler's thread ends, or a
//! replay is done) and leaves the outcome here for whoever asked, since nobody waits
//! on a drop for its result.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Where an advisor saves its model when it ends, and what came of it.
#[derive(Debug, Clone)]
pub struct ModelSaver {
    path: PathBuf,
    outcome: Arc<Mutex<Option<Result<SavedModel, String>>>>,
}

/// A model an advisor saved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SavedModel {
    pub path: String,
    /// Weights online learning installed during this run (0: the file holds the model
    /// the run started from).
    pub weight_updates: u64,
    /// The file's `trained_on` text.
    pub trained_on: String,
}

impl ModelSaver {
    /// A saver for `path`. The caller checks beforehand that the path can be written
    /// (`tiervisor run` refuses it before the guest runs), so that a long run does not
    /// end by failing to save.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            outcome: Arc::new(Mutex::new(None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the save did: `None` until the advisor has ended (or if no advisor that
    /// saves was given this saver).
    pub fn outcome(&self) -> Option<Result<SavedModel, String>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The saved model, or why there is none (an advisor that ended without saving
    /// included): what a caller reports once the advisor has ended.
    pub fn result(&self) -> Result<SavedModel, String> {
        self.outcome().unwrap_or_else(|| {
            Err(format!(
                "{}: the advisor ended without saving",
                self.path.display()
            ))
        })
    }

    #[cfg(feature = "gru")]
    pub(crate) fn record(&self, outcome: Result<SavedModel, String>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

/// The `trained_on` text of a model fine-tuned from one whose text is `base`: the
/// base's origin, then a running count of the runs and weight updates of fine-tuning,
/// so that a model saved run after run says how it came about in one line.
pub fn fine_tuned_description(base: &str, weight_updates: u64) -> String {
    const MARK: &str = "; fine-tuned online: ";
    let (origin, runs, updates) = match base.rsplit_once(MARK) {
        Some((origin, tail)) => {
            // "runs <runs>, weight updates <updates>"
            let mut numbers = tail
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap_or(0));
            (
                origin,
                numbers.next().unwrap_or(0),
                numbers.next().unwrap_or(0),
            )
        }
        None => (base, 0, 0),
    };
    format!(
        "{origin}{MARK}runs {}, weight updates {}",
        runs + 1,
        updates + weight_updates
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_counts_runs_and_updates() {
        let once = fine_tuned_description("make model: 9 traces (AUC 0.84)", 5);
        assert_eq!(
            once,
            "make model: 9 traces (AUC 0.84); fine-tuned online: runs 1, weight updates 5"
        );
        let twice = fine_tuned_description(&once, 7);
        assert_eq!(
            twice,
            "make model: 9 traces (AUC 0.84); fine-tuned online: runs 2, weight updates 12"
        );
    }
}
