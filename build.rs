//! Compiles the project's own protobuf definitions in `proto/` with `protox` (pure Rust, so a
//! fresh machine needs no `protoc`) and generates prost types into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/meshaudit/v1/als_subset.proto",
        "proto/meshaudit/v1/audit_record.proto",
        "proto/meshaudit/v1/otlp_subset.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut cfg = prost_build::Config::new();
    // The ALS and OTLP subsets declare Envoy's strings as `bytes` so that decoding from a `Bytes`
    // buffer slices it instead of copying: see proto/meshaudit/v1/als_subset.proto.
    cfg.bytes([".meshaudit.wire.v1", ".meshaudit.otlp.v1", ".meshaudit.v1"]);
    cfg.compile_fds(fds)?;
    Ok(())
}
