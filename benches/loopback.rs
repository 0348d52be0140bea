//! Loopback handshakes over real sockets: meshtls acceptor/connector vs bare
//! tokio-rustls, at concurrency 1 and 8. meshtls runs twice: as built by
//! default (every connection tracked, so that a policy change can close it:
//! a duplicate of the socket's descriptor per connection) and with
//! `keep_live_connections()` (no duplicate). Reports handshakes per second and the
//! CPU time per handshake of the server thread and of the client thread
//! (read from `/proc/<tid>/schedstat`, nanosecond resolution).
//!
//! Each server runs on its own thread (a current-thread runtime); the clients
//! share one other thread. Setups alternate in rounds and ratios are taken
//! per round.
//!
//! ```sh
//! cargo bench --bench loopback
//! ```

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshtls::rustls::pki_types::ServerName;
use meshtls::tokio_rustls::{TlsAcceptor, TlsConnector};
use support::threads::{cpu, current_tid};
use support::{Case, Material, echo, median};

const ROUNDS: usize = 10;
const ROUND: Duration = Duration::from_millis(1500);

#[derive(Clone)]
enum Client {
    Bare(TlsConnector),
    Mesh(meshtls::Connector),
}

/// One full handshake and a one-byte exchange.
async fn one(client: Client, addr: SocketAddr) {
    let tcp = echo::connect(addr).await;
    match client {
        Client::Bare(c) => {
            let name = ServerName::try_from("localhost").unwrap();
            echo::send_byte(c.connect(name, tcp).await.unwrap()).await;
        }
        Client::Mesh(c) => echo::send_byte(c.connect("localhost", tcp).await.unwrap().0).await,
    }
}

struct Sample {
    rate: f64,
    server_cpu: f64,
    client_cpu: f64,
}

/// A meshtls server on its own thread; its address and thread id.
fn mesh_server(server: &meshtls::ServerTls) -> (SocketAddr, String) {
    let acceptor = server.acceptor();
    echo::serve(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok((stream, _peer)) = acceptor.accept(tcp).await {
                echo::echo_byte(stream).await;
            }
        }
    })
}

fn main() {
    let m = Material::new(Case::BASE);
    let bare_acceptor = TlsAcceptor::from(support::bare_server(&m, true));
    let (bare_addr, bare_tid) = echo::serve(move |tcp| {
        let accept = bare_acceptor.accept(tcp);
        async move {
            if let Ok(stream) = accept.await {
                echo::echo_byte(stream).await;
            }
        }
    });
    let tracking = support::meshtls_server(&m, true);
    let keeping = support::meshtls_server_builder(&m, true)
        .keep_live_connections()
        .build()
        .unwrap();
    let (tracking_addr, tracking_tid) = mesh_server(&tracking);
    let (keeping_addr, keeping_tid) = mesh_server(&keeping);
    let tracking_client = support::meshtls_client(&m, true, false);
    let keeping_client = support::meshtls_client_builder(&m, true, false)
        .keep_live_connections()
        .build()
        .unwrap();
    let setups = [
        (
            "bare tokio-rustls",
            Client::Bare(TlsConnector::from(support::bare_client(&m, true, false))),
            bare_addr,
            bare_tid,
        ),
        (
            "meshtls",
            Client::Mesh(tracking_client.connector()),
            tracking_addr,
            tracking_tid,
        ),
        (
            "meshtls, keep_live_connections",
            Client::Mesh(keeping_client.connector()),
            keeping_addr,
            keeping_tid,
        ),
    ];

    // The clients' runtime: one worker thread, whose CPU we read.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_tid = rt.block_on(async { tokio::spawn(async { current_tid() }).await.unwrap() });

    println!(
        "loopback full mutual handshakes (ECDSA P-256, X25519MLKEM768), {ROUNDS} rounds of {ROUND:?} per setup, order rotating; medians\n"
    );
    println!(
        "| concurrency | setup | handshakes/s | server CPU / handshake | client CPU / handshake |"
    );
    println!("|---|---|---|---|---|");
    for concurrency in [1, 8] {
        let run = |client: &Client, addr, server_tid: &str| {
            let (s0, c0) = (cpu(server_tid), cpu(&client_tid));
            let start = Instant::now();
            let client = client.clone();
            let n = echo::drive(&rt, concurrency, ROUND, move || one(client.clone(), addr));
            let elapsed = start.elapsed().as_secs_f64();
            let (s1, c1) = (cpu(server_tid), cpu(&client_tid));
            Sample {
                rate: n as f64 / elapsed,
                server_cpu: (s1 - s0).as_secs_f64() / n as f64,
                client_cpu: (c1 - c0).as_secs_f64() / n as f64,
            }
        };
        // samples[setup][round]; the order of setups rotates every round.
        let mut samples: Vec<Vec<Sample>> = setups.iter().map(|_| Vec::new()).collect();
        for round in 0..ROUNDS {
            for k in 0..setups.len() {
                let i = (round + k) % setups.len();
                let (_, client, addr, tid) = &setups[i];
                samples[i].push(run(client, *addr, tid));
            }
        }
        for ((name, ..), own) in setups.iter().zip(&samples) {
            println!(
                "| {concurrency} | {name} | {:.0} | {:.1} µs | {:.1} µs |",
                median(own.iter().map(|s| s.rate).collect()),
                median(own.iter().map(|s| s.server_cpu).collect()) * 1e6,
                median(own.iter().map(|s| s.client_cpu).collect()) * 1e6,
            );
        }
        for ((name, ..), own) in setups.iter().zip(&samples).skip(1) {
            let ratio = |f: fn(&Sample) -> f64| {
                median(
                    own.iter()
                        .zip(&samples[0])
                        .map(|(x, b)| f(x) / f(b))
                        .collect(),
                )
            };
            println!(
                "| {concurrency} | **{name} / bare** | **{:.2}x** | **{:.2}x** | **{:.2}x** |",
                ratio(|s| s.rate),
                ratio(|s| s.server_cpu),
                ratio(|s| s.client_cpu),
            );
        }
    }
}
