//! The `wdml` binary's library half: scenario files (one TOML describing a whole
//! experiment), shared by the binary and the fuzzer (`fuzz/`).

pub mod scenario;
