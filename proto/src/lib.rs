//! Generated code for every FlatRender protobuf package, plus the encoded file descriptor set
//! used by gRPC reflection.
//!
//! Modules mirror the proto packages: `flatrender.render.v1` is [`flatrender::render::v1`].
//! Domain types live in the service crates; these types are only the wire format.

#![allow(clippy::all, missing_docs, unused_qualifications)]

include!(concat!(env!("OUT_DIR"), "/flatrender.rs"));

/// Every FlatRender proto file and its imports, encoded as a `google.protobuf.FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flatrender_descriptor.bin"));
