//! `local`: every node learns alone, on its private data; the baseline that says what
//! sharing is worth.

use super::{Losses, Strategy};
use crate::Result;
use crate::round::{Node, Round, train};

pub(crate) struct Local;

impl Strategy for Local {
    async fn learn(&self, node: &mut Node, round: &mut Round<'_>) -> Result<Losses> {
        // E local steps of cross-entropy on private batches.
        round.compute(|| train(node, None))
    }
}
