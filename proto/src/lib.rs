//! The WDML wire: the coordinator and peer gRPC services and their messages, generated
//! from `proto/wdml.proto` at build time; the names of its enums; the protocol version
//! and data contract ([`PROTOCOL_VERSION`], [`DATA_CONTRACT`]); the message a node
//! sends each round ([`message`]); and the round policy both sides read ([`policy`]).
//!
//! What carries it (TLS, the accept loop, certificates) is `wdml-transport`'s; the files
//! a run writes are `wdml-files`'. Validation of what arrives belongs to the service
//! that receives it.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod data;
pub mod message;
pub mod policy;

/// The protocol version this build speaks (docs/protocol.md): any change to a message's
/// meaning, a validation rule or the radio settings' JSON schema bumps it. 2: a round's
/// start lists absences instead of each neighbour's own neighbours. 3: it gives a
/// neighbour's address only where its stream has not given it already. 4: the
/// aggregate `TRUST_WEIGHTED` is accepted. 5: a run's data has any shape and number of
/// classes (`DataSpec`, in RunSettings, Join and Hello), and messages have that many
/// columns. 6: the algorithms `FEDMD` and `DSFL` and their settings `public_steps` and
/// `era_temperature`; a run may hold out a validation set (`RunSettings.validation`),
/// and a node reports its accuracy on it (`RoundMetrics.validation_accuracy`). 7: the
/// run's privacy settings (`RunSettings.privacy`: the audit record, DP-SGD's noise and
/// clipping, the budget), which a version-6 node would ignore and so train without the
/// guarantee the run asked for. 8: the radio policies in the channel JSON
/// (`selection`, `band_order`, `radio.power_control`), which a version-7 node would
/// refuse as unknown keys, and `RunSettings.public_overlap` (data contract 4), which a
/// version-7 node would ignore and so draw another public pool than its neighbours.
pub const PROTOCOL_VERSION: u32 = 8;

/// The data contract this build follows (docs/determinism.md): any change to how the
/// split, a round's public batch or the embedded dataset follow from the seeds bumps it.
/// 2: any dataset: the classes follow from the labels, a dataset without a test set
/// holds one out, and the public pool may come from another dataset. 3: the first
/// `validation` samples of the private pool are the validation set, in no shard. 4: with
/// `public_overlap` > 0, a share of each shard is also appended to the public pool (none:
/// the split of contract 3).
pub const DATA_CONTRACT: u32 = 4;

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("wdml.v1");
}

pub use v1::*;

/// The proto enums carry their names, so configs, reports and logs need no mirror
/// enums: `dml`, `f16`, `trimmed-mean`, `confident-wrong`, … (`FromStr`, `Display`,
/// and serde as those names).
mod names {
    use std::fmt;
    use std::str::FromStr;

    use super::{AdversaryKind, Aggregate, Algorithm, Encoding, RoundPolicy};

    /// An unknown name for one of the enums; says which names there are.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UnknownName {
        pub what: &'static str,
        pub name: String,
        pub expected: &'static str,
    }

    impl fmt::Display for UnknownName {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "unknown {} `{}`: expected {}", self.what, self.name, self.expected)
        }
    }

    impl std::error::Error for UnknownName {}

    macro_rules! named {
        ($enum:ident, $what:literal, $expected:literal, [$($variant:ident => $name:literal),+ $(,)?]) => {
            impl $enum {
                /// Every value with a name, in the order they are documented.
                pub const ALL: &'static [$enum] = &[$($enum::$variant),+];

                /// The name in configs and reports.
                pub fn name(self) -> &'static str {
                    match self {
                        $($enum::$variant => $name,)+
                        $enum::Unspecified => "unspecified",
                    }
                }
            }

            impl fmt::Display for $enum {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(self.name())
                }
            }

            impl FromStr for $enum {
                type Err = UnknownName;

                fn from_str(s: &str) -> Result<Self, UnknownName> {
                    match s.trim().to_ascii_lowercase().as_str() {
                        $($name => Ok($enum::$variant),)+
                        _ => Err(UnknownName { what: $what, name: s.to_string(), expected: $expected }),
                    }
                }
            }

            impl serde::Serialize for $enum {
                fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_str(self.name())
                }
            }

            impl<'de> serde::Deserialize<'de> for $enum {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    let name = String::deserialize(deserializer)?;
                    name.parse().map_err(serde::de::Error::custom)
                }
            }
        };
    }

    named!(Algorithm, "algorithm", "`dml`, `local`, `fedavg`, `fedmd` or `dsfl`",
        [Dml => "dml", Local => "local", Fedavg => "fedavg", Fedmd => "fedmd", Dsfl => "dsfl"]);
    named!(Encoding, "encoding", "`f32`, `f16`, `q8`, `q4` or `topk`",
        [F32 => "f32", F16 => "f16", Q8 => "q8", Q4 => "q4", Topk => "topk"]);
    named!(Aggregate, "aggregate", "`mean`, `median`, `trimmed-mean` or `trust-weighted`",
        [Mean => "mean", Median => "median", TrimmedMean => "trimmed-mean", TrustWeighted => "trust-weighted"]);
    named!(AdversaryKind, "adversary kind", "`confident-wrong` or `silent`",
        [ConfidentWrong => "confident-wrong", Silent => "silent"]);
    named!(RoundPolicy, "round policy", "`sync`, `quorum` or `deadline`",
        [Sync => "sync", Quorum => "quorum", Deadline => "deadline"]);

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_round_trip() {
            for &a in Algorithm::ALL {
                assert_eq!(a.to_string().parse::<Algorithm>().unwrap(), a);
            }
            assert_eq!("trimmed-mean".parse::<Aggregate>().unwrap(), Aggregate::TrimmedMean);
            let error = "f8".parse::<Encoding>().unwrap_err().to_string();
            assert!(error.contains("`f32`, `f16`, `q8`, `q4` or `topk`"), "{error}");
            assert!("unspecified".parse::<Algorithm>().is_err());
            for a in Aggregate::ALL {
                let json = serde_json::to_string(a).unwrap();
                assert_eq!(json, format!("\"{a}\""));
                assert_eq!(serde_json::from_str::<Aggregate>(&json).unwrap(), *a);
            }
            let error = serde_json::from_str::<AdversaryKind>("\"loud\"")
                .unwrap_err()
                .to_string();
            assert!(error.contains("unknown adversary kind `loud`"), "{error}");
        }
    }
}

pub use names::UnknownName;
