//! Move requests from other threads (the predictor, a vCPU scheduler): pages and a
//! target tier, turned into policy actions here on the handler thread in batches, so
//! the resident-set bookkeeping stays single-threaded and a long request never holds
//! demand faults back for more than one batch.

use super::Engine;

/// Pages of pending requests handed to the policy per loop iteration.
pub(crate) const MOVE_REQUEST_BATCH: usize = 64;

impl Engine {
    /// Takes new requests off the channel and carries out one batch; returns whether
    /// there was anything to do.
    pub(super) fn serve_move_requests(&mut self) -> bool {
        if let Some(rx) = &self.move_requests {
            self.pending_moves.extend(rx.try_iter());
        }
        let Some(request) = self.pending_moves.front_mut() else {
            return false;
        };
        let n = request.pages.len().min(MOVE_REQUEST_BATCH);
        let batch: Vec<_> = request.pages.drain(..n).collect();
        let target = request.target;
        if request.pages.is_empty() {
            self.pending_moves.pop_front();
        }
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        if let Err(e) = self.policy.request_moves(&batch, target, &mut actions) {
            log::warn!("move request refused: {e}");
        }
        self.plug_stores();
        for a in actions.drain(..) {
            self.queue_action(a);
        }
        self.unplug_stores();
        self.actions = actions;
        true
    }
}
