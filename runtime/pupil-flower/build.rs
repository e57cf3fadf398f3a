//! Compiles Flower's messages from `proto/flwr-1.42.0.fds`, the FileDescriptorSet that
//! `interop/flower/descriptors.py` extracts from the flwr wheel (no protoc needed).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "proto/flwr-1.42.0.fds";
    println!("cargo:rerun-if-changed={path}");
    let set = prost_types::FileDescriptorSet::decode(std::fs::read(path)?.as_slice())?;
    prost_build::Config::new().compile_fds(set)?;
    Ok(())
}
