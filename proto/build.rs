//! Compiles `proto/*.proto` with protox, a pure-Rust protobuf compiler, so a fresh
//! machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/wdml.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // The metrics a node reports are written to metrics.jsonl as they are, under
        // their proto names: one schema from the wire to the run directory. Fields a
        // later version adds read as 0 from older run directories.
        .type_attribute(
            "wdml.v1.RoundMetrics",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        // Absent, not null, in the rows of a run without a validation set.
        .field_attribute(
            "wdml.v1.RoundMetrics.validation_accuracy",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        // Absent, not null, in the rows of a node that trains without DP-SGD.
        .field_attribute(
            "wdml.v1.RoundMetrics.epsilon",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
