//! gRPC services.
pub mod pb {
    tonic::include_proto!("tessera.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tessera_v1_descriptor");
}
