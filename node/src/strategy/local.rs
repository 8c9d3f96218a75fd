//! `local`: every node learns alone, on its private data; the baseline that says what
//! sharing is worth.

use wdml_proto::StartRound;

use super::{Losses, Strategy};
use crate::Result;
use crate::audit::Sent;
use crate::round::{Node, Round, train};

pub(crate) struct Local;

impl Strategy for Local {
    /// It sends nothing: its neighbours hold nothing of it.
    fn neighbours_view(&self, _node: &Node, _start: &StartRound, _sent: &[f32]) -> Result<Option<(Sent, Vec<f32>)>> {
        Ok(None)
    }

    async fn learn(&self, node: &mut Node, round: &mut Round<'_>) -> Result<Losses> {
        // E local steps of cross-entropy on private batches.
        round.compute(|| train(node, None))
    }
}
