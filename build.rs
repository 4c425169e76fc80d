//! Generates the server side of containerd's snapshots API from proto/ with
//! protox (pure Rust: no `protoc` needed to build dmctl).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["snapshots.proto"], ["proto"])?;
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
