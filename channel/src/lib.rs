//! WDML's emulated wireless channel: a pure, seeded model of the radio between devices.
//!
//! Placement, path loss, shadowing, fast fading, SNR, rate, outage, frame loss,
//! retransmissions, airtime, energy, topology and named presets — arithmetic and random
//! draws only, no I/O and no clocks. The coordinator uses it to place devices and pick
//! neighbours; a node's shaper uses it to pace and drop the frames of real streams.
//!
//! Everything random derives from the run seed and the coordinates of the draw (nodes,
//! round, message), so any process holding the seed, the [`RadioParams`] and the
//! positions computes the same channel:
//!
//! ```
//! use wdml_channel::{ChannelConfig, Link, Preset, Topology};
//!
//! let resolved = ChannelConfig::from_preset(Preset::D2dUrban).resolve()?;
//! let channel = resolved.channel(42, 5)?;
//! let neighbours = resolved.topology.neighbours(0, &channel)?;
//! let state = channel.link_state(Link::new(0, neighbours[0]), 0)?;
//! let outcome = channel.unicast(Link::new(0, neighbours[0]), 0, 0, 2560)?.run();
//! assert_eq!(outcome.delivered, !outcome.outage && outcome.frames_delivered == 2);
//! # let _ = (state, Topology::FullMesh);
//! # Ok::<(), wdml_channel::Error>(())
//! ```
//!
//! The model, its formulas and the sources of its defaults are in the crate README.

mod config;
mod error;
mod geometry;
mod link;
mod loss;
mod mobility;
pub mod policy;
mod preset;
#[cfg(test)]
mod preset_behaviour_tests;
mod propagation;
mod radio;
mod rng;
pub mod spectrum;
mod topology;
mod transmission;
pub mod units;

pub use config::{Access, ChannelConfig, DEFAULT_AIR_MIN_SNR_DB, DEFAULT_TIME_SCALE, Mode, ResolvedChannel, wall_time};
pub use error::{Error, Result};
pub use geometry::{Placement, Position};
pub use link::{Channel, Link, LinkState};
pub use loss::{
    CODED_BPSK_FIT_A, CODED_BPSK_FIT_G, CODED_BPSK_FIT_PACKET_BITS, FrameLoss, LossModel, coded_bpsk_frame_error_rate,
};
pub use mobility::{DEFAULT_DECORRELATION_M, Mobility, RandomWaypoint, SHADOWING_STEP_S, Trace, TraceSample};
pub use policy::{BandOrder, PowerControl, Selection};
pub use preset::{Preset, Shaping};
pub use propagation::{Fading, PathLoss};
pub use radio::{MAX_RETRANSMISSIONS_LIMIT, RadioParams, airtime_s};
pub use rng::{SplitMix64, Stream, derive_external_seed, derive_seed, purpose, splitmix64_mix};
pub use topology::Topology;
pub use transmission::{
    BroadcastAttempt, BroadcastOutcome, BroadcastTransmission, FrameAttempt, ReceiverOutcome, Reception,
    TransmissionOutcome, UnicastTransmission,
};
