//! Compiles every `.proto` under `flatrender/` with protox (pure Rust, so no `protoc` is needed)
//! and generates prost messages plus tonic clients and servers.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    collect_protos(&root.join("flatrender"), &mut files)?;
    files.sort();

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files.iter().map(|f| f.strip_prefix(&root).unwrap_or(f)))?;
    let mut fds = compiler.file_descriptor_set();

    // The embedded set keeps the comments: reflection shows them, and the webhook event types
    // are described by them.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("flatrender_descriptor.bin"), fds.encode_to_vec())?;
    // The generated code does not: prost would turn every comment into rustdoc, and indented
    // text in a comment into a doc test.
    for file in &mut fds.file {
        file.source_code_info = None;
    }

    // `prost::Name` on every message: the outbox records an event's full proto name.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    // Every `bytes` field is file or object data (upload parts, download chunks): as `Bytes` it
    // is decoded as a view into the received buffer and sent without copying.
    config.bytes(["."]);
    tonic_prost_build::configure()
        // A method whose issue has not landed answers UNIMPLEMENTED, the gRPC standard.
        .generate_default_stubs(true)
        .include_file("flatrender.rs")
        .compile_fds_with_config(fds, config)?;

    println!("cargo:rerun-if-changed=flatrender");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
