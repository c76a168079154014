//! Compiles `proto/credbroker/v1/broker.proto` without a system `protoc`: protox (a pure-Rust
//! protobuf compiler) builds the descriptor set, tonic-prost-build generates the code, and the
//! encoded descriptor set is kept for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/credbroker/v1/broker.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("credbroker_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Clients use any tonic channel; credbroker itself does not pull in tonic's transport.
        .build_transport(false)
        // Generated Debug impls would print secrets (tokens, keys, session handles).
        .skip_debug([
            ".credbroker.v1.ExchangeRequest",
            ".credbroker.v1.ExchangeResponse",
            ".credbroker.v1.GetCredentialsRequest",
            ".credbroker.v1.GetCredentialsRequest.auth",
            ".credbroker.v1.Credentials",
            ".credbroker.v1.UpdateTokenRequest",
            ".credbroker.v1.RevokeRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
