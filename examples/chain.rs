//! A call chain on loopback: gateway -> A -> B -> C. Every hop is an mTLS
//! call, and every callee admits only its own caller's SPIFFE ID, so a call
//! that skips a hop (gateway straight to C) is refused.
//!
//! ```sh
//! cargo run --example chain
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

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
    match run().await {
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
