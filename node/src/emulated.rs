//! The emulated clock of a round, as a node computes it: when each device has its message
//! ready (its compute before the exchange on its device profile, known from the plan),
//! when a shared band's turns begin, when this node's exchange is done, and when its
//! round is. Wall time follows from it through the channel's `time_scale` (the shaper
//! paces by it); the coordinator adds the rounds' spans up as its policy closes them
//! (`wdml_proto::policy`). Everything here is a pure function of the plan and of what
//! the round measured, so every node computes the same clock for the same run.

use wdml_channel::Access;

use crate::plan::RunPlan;
use crate::strategy;

/// Emulated seconds from the round's start until node `id` has its message ready (its
/// compute before the exchange, on its device; 0 without one).
pub(crate) fn ready_s(plan: &RunPlan, id: u32) -> f64 {
    let flops = strategy::flops_before_exchange(plan.algorithm, plan, &plan.models[id as usize]);
    plan.device(id).map_or(0.0, |d| d.seconds(flops))
}

/// On a shared band (`channel.access = "shared"`), when the exchange phase begins: once
/// the slowest device of the scenario has its message ready (known from the plan). 0 on
/// dedicated bands.
pub(crate) fn band_phase_s(plan: &RunPlan) -> f64 {
    if plan.channel.access != Access::Shared {
        return 0.0;
    }
    (0..plan.nodes).map(|k| ready_s(plan, k)).fold(0.0, f64::max)
}

/// On a shared band, how long node `id` waits between having its message ready and the
/// start of its turn (or slot): the phase `phase_s` ([`band_phase_s`]), then
/// `band_start_s` (the coordinator's plan). 0 on dedicated bands, where every node
/// transmits as soon as it is ready.
pub(crate) fn band_wait_s(plan: &RunPlan, phase_s: f64, id: u32, band_start_s: f64) -> f64 {
    if plan.channel.access != Access::Shared {
        return 0.0;
    }
    (phase_s + band_start_s - ready_s(plan, id)).max(0.0)
}

/// How this node's message left it, after its compute before the exchange.
pub(crate) enum Sent {
    /// In its turns or on its own band: it waited `wait_s` for its band, then its
    /// transmissions took `airtime_s`.
    Transmitted { wait_s: f64, airtime_s: f64 },
    /// Over the air: its radio was busy until `busy_s` (the end of its last slot).
    OverTheAir { busy_s: f64 },
}

/// Emulated seconds from the round's start until node `id` has sent its message after
/// computing `before` FLOPs, and heard every neighbour in `heard` (`(sender,
/// arrival_s)`: a neighbour's message is here once that neighbour has computed what
/// comes before its exchange, on its own device, and the radio has carried it for
/// `arrival_s`). A message the radio lost is not waited for (nor is it by the adaptive
/// deadline).
pub(crate) fn exchange_done(
    plan: &RunPlan,
    id: u32,
    before: u64,
    sent: Sent,
    heard: impl Iterator<Item = (u32, f64)>,
) -> f64 {
    let seconds = |id: u32, flops: u64| plan.device(id).map_or(0.0, |d| d.seconds(flops));
    let mine = seconds(id, before);
    // Summed in this order: the golden figures depend on it to the bit.
    let mut ready = match sent {
        Sent::Transmitted { wait_s, airtime_s } => mine + wait_s + airtime_s,
        Sent::OverTheAir { busy_s } => mine + busy_s,
    };
    for (sender, arrival_s) in heard {
        if let Some(model) = plan.models.get(sender as usize) {
            let theirs = strategy::flops_before_exchange(plan.algorithm, plan, model);
            ready = ready.max(seconds(sender, theirs) + arrival_s);
        }
    }
    ready
}

/// Emulated seconds until this node finished its round: its exchange done
/// (`exchanged`: that time, and the FLOPs computed by then) plus the device time of
/// the work after it, or the device time of all `flops` for an algorithm that
/// exchanges nothing. `seconds` converts FLOPs on this node's device (0 without one).
pub(crate) fn round_done(exchanged: Option<(f64, u64)>, flops: u64, seconds: impl Fn(u64) -> f64) -> f64 {
    match exchanged {
        Some((ready, before)) => ready + seconds(flops - before),
        None => seconds(flops),
    }
}
