//! One strategy per algorithm (as in Flower): what a node does with its round, in the
//! order it happens, and what it sends. The round around it — the radio's listening
//! and the deadlines, the one send-and-collect path, evaluation and the report — is the
//! same for every algorithm and lives in [`crate::round`].
//!
//! Adding an algorithm (docs/architecture.md has the whole checklist): its value in
//! `proto/wdml.proto`, its name in `wdml_proto` (`named!`) and its message in
//! `wdml_proto::message::shape` (the wire's), a module here, and its arm in
//! `with_strategy!`; the compiler finds each one missing, and the plan, the scenario's
//! checks and `wdml compare`'s default list follow from them.

mod consensus;
mod dml;
mod dsfl;
mod fedavg;
mod fedmd;
mod local;

use wdml_proto::{Algorithm, Encoding, StartRound};

use crate::Result;
use crate::audit::Sent;
use crate::exchange::MessageShape;
use crate::model::ModelSpec;
use crate::plan::RunPlan;
use crate::round::{Node, Round};

/// The mean losses of a round's local steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Losses {
    pub ce: f64,
    pub kl: f64,
    pub total: f64,
}

/// What an algorithm does in a round.
pub(crate) trait Strategy {
    /// The FLOPs a node running `model` computes before it can send its message
    /// (its neighbours' emulated clocks need it, and it follows from the plan alone).
    fn flops_before_exchange(&self, _plan: &RunPlan, _model: &ModelSpec) -> u64 {
        0
    }

    /// The FLOPs it computes after the exchange, as far as the plan tells (a round
    /// with a deadline must leave them time).
    fn flops_after_exchange(&self, _plan: &RunPlan, _model: &ModelSpec) -> u64 {
        0
    }

    /// Whether every node must run one model, from one shared initialisation
    /// (parameter averaging needs both).
    fn same_model(&self) -> bool {
        false
    }

    /// Whether it trains on the public batch alone ([`crate::learn::Learn::public_step`]),
    /// which a model in the device's own program cannot.
    fn public_alone(&self) -> bool {
        false
    }

    /// What a neighbour that received `sent`, this round's message, holds of this node's
    /// predictions on the round's public batch (the privacy audit's record,
    /// [`crate::audit`]): the predictions themselves, or the logits of the parameters
    /// sent. Called after the exchange, before anything changes the model. `None`: the
    /// algorithm sends nothing. No default, so that a new algorithm says what it gives
    /// away.
    fn neighbours_view(&self, node: &Node, start: &StartRound, sent: &[f32]) -> Result<Option<(Sent, Vec<f32>)>>;

    /// The round's learning, step by step: model work through [`Round::compute`], the
    /// exchange through [`Round::exchange`]. Returns the local steps' losses.
    async fn learn(&self, node: &mut Node, round: &mut Round<'_>) -> Result<Losses>;
}

/// Binds `$s` to the strategy of `$algorithm` and evaluates `$body` (`None`: no
/// algorithm). The registration: the one place that knows which algorithms a node runs,
/// a `match` without a catch-all, so a new value of the proto's `Algorithm` does not
/// compile until it has its strategy here; the plan accepts exactly these ([`runs`]).
macro_rules! with_strategy {
    ($algorithm:expr, $s:ident => $body:expr) => {
        match $algorithm {
            Algorithm::Dml => {
                let $s = dml::Dml;
                Some($body)
            }
            Algorithm::Fedavg => {
                let $s = fedavg::Fedavg;
                Some($body)
            }
            Algorithm::Local => {
                let $s = local::Local;
                Some($body)
            }
            Algorithm::Fedmd => {
                let $s = fedmd::Fedmd;
                Some($body)
            }
            Algorithm::Dsfl => {
                let $s = dsfl::Dsfl;
                Some($body)
            }
            // Protobuf's zero value, what a peer sends when it names no algorithm.
            Algorithm::Unspecified => None,
        }
    };
}

/// Whether a node runs `algorithm` (the plan refuses any other).
pub fn runs(algorithm: Algorithm) -> bool {
    with_strategy!(algorithm, _s => ()).is_some()
}

/// The message `algorithm` sends each round (`None`: it exchanges nothing).
pub fn message(
    algorithm: Algorithm,
    public_batch: u32,
    encoding: Encoding,
    top_k: u32,
    classes: u32,
    parameters: usize,
) -> Option<MessageShape> {
    wdml_proto::message::shape(algorithm, public_batch, encoding, top_k, classes, parameters as u64)
}

/// Whether `algorithm` exchanges anything (its figures have a radio cost).
pub fn exchanges(algorithm: Algorithm) -> bool {
    message(algorithm, 1, Encoding::F32, 0, 2, 1).is_some()
}

/// Whether `algorithm` needs every node on one model from one initialisation.
pub fn same_model(algorithm: Algorithm) -> bool {
    with_strategy!(algorithm, s => s.same_model()).unwrap_or(false)
}

/// Whether `algorithm` trains on the public batch alone, which needs a model wdml node
/// builds (not one in a device's own program).
pub fn public_alone(algorithm: Algorithm) -> bool {
    with_strategy!(algorithm, s => s.public_alone()).unwrap_or(false)
}

/// The FLOPs a node running `model` computes before it sends under `algorithm`.
pub fn flops_before_exchange(algorithm: Algorithm, plan: &RunPlan, model: &ModelSpec) -> u64 {
    with_strategy!(algorithm, s => s.flops_before_exchange(plan, model)).unwrap_or(0)
}

/// The FLOPs a node running `model` computes after its exchange under `algorithm`.
pub fn flops_after_exchange(algorithm: Algorithm, plan: &RunPlan, model: &ModelSpec) -> u64 {
    with_strategy!(algorithm, s => s.flops_after_exchange(plan, model)).unwrap_or(0)
}

/// What the neighbours hold of a node's predictions after it sent `sent` under
/// `algorithm` ([`Strategy::neighbours_view`]).
pub(crate) fn neighbours_view(
    algorithm: Algorithm,
    node: &Node,
    start: &StartRound,
    sent: &[f32],
) -> Result<Option<(Sent, Vec<f32>)>> {
    with_strategy!(algorithm, s => s.neighbours_view(node, start, sent)).unwrap_or(Ok(None))
}

/// Runs `algorithm`'s learning for the round.
pub(crate) async fn learn(algorithm: Algorithm, node: &mut Node, round: &mut Round<'_>) -> Result<Losses> {
    // The plan admitted only algorithms that run (`runs`).
    with_strategy!(algorithm, s => s.learn(node, round).await)
        .unwrap_or_else(|| Err(crate::Error::config("run.algorithm", "no algorithm")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_algorithm_runs_and_no_algorithm_does_not() {
        assert!(Algorithm::ALL.iter().all(|&a| runs(a)));
        assert!(!runs(Algorithm::Unspecified));
    }

    #[test]
    fn each_algorithm_says_whether_it_exchanges_and_needs_one_model() {
        assert_eq!(
            Algorithm::ALL
                .iter()
                .map(|&a| (exchanges(a), same_model(a), public_alone(a)))
                .collect::<Vec<_>>(),
            [
                (true, false, false),
                (false, false, false),
                (true, true, false),
                (true, false, true),
                (true, false, true)
            ],
            "dml, local, fedavg, fedmd, dsfl"
        );
    }
}
