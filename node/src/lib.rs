//! A WDML node: one device holding a Candle model and a private shard of data.
//!
//! The round, in the order it happens, is in [`round`]; every other module is
//! something the round calls. [`runtime::run`] is the whole node process.

pub mod audit;
pub mod checkpoint;
pub mod data;
pub mod device;
mod emulated;
pub mod error;
pub mod exchange;
pub mod learn;
pub mod model;
pub mod plan;
pub mod privacy;
pub mod round;
pub mod runtime;
pub mod seed;
pub mod shard;
pub mod strategy;

pub use error::{Error, Result};
pub use runtime::{Config, ExternalModel, Outcome, run};
