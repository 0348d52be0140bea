//! Re-judging live connections after a CRL update: 10,000 connections open
//! through the acceptor, a CRL that revokes one more client is reloaded, and
//! the time from the reload to the `ConnectionClosed` event of that client is
//! measured. That event comes after the sweep has judged every tracked
//! connection under the new policy (grace 0).
//!
//! The comparison point, in the same run: bare rustls's client verifier
//! (`WebPkiClientVerifier`, same roots and CRL) verifying the same 10,000
//! chains once, which is what any "judge every peer again" costs at least.
//!
//! Two populations: 10,000 distinct client certificates, and 10,000
//! connections from 100 identities (a mesh: many connections per workload;
//! a verdict is judged once per chain and recalled for the rest).
//!
//! The 9,999 background connections run over in-memory pipes (no file
//! descriptors: the machine's limit is 20,000 and a tracked TCP connection
//! holds two); they are tracked and judged exactly as TCP ones, only not
//! closable. The revoked client's connection is TCP.
//!
//! ```sh
//! cargo bench --bench rejudge
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use meshtls::dev::{DevCa, DevCert};
use meshtls::rustls::RootCertStore;
use meshtls::rustls::pki_types::pem::PemObject;
use meshtls::rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use meshtls::rustls::server::WebPkiClientVerifier;
use meshtls::{Allow, ClientTls, Event, ServerTls, Source, Tracked};
use tokio::io::DuplexStream;
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 10_000;
const ROUNDS: usize = 5;
const TD: &str = "bench.example";

fn replace(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn client_tls(ca: &DevCa, cert: &DevCert) -> ClientTls {
    ClientTls::builder()
        .identity(
            Source::pem("cert", cert.chain_pem()),
            Source::pem("key", cert.key_pem()),
        )
        .server_roots(Source::pem("ca", ca.cert_pem()))
        .build()
        .unwrap()
}

struct Held {
    _server: Vec<Tracked<meshtls::tokio_rustls::server::TlsStream<DuplexStream>>>,
    _client: Vec<Tracked<meshtls::tokio_rustls::client::TlsStream<DuplexStream>>>,
}

/// Opens `CONNECTIONS - 1` in-memory connections from `identities` distinct
/// client certificates.
async fn open(server: &ServerTls, ca: &DevCa, identities: usize) -> (Held, Vec<DevCert>) {
    let certs: Vec<DevCert> = (0..identities)
        .map(|i| {
            ca.leaf()
                .spiffe(&format!("spiffe://{TD}/ns/app/sa/c{i}"))
                .client()
                .issue()
                .unwrap()
        })
        .collect();
    let clients: Vec<ClientTls> = certs.iter().map(|c| client_tls(ca, c)).collect();
    let acceptor = server.acceptor();
    let mut held = Held {
        _server: Vec::with_capacity(CONNECTIONS),
        _client: Vec::with_capacity(CONNECTIONS),
    };
    for i in 0..CONNECTIONS - 1 {
        let (a, b) = tokio::io::duplex(16 * 1024);
        let connector = clients[i % identities].connector();
        let (s, c) = tokio::join!(acceptor.accept(a), connector.connect("localhost", b));
        held._server.push(s.unwrap().0);
        held._client.push(c.unwrap().0);
    }
    (held, certs)
}

/// What bare rustls's verifier takes to verify `certs` once.
fn bare_verify(ca: &DevCa, crl_pem: &str, certs: &[DevCert]) -> Duration {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let crl = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(meshtls::rustls::crypto::aws_lc_rs::default_provider()),
    )
    .with_crls([crl])
    .build()
    .unwrap();
    let ders: Vec<CertificateDer<'static>> = certs
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let now = UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap(),
    );
    let start = Instant::now();
    for i in 0..CONNECTIONS {
        verifier
            .verify_client_cert(&ders[i % ders.len()], &[], now)
            .unwrap();
    }
    start.elapsed()
}

async fn next_closed(events: &mut tokio::sync::broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(Event::ConnectionClosed { .. }) => return,
            Ok(_) => {}
            Err(e) => panic!("events: {e}"),
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run(identities: usize) {
    let ca = DevCa::new("bench root").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server_cert = ca.leaf().dns("localhost").server().issue().unwrap();
    let (cert, key) = server_cert.write_to(dir.path()).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let crl = dir.path().join("ca.crl");
    let empty_crl = ca.crl(&[], Duration::from_secs(3600)).unwrap();
    std::fs::write(&crl, &empty_crl).unwrap();
    let server = ServerTls::builder()
        .identity_files(&cert, &key)
        .client_roots_file(&ca_file)
        .crl_file(&crl)
        .allow(Allow::spiffe_trust_domain(TD))
        .live_connection_grace(Duration::ZERO)
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let (_held, certs) = open(&server, &ca, identities).await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok((mut tls, _)) = acceptor.accept(tcp).await {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut tls, &mut sink).await;
                }
            });
        }
    });

    let mut reloads = Vec::new();
    let mut sweeps = Vec::new();
    let mut bare = Vec::new();
    for round in 0..ROUNDS {
        // A fresh victim, connected over TCP and tracked like the rest.
        let victim = ca
            .leaf()
            .spiffe(&format!("spiffe://{TD}/ns/app/sa/victim{round}"))
            .client()
            .issue()
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (_victim_conn, _) = client_tls(&ca, &victim)
            .connector()
            .connect("localhost", tcp)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.stats().live_connections, CONNECTIONS as u64);

        let revoking = ca.crl(&[&victim], Duration::from_secs(3600)).unwrap();
        replace(&crl, &revoking);
        let start = Instant::now();
        server.reload().unwrap();
        let reloaded = Instant::now();
        next_closed(&mut events).await;
        let closed = Instant::now();
        reloads.push(reloaded - start);
        sweeps.push(closed - reloaded);
        bare.push(bare_verify(&ca, &revoking, &certs));

        // Back to no revocations before the next round (this sweep, too,
        // re-judges everything; it is not timed).
        replace(&crl, &empty_crl);
        server.reload().unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (reload, sweep, bare) = (median(reloads), median(sweeps), median(bare));
    println!(
        "| {CONNECTIONS} connections, {identities} identities | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x | {:.1} µs |",
        reload.as_secs_f64() * 1e3,
        sweep.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3,
        sweep.as_secs_f64() / bare.as_secs_f64(),
        sweep.as_secs_f64() * 1e6 / CONNECTIONS as f64,
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!(
        "re-judging {CONNECTIONS} live connections after a CRL update, median of {ROUNDS} rounds\n"
    );
    println!(
        "| population | reload (read + validate + swap) | reload to ConnectionClosed (sweep) | bare rustls verifier, same chains once | sweep / bare | sweep per connection |"
    );
    println!("|---|---|---|---|---|---|");
    run(100).await;
    run(CONNECTIONS).await;
}
