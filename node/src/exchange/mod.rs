//! The exchange of predictions between neighbours: the [`codec`] that encodes and
//! frames them, the [`shaper`] that schedules the frames on the emulated radio, the
//! [`client`] that streams them to a neighbour, the peer [`service`] that validates
//! what arrives, the [`mailbox`] where it waits for the round, and the
//! [`punctuality`] that says how long to wait for whom.

pub mod client;
pub mod codec;
pub mod mailbox;
pub mod punctuality;
pub mod service;
pub mod shaper;

pub use mailbox::{Collected, Delivered, Mailbox};
pub use punctuality::Punctuality;
pub use service::{Assembler, Expectation, PeerService};
