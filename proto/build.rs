//! Compiles the .proto files with protox (no system `protoc`) and tonic's code generator.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "tenancy/accounts/v1/accounts.proto",
    "tenancy/control/v1/control.proto",
    "tenancy/domain/v1/domain.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;
    // Reflection serves this descriptor set.
    std::fs::write(out_dir.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
