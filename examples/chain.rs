//! A call chain: gateway -> A -> B -> C. Every hop is an mTLS call, and
//! every callee admits only its own caller's SPIFFE ID, so a call that skips
//! a hop (gateway straight to C) is refused.
//!
//! ```sh
//! cargo run --example chain        # all four on loopback, in one process
//! ```
//!
//! The same services run as separate hosts (`.ci/multihost` runs them in
//! four network namespaces), from files that rotate:
//!
//! ```sh
//! chain hop  --name svc-b --listen 10.77.0.3:8443 --cert F --key F --ca F [--crl F]
//!            --caller svc-a [--next svc-c@10.77.0.4:8443] [--grace-ms N]
//! chain call --cert F --key F --ca F --to svc-a@10.77.0.2:8443 [--count N]
//!            [--interval-ms N] [--new-connection-each]
//! ```
//!
//! A hop keeps one connection to the next hop and opens a new one when that
//! fails (the next hop restarted, or closed it); `call` prints one line per
//! request and a summary `N ok, M failed`.

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use meshtls::dev::{DevCa, DevCert};
use meshtls::{Allow, ClientTls, ServerTls, Source};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn id(name: &str) -> String {
    format!("spiffe://chain.example/{name}")
}

fn client(ca: &DevCa, me: &DevCert, callee: &str) -> Result<ClientTls, Error> {
    Ok(ClientTls::builder()
        .identity(
            Source::pem(format!("{callee} caller chain"), me.chain_pem()),
            Source::pem("key", me.key_pem()),
        )
        .server_roots(Source::pem("CA", ca.cert_pem()))
        .expect_server(Allow::spiffe_id(&id(callee)))
        .build()?)
}

/// Sends one line to `callee` at `addr`, returns its one-line answer.
async fn call(client: &ClientTls, addr: SocketAddr, line: &str) -> Result<String, Error> {
    let tcp = TcpStream::connect(addr).await?;
    let (tls, _) = client.connector().connect("localhost", tcp).await?;
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await?;
    let mut answer = String::new();
    if tls.read_line(&mut answer).await? == 0 {
        return Err("closed without an answer".into());
    }
    Ok(answer.trim_end().to_owned())
}

