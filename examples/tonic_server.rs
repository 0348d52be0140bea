//! A gRPC server (tonic) with mutual TLS: greets each caller by its verified
//! identity.
//!
//! ```sh
//! cargo run --example tonic_server -- --listen 127.0.0.1:50051 \
//!     --cert tls/server/tls.crt --key tls/server/tls.key --client-ca tls/ca/ca.crt \
//!     --allow 'spiffe://demo.local/ns/shop/**'
//! ```

mod cli;
mod greeter;

use std::process::ExitCode;

const USAGE: &str = "usage: tonic_server --listen ADDR --cert FILE --key FILE --client-ca FILE
                    [--allow RULE]... [--allow-any-authenticated]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail(USAGE, e),
    }
}

async fn run() -> Result<(), String> {
    let args = cli::Args::parse(
        &[&cli::SERVER_FLAGS[..], &["listen"]].concat(),
        &["allow-any-authenticated"],
    )?;
    let server = cli::server(&args)?
        // gRPC clients in other languages require ALPN h2.
        .alpn_protocols([b"h2".to_vec()])
        .watch()
        .map_err(|e| e.to_string())?;
    cli::log_events(server.subscribe());

    let listener = tokio::net::TcpListener::bind(args.required("listen")?)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    println!(
        "listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tonic::transport::Server::builder()
        .add_service(greeter::server())
        .serve_with_incoming(server.acceptor().incoming(listener))
        .await
        .map_err(|e| e.to_string())
}
