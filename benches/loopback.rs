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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshtls::rustls::pki_types::ServerName;
use meshtls::tokio_rustls::{TlsAcceptor, TlsConnector};
use support::threads::{cpu, current_tid};
use support::{Case, Material, median};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROUNDS: usize = 10;
const ROUND: Duration = Duration::from_millis(1500);

enum Server {
    Bare(TlsAcceptor),
    Mesh(meshtls::Acceptor),
}

/// Starts a server on its own thread; returns its address and thread id.
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
                        Server::Bare(a) => {
                            if let Ok(mut s) = a.accept(tcp).await
                                && s.read_exact(&mut byte).await.is_ok()
                            {
                                let _ = s.write_all(&byte).await;
                                let _ = s.shutdown().await;
                            }
                        }
                        Server::Mesh(a) => {
                            if let Ok((mut s, _peer)) = a.accept(tcp).await
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

#[derive(Clone)]
enum Client {
    Bare(TlsConnector),
    Mesh(meshtls::Connector),
}

async fn one(client: &Client, addr: SocketAddr) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut byte = [7u8; 1];
    match client {
        Client::Bare(c) => {
            let mut s = c
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            s.write_all(&byte).await.unwrap();
            s.read_exact(&mut byte).await.unwrap();
        }
        Client::Mesh(c) => {
            let (mut s, _) = c.connect("localhost", tcp).await.unwrap();
            s.write_all(&byte).await.unwrap();
            s.read_exact(&mut byte).await.unwrap();
        }
    }
}

/// Drives `concurrency` client loops for one round.
fn drive(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    addr: SocketAddr,
    concurrency: usize,
) -> u64 {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, done, count) = (client.clone(), done.clone(), count.clone());
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        one(&client, addr).await;
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

struct Sample {
    rate: f64,
    server_cpu: f64,
    client_cpu: f64,
}

fn main() {
    let m = Material::new(Case::BASE);
    let mesh_server = support::meshtls_server(&m, true);
    let mesh_client = support::meshtls_client(&m, true, false);
    let (bare_addr, bare_tid) = start(Server::Bare(TlsAcceptor::from(support::bare_server(
        &m, true,
    ))));
    let (mesh_addr, mesh_tid) = start(Server::Mesh(mesh_server.acceptor()));
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
            let n = drive(&rt, client, addr, concurrency);
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
