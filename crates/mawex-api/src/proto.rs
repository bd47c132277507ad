//! Generated protobuf types and tonic stubs of `mawex.v1`. Other crates convert through
//! [`crate::convert`] and never handle these types directly, except to serve them.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("mawex.v1");

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mawex_descriptor.bin"));
