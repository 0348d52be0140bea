//! A gRPC client (tonic) with mutual TLS, verifying the server by identity.
//!
//! ```sh
//! cargo run --example tonic_client -- --cert tls/web/tls.crt --key tls/web/tls.key \
//!     --ca tls/ca/ca.crt --expect-server spiffe://demo.local/ns/shop/sa/api \
//!     --name world 127.0.0.1:50051
//! ```

mod cli;
mod greeter;

use std::process::ExitCode;

const USAGE: &str = "usage: tonic_client --cert FILE --key FILE --ca FILE [--expect-server RULE]
                    [--name NAME] [--server-name DNS] HOST:PORT";

#[tokio::main]
async fn main() -> ExitCode {
    cli::report(run().await)
}

async fn run() -> Result<String, String> {
    let args = cli::Args::parse(
        &[&cli::CLIENT_FLAGS[..], &["name", "server-name"]].concat(),
        &[],
    )?;
    let [target] = args.positional.as_slice() else {
        return Err(format!("give the server as HOST:PORT\n\n{USAGE}"));
    };
    let client = cli::client(&args)?
        .alpn_protocols([b"h2".to_vec()])
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("{target:?}: {e}"))?;
    let server_name = args
        .optional("server-name")
        .unwrap_or_else(|| "localhost".into());
    let channel = meshtls::tonic::channel(&client, endpoint, &server_name)
        .await
        .map_err(|e| format!("cannot connect: {}", cli::explain(&e)))?;
    let name = args.optional("name").unwrap_or_else(|| "world".into());
    greeter::say_hello(channel, &name)
        .await
        .map_err(|status| cli::explain(&status))
}
