//! The WDML wire: the coordinator and peer gRPC services, generated from
//! `proto/wdml.proto` at build time.
//!
//! Everything here is plain generated code plus small conversions; validation of
//! what arrives belongs to the service that receives it.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("wdml.v1");
}

pub use v1::*;
