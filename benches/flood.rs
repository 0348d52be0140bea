//! A valid client's handshake latency while an attacker holds 10,000 silent
//! sockets and 1,000 slow-drip ClientHellos open against the server (each
//! reconnects as soon as the server drops it, so the pressure stays).
//! meshtls's `Incoming` against a bare tokio-rustls accept loop (a task per
//! connection, 10 s handshake timeout), in the same run.
//!
//! The attacker is this program again, in a child process (the descriptor
//! limit of one process would not hold both ends). Also reports the server's
//! memory per pending handshake (RSS growth under the attack, divided by the
//! handshakes pending).
//!
//! ```sh
//! cargo bench --bench flood
//! ```

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshtls::rustls::pki_types::ServerName;
use meshtls::tokio_rustls::{TlsAcceptor, TlsConnector};
use support::{Case, Material, median};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const SILENT: usize = 10_000;
const DRIP: usize = 1_000;
const SAMPLES: usize = 30;

/// The attacker: holds `SILENT` silent and `DRIP` dribbling connections to
/// the address in `MESHTLS_FLOOD_TARGET` until killed.
async fn attack(addr: SocketAddr) {
    for i in 0..SILENT + DRIP {
        let drip = i >= SILENT;
        tokio::spawn(async move {
            loop {
                let Ok(mut tcp) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if drip {
                    let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if tcp.write_all(&[0]).await.is_err() {
                            break;
                        }
                    }
                } else {
                    let mut buf = [0u8; 64];
                    // Until the server drops us; then again.
                    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            }
        });
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    println!("attacking");
    std::future::pending::<()>().await;
}

fn start_attacker(addr: SocketAddr) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("MESHTLS_FLOOD_TARGET", addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "attacking");
    child
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// One valid full handshake and a one-line exchange.
async fn valid(client: &Client, addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    match client {
        Client::Bare(c) => {
            let name = ServerName::try_from("localhost").unwrap();
            line(c.connect(name, tcp).await.unwrap()).await;
        }
        Client::Mesh(c) => line(c.connect("localhost", tcp).await.unwrap().0).await,
    }
    start.elapsed()
}

async fn line<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S) {
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"ping\n").await.unwrap();
    let mut answer = String::new();
    stream.read_line(&mut answer).await.unwrap();
}

enum Client {
    Bare(TlsConnector),
    Mesh(meshtls::Connector),
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S) {
    let mut stream = BufReader::new(stream);
    let mut l = String::new();
    if stream.read_line(&mut l).await.is_ok() {
        let _ = stream.get_mut().write_all(l.as_bytes()).await;
    }
}

async fn measure(name: &str, client: &Client, addr: SocketAddr) {
    let mut idle = Vec::new();
    for _ in 0..SAMPLES {
        idle.push(valid(client, addr).await);
    }
    let (rss0, fds0) = (rss_kib(), open_sockets());
    let mut attacker = start_attacker(addr);
    // Let the flood build up to its steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss1, fds1) = (rss_kib(), open_sockets());
    let mut under = Vec::new();
    for _ in 0..SAMPLES {
        under.push(valid(client, addr).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = attacker.kill();
    let _ = attacker.wait();
    let worst = *under.iter().max().unwrap();
    let secs = |v: &[Duration]| median(v.iter().map(Duration::as_secs_f64).collect());
    let (idle_m, under_m) = (secs(&idle), secs(&under));
    let held = fds1.saturating_sub(fds0);
    println!(
        "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:+.1} ms | {held} | {:.1} KiB |",
        idle_m * 1e3,
        under_m * 1e3,
        worst.as_secs_f64() * 1e3,
        (under_m - idle_m) * 1e3,
        (rss1.saturating_sub(rss0)) as f64 / held.max(1) as f64,
    );
    // Let the server shed what is left before the next setup.
    tokio::time::sleep(Duration::from_secs(4)).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(target) = std::env::var("MESHTLS_FLOOD_TARGET") {
        rt.block_on(attack(target.parse().unwrap()));
        return;
    }
    rt.block_on(async {
        let m = Material::new(Case::BASE);
        let mesh_server = support::meshtls_server(&m, true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mesh_addr = listener.local_addr().unwrap();
        let mut incoming = mesh_server.acceptor().incoming(listener);
        tokio::spawn(async move {
            while let Some(conn) = incoming.next().await {
                tokio::spawn(echo(conn));
            }
        });

        // The same, with a bound above the attack's size: nothing is shed.
        let roomy_server = support::meshtls_server_builder(&m, true)
            .max_pending_handshakes(16_384)
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let roomy_addr = listener.local_addr().unwrap();
        let mut incoming = roomy_server.acceptor().incoming(listener);
        tokio::spawn(async move {
            while let Some(conn) = incoming.next().await {
                tokio::spawn(echo(conn));
            }
        });

        let bare = TlsAcceptor::from(support::bare_server(&m, true));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let bare = bare.clone();
                tokio::spawn(async move {
                    let accept = tokio::time::timeout(Duration::from_secs(10), bare.accept(tcp));
                    if let Ok(Ok(stream)) = accept.await {
                        echo(stream).await;
                    }
                });
            }
        });

        let mesh_client = support::meshtls_client(&m, true, false);
        let bare_client = TlsConnector::from(support::bare_client(&m, true, false));
        println!(
            "a valid client's full handshake + one line, {SAMPLES} samples each, idle and under {SILENT} silent + {DRIP} slow-drip connections\n"
        );
        println!(
            "| server | idle median | under attack median | under attack worst | difference | descriptors held by the attack | server RSS per held connection |"
        );
        println!("|---|---|---|---|---|---|---|");
        measure("meshtls `Incoming` (default: 8,192 pending)", &Client::Mesh(mesh_client.connector()), mesh_addr).await;
        measure(
            "meshtls `Incoming`, max_pending_handshakes(16_384)",
            &Client::Mesh(mesh_client.connector()),
            roomy_addr,
        )
        .await;
        measure(
            "bare tokio-rustls, task per connection",
            &Client::Bare(bare_client),
            bare_addr,
        )
        .await;
    });
}
