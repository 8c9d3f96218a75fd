//! `fedavg`: decentralised FedAvg by gossip (McMahan et al. 2017; Xiao & Boyd 2004).
//! Each round a node takes E local steps of cross-entropy, sends all its parameters to
//! its neighbours, and averages what arrived with Metropolis–Hastings weights. Every
//! node starts from one shared model, as FedAvg assumes.

use wdml_proto::StartRound;

use super::{Losses, Strategy};
use crate::audit::Sent;
use crate::exchange::Collected;
use crate::learn::Learner;
use crate::model::ModelSpec;
use crate::plan::RunPlan;
use crate::round::{Neighbourhood, Node, Round, train};
use crate::{Error, Result};

pub(crate) struct Fedavg;

impl Strategy for Fedavg {
    /// All parameters as one row of f32: averaging quantised parameters would drift,
    /// so they travel exactly, whatever the run's encoding.
    /// Averaging independently initialised networks destroys them.
    fn same_model(&self) -> bool {
        true
    }

    /// Its local steps.
    fn flops_before_exchange(&self, plan: &RunPlan, model: &ModelSpec) -> u64 {
        u64::from(plan.local_steps) * plan.batch_size as u64 * model.flops(&plan.spec).train()
    }

    /// A neighbour holding the parameters can run the model on any input: the audit
    /// records its logits on the round's public batch, as a prediction-sharing node
    /// would have sent them. The model still holds the parameters sent (the average
    /// replaces them only after this), and the forward pass is not counted as the
    /// device's work.
    fn neighbours_view(&self, node: &Node, start: &StartRound, _sent: &[f32]) -> Result<Option<(Sent, Vec<f32>)>> {
        let public = node.shard.public_batch(start.public_seed, node.plan.public_batch)?;
        Ok(Some((Sent::Parameters, candle(node)?.logits_vec_uncounted(&public)?)))
    }

    async fn learn(&self, node: &mut Node, round: &mut Round<'_>) -> Result<Losses> {
        // 1. E local steps of cross-entropy on private batches.
        let (losses, parameters) = round.compute(|| -> Result<_> {
            let losses = train(node, None)?;
            Ok((losses, candle(node)?.parameters_flat()?))
        })?;
        // 2. Swap parameters with the neighbours.
        let collected = round.exchange(node, &parameters).await?;
        // 3. Average with the neighbours whose parameters arrived.
        let staleness = node.plan.staleness;
        let averaged = gossip_average(&parameters, round.start, &round.neighbourhood, &collected, |age| {
            staleness.weight(age)
        });
        candle_mut(node)?.set_parameters_flat(&averaged)?;
        Ok(losses)
    }
}

/// Averaging needs the parameters: only a Candle model has them (an external model is
/// refused with fedavg at the start, so this is a guard, not a path).
fn candle(node: &Node) -> Result<&Learner> {
    node.learner.candle().ok_or_else(external)
}

fn candle_mut(node: &mut Node) -> Result<&mut Learner> {
    node.learner.candle_mut().ok_or_else(external)
}

fn external() -> Error {
    Error::config(
        "run.algorithm",
        "fedavg averages parameters, which an external model does not share",
    )
}

/// Metropolis–Hastings gossip weights (Xiao & Boyd 2004): w_ij = 1 / (1 + max(d_i, d_j))
/// for each neighbour j heard, the rest of the weight on our own parameters. A lost
/// message's weight stays with us, so the weights always sum to 1. A neighbour heard
/// only through an earlier round's parameters gets w_ij · `staleness(age)`.
fn gossip_average(
    own: &[f32],
    start: &StartRound,
    neighbourhood: &Neighbourhood,
    collected: &Collected,
    staleness: impl Fn(u32) -> Option<f64>,
) -> Vec<f32> {
    let degree = start.neighbours.len();
    let mut own_weight = 1.0;
    let mut sum = vec![0.0f64; own.len()];
    let fresh = collected.messages.iter().map(|m| (m, 1.0));
    let stale = collected
        .stale
        .iter()
        .filter_map(|m| Some((m, staleness(start.round.checked_sub(m.round)?)?)));
    for (message, discount) in fresh.chain(stale) {
        let their_degree = match neighbourhood.of(message.sender) {
            [] => degree,
            theirs => theirs.len(),
        };
        let weight = discount / (1.0 + degree.max(their_degree) as f64);
        own_weight -= weight;
        for (s, &v) in sum.iter_mut().zip(&message.values) {
            *s += weight * f64::from(v);
        }
    }
    sum.iter()
        .zip(own)
        .map(|(s, &mine)| (s + own_weight * f64::from(mine)) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Delivered;
    use wdml_proto::Peer;

    fn peer(node_id: u32) -> Peer {
        Peer {
            node_id,
            address: String::new(),
            band_start_s: 0.0,
        }
    }

    fn from(sender: u32, values: Vec<f32>) -> Delivered {
        Delivered {
            sender,
            round: 0,
            round_token: 1,
            values,
            payload_bytes: 0,
            wire_bytes: 0,
            arrived: None,
        }
    }

    #[test]
    fn gossip_weights_are_metropolis_hastings_and_sum_to_one() {
        // Node 0 with neighbours 1 (degree 1) and 2 (degree 3): d_0 = 2.
        let start = StartRound {
            neighbours: vec![peer(1), peer(2)],
            ..StartRound::default()
        };
        let theirs = Neighbourhood([(1, vec![0]), (2, vec![0, 3, 4])].into());
        let collected = Collected {
            messages: vec![from(1, vec![3.0]), from(2, vec![6.0])],
            lost: 0,
            ..Collected::default()
        };
        // w_01 = 1/(1+2) = 1/3, w_02 = 1/(1+3) = 1/4, w_00 = 5/12.
        let averaged = gossip_average(&[0.0], &start, &theirs, &collected, |_| None);
        assert!((averaged[0] - (3.0 / 3.0 + 6.0 / 4.0)).abs() < 1e-6);
        // A constant vector stays constant whatever arrives.
        let collected = Collected {
            messages: vec![from(1, vec![2.0])],
            lost: 1,
            ..Collected::default()
        };
        assert!((gossip_average(&[2.0], &start, &theirs, &collected, |_| None)[0] - 2.0).abs() < 1e-6);
        // Node 2 heard only through its parameters of two rounds ago, weighted 1/2:
        // w_02 = 1/8, w_00 = 1 − 1/3 − 1/8.
        let start = StartRound { round: 5, ..start };
        let mut old = from(2, vec![8.0]);
        old.round = 3;
        let collected = Collected {
            messages: vec![from(1, vec![3.0])],
            lost: 1,
            stale: vec![old],
            ..Collected::default()
        };
        let averaged = gossip_average(&[0.0], &start, &theirs, &collected, |age| (age <= 2).then_some(0.5));
        assert!((averaged[0] - (3.0 / 3.0 + 8.0 / 8.0)).abs() < 1e-6, "{averaged:?}");
        // Nothing heard: unchanged.
        assert_eq!(
            gossip_average(&[1.5], &start, &theirs, &Collected::default(), |_| None),
            vec![1.5]
        );
    }
}
