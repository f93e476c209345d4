//! The gRPC services of `flatrender.file.v1`, one module each.

mod cleanup;
mod files;
mod folders;
mod quotas;
mod uploads;

pub(crate) use uploads::server as upload_server;
