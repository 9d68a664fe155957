//! Generates the gRPC code for `proto/tessera/v1/*.proto` (never committed) and the file
//! descriptor set served by gRPC reflection. Needs `protoc` (Debian `protobuf-compiler`,
//! installed by `scripts/install-deps.sh`) or `PROTOC` pointing at one.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/tessera/v1/common.proto",
        "proto/tessera/v1/directory.proto",
        "proto/tessera/v1/token.proto",
        "proto/tessera/v1/certificate.proto",
        "proto/tessera/v1/audit.proto",
        "proto/tessera/v1/enrollment.proto",
        "proto/tessera/v1/self_service.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Decode errors answer INVALID_ARGUMENT, not tonic-prost's INTERNAL.
        .codec_path("crate::protocol::codec::ProstCodec")
        .file_descriptor_set_path(out.join("tessera_v1_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
