//! Compiles `proto/**/*.proto` with protox (pure Rust), so no system `protoc` is needed, and
//! writes the public files' descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

/// Every file the gRPC front-end serves, and so describes through reflection.
const PUBLIC: [&str; 5] = [
    "distributed_cache.proto",
    "kvmesh_api.proto",
    "grpc/health/v1/health.proto",
    "grpc/reflection/v1/reflection.proto",
    "grpc/reflection/v1alpha/reflection.proto",
];
/// kvmesh's internal formats: compiled, never described to gRPC clients.
const INTERNAL: [&str; 2] = ["kvmesh/wire.proto", "kvmesh/wal.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<&str> = INTERNAL.iter().chain(PUBLIC.iter()).copied().collect();
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let public = protox::compile(PUBLIC, ["."])?;
    std::fs::write(
        out.join("public_descriptor_set.bin"),
        public.encode_to_vec(),
    )?;
    let descriptors = protox::compile(files, ["."])?;
    let mut config = prost_build::Config::new();
    // Rare, large sub-messages are boxed, so the messages every GET and SET moves stay small
    // (`OpResult` is 688 bytes with them inline, 112 boxed; `Op` 192 and 88).
    for field in [
        ".kvmesh.wire.OpResult.stats",
        ".kvmesh.wire.OpResult.topology",
        ".kvmesh.wire.OpResult.snapshot",
        ".kvmesh.wire.OpResult.hello",
        ".kvmesh.wire.Op.hello",
    ] {
        config.boxed(field);
    }
    config.out_dir(&out).compile_fds(descriptors)?;
    Ok(())
}
