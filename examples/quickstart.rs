//! meshtls at work, with nothing to set up: mints a throwaway CA and
//! certificates in memory, starts an mTLS server on 127.0.0.1, and tries five
//! clients against it. Exits 0 only if every case goes the expected way.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshtls::dev::{DevCa, DevCert};
use meshtls::rustls;
use meshtls::rustls::pki_types::pem::PemObject;
use meshtls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use meshtls::{Allow, ClientTls, Event, ServerTls, Source};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const TRUST_DOMAIN: &str = "quickstart.example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = DevCa::new("quickstart root")?;
    let api = spiffe("ns/shop/sa/api");
    let checkout = spiffe("ns/shop/sa/checkout");
    let server_cert = ca.leaf().spiffe(&api).dns("localhost").server().issue()?;

    // The server admits one caller: the checkout service.
    let server = ServerTls::builder()
        .identity(
            Source::pem("server chain", server_cert.chain_pem()),
            Source::pem("server key", server_cert.key_pem()),
        )
        .client_roots(Source::pem("client CA", ca.cert_pem()))
        .allow(Allow::spiffe_id(&checkout))
        .build()?;
    let mut events = server.subscribe();
    let addr = serve(&server).await?;
    println!(
        "mTLS server on {addr}: TLS 1.3 only, client certificates required, allow-list [{checkout}]\n"
    );

    let mut failures = 0;
    let mut check = |ok: bool, line: String| {
        println!("{} {line}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures += 1;
        }
    };

    // 1. The allowed client: accepted, and the server tells it who it is.
    let client = meshtls_client(&ca, &ca.leaf().spiffe(&checkout).client().issue()?, &api)?;
    match talk(client.config(), addr).await {
        Ok(reply) => check(
            reply.contains(&checkout),
            format!("allowed client accepted; the server says: {reply:?}"),
        ),
        Err(e) => check(false, format!("allowed client was refused: {e}")),
    }

    // 2. No client certificate at all.
    let anonymous = bare_client(&ca, None, &[&rustls::version::TLS13])?;
    let outcome = talk(anonymous, addr).await;
    let why = server_reason(&mut events).await;
    check(
        outcome.is_err() && why.contains("no client certificate"),
        format!(
            "client without a certificate refused: client saw {:?}; server: {why}",
            err(outcome)
        ),
    );

    // 3. A client whose certificate comes from another CA.
    let other_ca = DevCa::new("some other root")?;
    let stranger = meshtls_client(
        &ca,
        &other_ca.leaf().spiffe(&checkout).client().issue()?,
        &api,
    )?;
    let outcome = talk(stranger.config(), addr).await;
    let why = server_reason(&mut events).await;
    check(
        outcome.is_err() && why.contains("not signed by a trusted CA"),
        format!(
            "client from another CA refused: client saw {:?}; server: {why}",
            err(outcome)
        ),
    );

    // 4. A valid certificate from our CA, but an identity not on the allow-list.
    let intruder_id = spiffe("ns/shop/sa/recommendations");
    let intruder = meshtls_client(&ca, &ca.leaf().spiffe(&intruder_id).client().issue()?, &api)?;
    let outcome = talk(intruder.config(), addr).await;
    let why = server_reason(&mut events).await;
    check(
        outcome.is_err() && why.contains("identity not allowed") && why.contains(&intruder_id),
        format!(
            "client {intruder_id} refused: client saw {:?}; server: {why}",
            err(outcome)
        ),
    );

    // 5. A client that only speaks TLS 1.2.
    let legacy_cert = ca.leaf().spiffe(&checkout).client().issue()?;
    let legacy = bare_client(&ca, Some(&legacy_cert), &[&rustls::version::TLS12])?;
    let outcome = talk(legacy, addr).await;
    let why = server_reason(&mut events).await;
    check(
        outcome.is_err() && why.contains("TLS 1.3 only"),
        format!(
            "TLS 1.2-only client refused: client saw {:?}; server: {why}",
            err(outcome)
        ),
    );

    println!();
    if failures == 0 {
        println!("all 5 cases went the expected way");
        Ok(())
    } else {
        Err(format!("{failures} case(s) did not go the expected way").into())
    }
}

fn spiffe(path: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{path}")
}

/// Accepts connections; each admitted caller is greeted by name.
async fn serve(server: &ServerTls) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok((mut tls, peer)) = acceptor.accept(tcp).await {
                    let greeting = format!("hello {peer}, serial {}\n", peer.serial());
                    let _ = tls.write_all(greeting.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// A meshtls client presenting `cert` and expecting the server's SPIFFE ID.
fn meshtls_client(
    ca: &DevCa,
    cert: &DevCert,
    server_id: &str,
) -> Result<ClientTls, meshtls::Error> {
    ClientTls::builder()
        .identity(
            Source::pem("client chain", cert.chain_pem()),
            Source::pem("client key", cert.key_pem()),
        )
        .server_roots(Source::pem("server CA", ca.cert_pem()))
        .expect_server(Allow::spiffe_id(server_id))
        .build()
}

/// A plain rustls client, for the cases meshtls would never build.
fn bare_client(
    ca: &DevCa,
    identity: Option<&DevCert>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())?)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)?
    .with_root_certificates(roots);
    Ok(Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some(cert) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.chain_pem().as_bytes())
                .collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes())?,
        )?,
    }))
}

/// Connects, reads the greeting. In TLS 1.3 a refused client certificate
/// shows up as an alert on this first read.
async fn talk(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = meshtls::tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut reader = BufReader::new(tls);
    match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Ok(line.trim_end().to_owned()),
        Ok(Ok(_)) => Err("connection closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn err(outcome: Result<String, String>) -> String {
    outcome.err().unwrap_or_else(|| "a reply".into())
}

/// The server's account of the last refusal.
async fn server_reason(events: &mut tokio::sync::broadcast::Receiver<Event>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(event @ Event::Rejected { .. })) => return event.to_string(),
            Ok(Ok(_)) => continue,
            _ => return "no event".into(),
        }
    }
}
