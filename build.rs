//! Generates the examples' gRPC code from `examples/greeter/greeter.proto`
//! when the internal `examples-grpc` feature is on (the examples and tests
//! turn it on; users of the library never build this). protox compiles the
//! `.proto` in pure Rust, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "examples-grpc")]
    {
        let proto = "examples/greeter/greeter.proto";
        println!("cargo:rerun-if-changed={proto}");
        let descriptors = protox::compile([proto], ["examples/greeter"])?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(descriptors)?;
    }
    Ok(())
}
