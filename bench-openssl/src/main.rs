//! CPU per mutual TLS handshake on the server: meshtls vs the same server loop
//! on OpenSSL (the `openssl` crate with `tokio-openssl`), TLS 1.3 with client
//! certificates required, same certificates, X25519 (OpenSSL 3.0 has no
//! ML-KEM), AES-256-GCM. One meshtls client drives both servers.
//!
//! ```sh
//! cargo run --release -p meshtls-bench-openssl
//! ```

#[path = "../../benches/support/echo.rs"]
mod echo;
#[path = "../../benches/support/threads.rs"]
mod threads;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtls::dev::DevCa;
use meshtls::{Allow, ClientTls, Resumption, ServerTls, Source};
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use threads::cpu;

const ROUNDS: usize = 8;
const ROUND: Duration = Duration::from_millis(1500);
const CONCURRENCY: usize = 4;

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
    let mesh_acceptor = mesh.acceptor();
    let (mesh_addr, mesh_tid) = echo::serve(move |tcp| {
        let acceptor = mesh_acceptor.clone();
        async move {
            if let Ok((stream, _peer)) = acceptor.accept(tcp).await {
                echo::echo_byte(stream).await;
            }
        }
    });
    let ossl = Arc::new(openssl_server(
        ca.cert_pem(),
        server_cert.chain_pem(),
        server_cert.key_pem(),
    ));
    let (ossl_addr, ossl_tid) = echo::serve(move |tcp| {
        let ssl = openssl::ssl::Ssl::new(ossl.context()).unwrap();
        async move {
            let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
            if Pin::new(&mut stream).accept().await.is_ok() {
                echo::echo_byte(stream).await;
            }
        }
    });

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
        let client = client.clone();
        let n = echo::drive(&rt, CONCURRENCY, ROUND, move || {
            let client = client.clone();
            async move {
                let tcp = echo::connect(addr).await;
                echo::send_byte(client.connect("localhost", tcp).await.unwrap().0).await;
            }
        });
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
