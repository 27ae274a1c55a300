//! Compiles `proto/cairn/v1/federation.proto` with the pure-Rust `protox` compiler and feeds the
//! descriptor set to `tonic-prost-build`, so a build needs only cargo (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cairn/v1/federation.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".cairn.v1.Chunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
