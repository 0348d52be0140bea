//! An axum HTTPS server with mutual TLS and live reload.
//!
//! ```sh
//! cargo run --example server -- --listen 127.0.0.1:8443 \
//!     --cert tls/server/tls.crt --key tls/server/tls.key --client-ca tls/ca/ca.crt \
//!     --allow 'spiffe://demo.local/ns/shop/**'
//! ```
//!
//! `GET /whoami` answers the caller's identity as JSON; `GET /healthz`
//! answers `ok`. Once ready it prints `listening on https://IP:PORT`.
//! Refused handshakes, reloads and live connections closed by a reload go
//! to stderr with their reason.

mod cli;

use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use meshtls::PeerIdentity;

const USAGE: &str = "usage: server --listen ADDR --cert FILE --key FILE --client-ca FILE
              [--crl FILE] [--allow RULE]... [--allow-any-authenticated]
              [--keep-live-connections] [--metrics ADDR]
--metrics ADDR: serve Prometheus metrics over plain HTTP at http://ADDR/metrics
--keep-live-connections: leave open connections of peers a reload stops admitting
      (by default they are closed 10 s after the reload)
RULE: spiffe://TD/PATH, spiffe://TD/ns/*/sa/api, spiffe://TD/ns/prod/**, spiffe://TD/**,
      dns:NAME, dns:*.SUFFIX, cn:NAME";

async fn whoami(peer: PeerIdentity) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "spiffe_id": peer.spiffe_id().map(|id| id.to_string()),
        "dns": peer.dns_names(),
        "cn": peer.common_name(),
        "serial": peer.serial(),
        "not_after": peer.not_after_rfc3339(),
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail(USAGE, e),
    }
}

async fn run() -> Result<(), String> {
    let args = cli::Args::parse(
        &[&cli::SERVER_FLAGS[..], &["listen", "metrics"]].concat(),
        &["allow-any-authenticated", "keep-live-connections"],
    )?;
    if let Some(addr) = args.optional("metrics") {
        serve_metrics(&addr).await?;
    }
    let server = cli::server(&args)?.watch().map_err(|e| e.to_string())?;
    cli::log_events(server.subscribe());

    let listener = meshtls::axum::MtlsListener::bind(args.required("listen")?, &server)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = axum::serve::Listener::local_addr(&listener).map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/healthz", get(|| async { "ok" }));
    println!("listening on https://{addr}");
    meshtls::axum::serve(listener, app)
        .await
        .map_err(|e| e.to_string())
}

/// Installs the Prometheus recorder and serves its text on `addr` (plain
/// HTTP: keep it on a private interface or behind the scraper's network).
async fn serve_metrics(addr: &str) -> Result<(), String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("--metrics: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics: cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new().route("/metrics", get(move || async move { handle.render() }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("metrics on http://{addr}/metrics");
    Ok(())
}
