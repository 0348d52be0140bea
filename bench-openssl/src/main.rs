//! CPU per mutual TLS handshake on the server: meshtls vs the same server loop
//! on OpenSSL (the `openssl` crate with `tokio-openssl`), TLS 1.3 with client
//! certificates required, same certificates, X25519 (OpenSSL 3.0 has no
//! ML-KEM), AES-256-GCM. One meshtls client drives both servers.
//!
//! ```sh
//! cargo run --release -p meshtls-bench-openssl
//! ```

#[path = "../../benches/support/threads.rs"]
mod threads;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshtls::dev::DevCa;
use meshtls::{Allow, ClientTls, Resumption, ServerTls, Source};
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use threads::{cpu, current_tid};

const ROUNDS: usize = 8;
const ROUND: Duration = Duration::from_millis(1500);
const CONCURRENCY: usize = 4;

enum Server {
    OpenSsl(SslAcceptor),
    Mesh(meshtls::Acceptor),
}

fn start(server: Server) -> (SocketAddr, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((listener.local_addr().unwrap(), current_tid()))
                .unwrap();
            let server = Arc::new(server);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let server = server.clone();
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    match &*server {
                        Server::OpenSsl(acceptor) => {
                            let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                            let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                            if Pin::new(&mut s).accept().await.is_ok()
                                && s.read_exact(&mut byte).await.is_ok()
                            {
                                let _ = s.write_all(&byte).await;
                                let _ = s.shutdown().await;
                            }
                        }
                        Server::Mesh(acceptor) => {
                            if let Ok((mut s, _peer)) = acceptor.accept(tcp).await
                                && s.read_exact(&mut byte).await.is_ok()
                            {
                                let _ = s.write_all(&byte).await;
                                let _ = s.shutdown().await;
                            }
                        }
                    }
                });
            }
        });
    });
    rx.recv().unwrap()
}

fn openssl_server(ca_pem: &str, chain_pem: &str, key_pem: &str) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_max_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_ciphersuites("TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")
        .unwrap();
    b.set_groups_list("X25519").unwrap();
    let mut chain = X509::stack_from_pem(chain_pem.as_bytes())
        .unwrap()
        .into_iter();
    b.set_certificate(&chain.next().unwrap()).unwrap();
    for extra in chain {
        b.add_extra_chain_cert(extra).unwrap();
    }
    b.set_private_key(&openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes()).unwrap())
        .unwrap();
    let mut store = X509StoreBuilder::new().unwrap();
    store
        .add_cert(X509::from_pem(ca_pem.as_bytes()).unwrap())
        .unwrap();
    b.set_verify_cert_store(store.build()).unwrap();
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    b.build()
}

fn drive(rt: &tokio::runtime::Runtime, client: &meshtls::Connector, addr: SocketAddr) -> u64 {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (client, done, count) = (client.clone(), done.clone(), count.clone());
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        let tcp = TcpStream::connect(addr).await.unwrap();
                        tcp.set_nodelay(true).unwrap();
                        let (mut s, _) = client.connect("localhost", tcp).await.unwrap();
                        let mut byte = [7u8; 1];
                        s.write_all(&byte).await.unwrap();
                        s.read_exact(&mut byte).await.unwrap();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(ROUND).await;
        done.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    });
    count.load(Ordering::Relaxed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let ca = DevCa::new("openssl bench root").unwrap();
    let server_cert = ca
        .leaf()
        .spiffe("spiffe://bench.example/server")
        .dns("localhost")
        .server()
        .issue()
        .unwrap();
    let client_cert = ca
        .leaf()
        .spiffe("spiffe://bench.example/client")
        .client()
        .issue()
        .unwrap();

    let mesh = ServerTls::builder()
        .identity(
            Source::pem("chain", server_cert.chain_pem()),
            Source::pem("key", server_cert.key_pem()),
        )
        .client_roots(Source::pem("ca", ca.cert_pem()))
        .allow(Allow::spiffe_id("spiffe://bench.example/client"))
        .dangerous()
        .classical_key_exchange_only()
        .build()
        .unwrap();
    let (mesh_addr, mesh_tid) = start(Server::Mesh(mesh.acceptor()));
    let (ossl_addr, ossl_tid) = start(Server::OpenSsl(openssl_server(
        ca.cert_pem(),
        server_cert.chain_pem(),
        server_cert.key_pem(),
    )));

    let client = ClientTls::builder()
        .identity(
            Source::pem("chain", client_cert.chain_pem()),
            Source::pem("key", client_cert.key_pem()),
        )
        .server_roots(Source::pem("ca", ca.cert_pem()))
        .dangerous()
        .classical_key_exchange_only()
        .resumption(Resumption::Disabled)
        .build()
        .unwrap()
        .connector();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let measure = |addr, tid: &str| {
        let c0 = cpu(tid);
        let start = Instant::now();
        let n = drive(&rt, &client, addr);
        let elapsed = start.elapsed().as_secs_f64();
        ((cpu(tid) - c0).as_secs_f64() / n as f64, n as f64 / elapsed)
    };
    let (mut mesh_cpu, mut ossl_cpu, mut ratio, mut mesh_rate, mut ossl_rate) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let ((m, mr), (o, or)) = if round % 2 == 0 {
            let m = measure(mesh_addr, &mesh_tid);
            (m, measure(ossl_addr, &ossl_tid))
        } else {
            let o = measure(ossl_addr, &ossl_tid);
            (measure(mesh_addr, &mesh_tid), o)
        };
        ratio.push(o / m);
        mesh_cpu.push(m);
        ossl_cpu.push(o);
        mesh_rate.push(mr);
        ossl_rate.push(or);
    }
    println!(
        "server CPU per mutual TLS 1.3 handshake (ECDSA P-256, X25519, AES-256-GCM), {CONCURRENCY} client tasks, {ROUNDS} alternating rounds of {ROUND:?}; medians\n"
    );
    println!("OpenSSL: {}\n", openssl::version::version());
    println!("| server | CPU / handshake | handshakes/s |");
    println!("|---|---|---|");
    println!(
        "| OpenSSL (tokio-openssl) | {:.1} µs | {:.0} |",
        median(ossl_cpu) * 1e6,
        median(ossl_rate)
    );
    println!(
        "| meshtls | {:.1} µs | {:.0} |",
        median(mesh_cpu) * 1e6,
        median(mesh_rate)
    );
    println!(
        "| **OpenSSL CPU / meshtls CPU** | **{:.2}x** | |",
        median(ratio)
    );
}