/// Starts service `name`: admits only the workload `caller`, and calls
/// `next` if given.
async fn service(
    ca: &DevCa,
    name: &'static str,
    caller: &str,
    next: Option<(&'static str, SocketAddr)>,
) -> Result<SocketAddr, Error> {
    let cert = ca
        .leaf()
        .spiffe(&id(name))
        .dns("localhost")
        .server()
        .client()
        .issue()?;
    let server = ServerTls::builder()
        .identity(
            Source::pem(format!("{name} chain"), cert.chain_pem()),
            Source::pem("key", cert.key_pem()),
        )
        .client_roots(Source::pem("CA", ca.cert_pem()))
        .allow(Allow::spiffe_id(&id(caller)))
        .build()?;
    let onward = match next {
        Some((callee, addr)) => Some((client(ca, &cert, callee)?, addr)),
        None => None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok((tls, peer)) = acceptor.accept(tcp).await else {
                continue; // refused: the acceptor reported why
            };
            let mut tls = BufReader::new(tls);
            let mut request = String::new();
            if tls.read_line(&mut request).await.is_err() {
                continue;
            }
            let mut answer = format!("{name} saw caller {peer}");
            if let Some((client, addr)) = &onward {
                match call(client, *addr, request.trim_end()).await {
                    Ok(downstream) => answer = format!("{answer} | {downstream}"),
                    Err(e) => answer = format!("{answer} | next hop failed: {e}"),
                }
            }
            let _ = tls
                .get_mut()
                .write_all(format!("{answer}\n").as_bytes())
                .await;
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mode = std::env::args().nth(1);
    let result = match mode.as_deref() {
        Some("hop") => hop().await.map(|()| true),
        Some("call") => call_many().await,
        _ => run().await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Error> {
    let ca = DevCa::new("chain root")?;
    let c = service(&ca, "svc-c", "svc-b", None).await?;
    let b = service(&ca, "svc-b", "svc-a", Some(("svc-c", c))).await?;
    let a = service(&ca, "svc-a", "gateway", Some(("svc-b", b))).await?;
    let gateway = ca.leaf().spiffe(&id("gateway")).client().issue()?;

    println!("gateway -> svc-a -> svc-b -> svc-c, each callee admitting only its caller:");
    let through = call(&client(&ca, &gateway, "svc-a")?, a, "hello").await;
    let mut ok = match &through {
        Ok(answer) => {
            for hop in answer.split(" | ") {
                println!("  {hop}");
            }
            answer.matches("saw caller").count() == 3 && !answer.contains("failed")
        }
        Err(e) => {
            println!("  FAILED: {e}");
            false
        }
    };

    println!("gateway -> svc-c directly (skipping two hops):");
    match call(&client(&ca, &gateway, "svc-c")?, c, "hello").await {
        Ok(answer) => {
            println!("  FAILED: admitted: {answer}");
            ok = false;
        }
        Err(e) => println!("  refused, as it should be: {e}"),
    }
    println!(
        "{}",
        if ok {
            "chain behaved as expected"
        } else {
            "chain did NOT behave as expected"
        }
    );
    Ok(ok)
}

const HOST_USAGE: &str =
    "usage: chain hop --name NAME --listen ADDR --cert F --key F --ca F [--crl F]
                 --caller NAME [--next NAME@ADDR] [--grace-ms N]
       chain call --cert F --key F --ca F --to NAME@ADDR [--count N] [--interval-ms N]
                 [--new-connection-each] [--line TEXT]";

/// `NAME@ADDR`.
fn target(value: &str) -> Result<(String, SocketAddr), Error> {
    let (name, addr) = value
        .split_once('@')
        .ok_or(format!("{value:?}: expected NAME@ADDR"))?;
    Ok((name.to_owned(), addr.parse()?))
}

fn millis(args: &cli::Args, flag: &str, default: u64) -> Result<Duration, Error> {
    Ok(Duration::from_millis(match args.optional(flag) {
        Some(v) => v
            .parse()
            .map_err(|_| format!("--{flag} {v:?}: not a number"))?,
        None => default,
    }))
}

/// A client to `callee` from files, reloading them (and the CRL) on rotation.
fn file_client(args: &cli::Args, callee: &str, grace: Duration) -> Result<ClientTls, Error> {
    let mut builder = ClientTls::builder()
        .identity_files(args.required("cert")?, args.required("key")?)
        .server_roots_file(args.required("ca")?)
        .expect_server(Allow::spiffe_id(&id(callee)))
        .debounce(Duration::from_millis(50))
        .live_connection_grace(grace);
    if let Some(crl) = args.optional("crl") {
        builder = builder.crl_file(crl);
    }
    Ok(builder.watch()?)
}

type Line = BufReader<meshtls::Tracked<meshtls::tokio_rustls::client::TlsStream<TcpStream>>>;

/// One connection to a callee, kept open and opened again when it fails.
struct Upstream {
    client: ClientTls,
    addr: SocketAddr,
    conn: tokio::sync::Mutex<Option<Line>>,
    new_each: bool,
}

impl Upstream {
    async fn open(&self) -> Result<Line, Error> {
        let tcp = TcpStream::connect(self.addr).await?;
        let ip = self.addr.ip().to_string();
        let (tls, _) = self.client.connector().connect(&ip, tcp).await?;
        Ok(BufReader::new(tls))
    }

    async fn exchange(conn: &mut Line, line: &str) -> Result<String, Error> {
        conn.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut answer = String::new();
        if conn.read_line(&mut answer).await? == 0 {
            return Err("closed without an answer".into());
        }
        Ok(answer.trim_end().to_owned())
    }

    /// Sends `line` on the kept connection; if that fails, once more on a
    /// new one.
    async fn request(&self, line: &str) -> Result<String, Error> {
        let mut kept = self.conn.lock().await;
        if !self.new_each
            && let Some(conn) = kept.as_mut()
            && let Ok(answer) = Self::exchange(conn, line).await
        {
            return Ok(answer);
        }
        *kept = None;
        let mut conn = self.open().await?;
        let answer = Self::exchange(&mut conn, line).await?;
        if !self.new_each {
            *kept = Some(conn);
        }
        Ok(answer)
    }
}

/// One service of the chain as a host of its own.
async fn hop() -> Result<(), Error> {
    let args = cli::Args::parse(
        &[
            "name", "listen", "cert", "key", "ca", "crl", "caller", "next", "grace-ms",
        ],
        &[],
    )
    .map_err(|e| format!("{e}\n\n{HOST_USAGE}"))?;
    let name = args.required("name")?;
    let grace = millis(&args, "grace-ms", 1000)?;
    let mut builder = ServerTls::builder()
        .identity_files(args.required("cert")?, args.required("key")?)
        .client_roots_file(args.required("ca")?)
        .allow(Allow::spiffe_id(&id(&args.required("caller")?)))
        .debounce(Duration::from_millis(50))
        .live_connection_grace(grace);
    if let Some(crl) = args.optional("crl") {
        builder = builder.crl_file(crl);
    }
    let server = builder.watch()?;
    cli::log_events(server.subscribe());
    let next = match args.optional("next") {
        Some(next) => {
            let (callee, addr) = target(&next)?;
            let client = file_client(&args, &callee, grace)?;
            cli::log_events(client.subscribe());
            Some(Arc::new(Upstream {
                client,
                addr,
                conn: tokio::sync::Mutex::new(None),
                new_each: false,
            }))
        }
        None => None,
    };
    let listener = TcpListener::bind(args.required("listen")?).await?;
    println!("{name} listening on {}", listener.local_addr()?);
    let mut incoming = server.acceptor().incoming(listener);
    while let Some(conn) = incoming.next().await {
        let (name, next) = (name.clone(), next.clone());
        tokio::spawn(async move {
            let caller = conn.peer().to_string();
            let mut conn = BufReader::new(conn);
            loop {
                let mut request = String::new();
                match conn.read_line(&mut request).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let mut answer = format!("{name} saw caller {caller}");
                if let Some(next) = &next {
                    match next.request(request.trim_end()).await {
                        Ok(downstream) => answer = format!("{answer} | {downstream}"),
                        Err(e) => answer = format!("{answer} | next hop failed: {e}"),
                    }
                }
                if conn
                    .get_mut()
                    .write_all(format!("{answer}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// The gateway: `--count` requests through the chain; true when all passed
/// every hop.
async fn call_many() -> Result<bool, Error> {
    let args = cli::Args::parse(
        &[
            "cert",
            "key",
            "ca",
            "crl",
            "to",
            "count",
            "interval-ms",
            "line",
        ],
        &["new-connection-each"],
    )
    .map_err(|e| format!("{e}\n\n{HOST_USAGE}"))?;
    let (callee, addr) = target(&args.required("to")?)?;
    let upstream = Upstream {
        client: file_client(&args, &callee, Duration::from_secs(1))?,
        addr,
        conn: tokio::sync::Mutex::new(None),
        new_each: args.switch("new-connection-each"),
    };
    let count: usize = args.optional("count").map_or(Ok(1), |c| c.parse())?;
    let interval = millis(&args, "interval-ms", 0)?;
    let line = args.optional("line").unwrap_or_else(|| "hello".into());
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..count {
        match upstream.request(&line).await {
            Ok(answer) if !answer.contains("failed") => {
                ok += 1;
                println!("ok: {answer}");
            }
            Ok(answer) => {
                failed += 1;
                println!("failed: {answer}");
            }
            Err(e) => {
                failed += 1;
                println!("failed: {e}");
            }
        }
        tokio::time::sleep(interval).await;
    }
    println!("{ok} ok, {failed} failed");
    Ok(failed == 0)
}
