//! The exchange of predictions between neighbours: the [`codec`] that encodes and
//! frames them, the [`shaper`] that schedules the frames on the emulated radio, the
//! [`client`] that streams them to a neighbour, the peer [`service`] that validates
//! what arrives, the [`mailbox`] where it waits for the round, the
//! [`punctuality`] that says how long to wait for whom, and [`send`], the one path
//! that puts them together for a round.

pub mod client;
pub mod codec;
pub mod mailbox;
pub mod punctuality;
pub mod send;
pub mod service;
pub mod shaper;

pub use codec::MessageShape;
pub use mailbox::{Collected, Delivered, Mailbox, Quorum};
pub use punctuality::Punctuality;
pub use send::{Outgoing, send_and_collect};
pub use service::{Assembler, Expectation, PeerService};
