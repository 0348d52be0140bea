//! The loopback harness that `benches/loopback.rs` and `bench-openssl` share:
//! a one-byte echo server on its own thread (so its CPU time can be read on
//! its own), and client loops driven for one round.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::threads::current_tid;

/// Serves on 127.0.0.1 from a thread of its own with a current-thread
/// runtime; every accepted socket goes to `handle` on a task. Returns the
/// address and the server thread's id.
pub fn serve<H, F>(handle: H) -> (SocketAddr, String)
where
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
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
            let handle = Arc::new(handle);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                tokio::spawn(handle(tcp));
            }
        });
    });
    rx.recv().unwrap()
}

/// The server's side of one exchange: one byte in, the same byte out.
pub async fn echo_byte<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut byte = [0u8; 1];
    if stream.read_exact(&mut byte).await.is_ok() {
        let _ = stream.write_all(&byte).await;
        let _ = stream.shutdown().await;
    }
}

/// The client's side of one exchange, on a stream whose handshake is done.
pub async fn send_byte<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut byte = [7u8; 1];
    stream.write_all(&byte).await.unwrap();
    stream.read_exact(&mut byte).await.unwrap();
}

/// A fresh TCP connection to `addr`, without Nagle.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Runs `concurrency` loops of `one` for `round`; how many completed.
pub fn drive<C, F>(rt: &tokio::runtime::Runtime, concurrency: usize, round: Duration, one: C) -> u64
where
    C: Fn() -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (one, done, count) = (one.clone(), done.clone(), count.clone());
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        one().await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(round).await;
        done.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    });
    count.load(Ordering::Relaxed)
}
