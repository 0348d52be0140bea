//! Reload latency: from the atomic rename of a new certificate and key to the
//! first handshake that serves the new certificate. 100 rotations per
//! debounce setting; prints median, p90 and worst.
//!
//! ```sh
//! cargo bench --bench reload_latency
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use meshtls::dev::DevCa;
use meshtls::{ClientTls, Resumption, ServerTls};
use tokio::net::{TcpListener, TcpStream};

const ROTATIONS: usize = 100;

fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn serve(server: &ServerTls) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

async fn served_serial(client: &ClientTls, addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_, server) = client.connector().connect("localhost", tcp).await.unwrap();
    server.serial().to_owned()
}

async fn measure(debounce: Duration) -> Vec<Duration> {
    let ca = DevCa::new("bench root").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf().dns("localhost").server().issue().unwrap();
    let (cert, key) = first.write_to(dir.path()).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let server = ServerTls::builder()
        .identity_files(&cert, &key)
        .client_roots_file(&ca_file)
        .dangerous()
        .allow_any_authenticated()
        .debounce(debounce)
        .poll_interval(None)
        .watch()
        .unwrap();
    let addr = serve(&server).await;
    let client_cert = ca
        .leaf()
        .spiffe("spiffe://bench/client")
        .client()
        .issue()
        .unwrap();
    let client_dir = dir.path().join("client");
    let (cc, ck) = client_cert.write_to(&client_dir).unwrap();
    let client = ClientTls::builder()
        .identity_files(cc, ck)
        .server_roots_file(&ca_file)
        .resumption(Resumption::Disabled)
        .build()
        .unwrap();

    let mut samples = Vec::with_capacity(ROTATIONS);
    for _ in 0..ROTATIONS {
        let next = ca.leaf().dns("localhost").server().issue().unwrap();
        let start = Instant::now();
        replace(&cert, next.chain_pem());
        replace(&key, next.key_pem());
        while served_serial(&client, addr).await != next.serial() {}
        samples.push(start.elapsed());
    }
    samples.sort();
    samples
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; other arguments are not used.
    println!(
        "rename-to-first-new-handshake latency, {ROTATIONS} rotations each (cert and key renamed in turn)\n"
    );
    println!("| debounce | median | p90 | worst |");
    println!("|---|---|---|---|");
    for debounce in [Duration::from_millis(100), Duration::from_millis(10)] {
        let s = measure(debounce).await;
        println!(
            "| {} | {} | {} | {} |",
            ms(debounce),
            ms(s[s.len() / 2]),
            ms(s[s.len() * 9 / 10]),
            ms(s[s.len() - 1])
        );
    }
}
