//! Loopback handshakes over real sockets: meshtls acceptor/connector vs bare
//! tokio-rustls, at concurrency 1 and 8. Reports handshakes per second and the
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

fn main() {
    let m = Material::new(Case::BASE);
    let mesh_server = support::meshtls_server(&m, true);
    let mesh_client = support::meshtls_client(&m, true, false);
    let bare_acceptor = TlsAcceptor::from(support::bare_server(&m, true));
    let (bare_addr, bare_tid) = echo::serve(move |tcp| {
        let accept = bare_acceptor.accept(tcp);
        async move {
            if let Ok(stream) = accept.await {
                echo::echo_byte(stream).await;
            }
        }
    });
    let mesh_acceptor = mesh_server.acceptor();
    let (mesh_addr, mesh_tid) = echo::serve(move |tcp| {
        let acceptor = mesh_acceptor.clone();
        async move {
            if let Ok((stream, _peer)) = acceptor.accept(tcp).await {
                echo::echo_byte(stream).await;
            }
        }
    });
    let bare_client = Client::Bare(TlsConnector::from(support::bare_client(&m, true, false)));
    let mesh = Client::Mesh(mesh_client.connector());

    // The clients' runtime: one worker thread, whose CPU we read.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_tid = rt.block_on(async { tokio::spawn(async { current_tid() }).await.unwrap() });

    println!(
        "loopback full mutual handshakes (ECDSA P-256, X25519MLKEM768), {ROUNDS} alternating rounds of {ROUND:?}; medians\n"
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
        let (mut bare, mut mesh_s, mut ratios) = (vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            let (b, x) = if round % 2 == 0 {
                let b = run(&bare_client, bare_addr, &bare_tid);
                (b, run(&mesh, mesh_addr, &mesh_tid))
            } else {
                let x = run(&mesh, mesh_addr, &mesh_tid);
                (run(&bare_client, bare_addr, &bare_tid), x)
            };
            ratios.push((
                x.rate / b.rate,
                x.server_cpu / b.server_cpu,
                x.client_cpu / b.client_cpu,
            ));
            bare.push(b);
            mesh_s.push(x);
        }
        for (name, samples) in [("bare tokio-rustls", &bare), ("meshtls", &mesh_s)] {
            println!(
                "| {concurrency} | {name} | {:.0} | {:.1} µs | {:.1} µs |",
                median(samples.iter().map(|s| s.rate).collect()),
                median(samples.iter().map(|s| s.server_cpu).collect()) * 1e6,
                median(samples.iter().map(|s| s.client_cpu).collect()) * 1e6,
            );
        }
        println!(
            "| {concurrency} | **meshtls / bare** | **{:.2}x** | **{:.2}x** | **{:.2}x** |",
            median(ratios.iter().map(|r| r.0).collect()),
            median(ratios.iter().map(|r| r.1).collect()),
            median(ratios.iter().map(|r| r.2).collect()),
        );
    }
}
