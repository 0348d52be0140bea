//! An HTTPS client with mutual TLS: prints the response body; on failure
//! exits non-zero and says why.
//!
//! ```sh
//! cargo run --example client -- --cert tls/web/tls.crt --key tls/web/tls.key \
//!     --ca tls/ca/ca.crt --expect-server spiffe://demo.local/ns/shop/sa/api \
//!     https://localhost:8443/whoami
//! ```

mod cli;

use std::process::ExitCode;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

const USAGE: &str = "usage: client --cert FILE --key FILE --ca FILE [--expect-server RULE] URL
Without --expect-server the server must be valid for the URL's host name.";

#[tokio::main]
async fn main() -> ExitCode {
    cli::report(run().await)
}

async fn run() -> Result<String, String> {
    let args = cli::Args::parse(&cli::CLIENT_FLAGS, &[])?;
    let [url] = args.positional.as_slice() else {
        return Err(format!("give exactly one URL\n\n{USAGE}"));
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?}: only https:// URLs"));
    }
    let host = uri
        .host()
        .ok_or(format!("{url:?} has no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);

    let client = cli::client(&args)?.build().map_err(|e| e.to_string())?;

    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (tls, server) = client
        .connector()
        .connect(&host, tcp)
        .await
        .map_err(|e| cli::explain(&e))?;
    eprintln!("connected to {server} (serial {})", server.serial());

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header("host", format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // In TLS 1.3 a server that refuses our certificate says so after the
    // handshake, with an alert; the connection task sees it.
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => {
            let why = match conn.await {
                Ok(Err(conn_error)) => cli::explain(&conn_error),
                _ => cli::explain(&e),
            };
            return Err(format!("the server refused the request: {why}"));
        }
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}
