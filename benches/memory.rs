//! Memory per established server connection, meshtls vs bare rustls: the
//! slope of live heap bytes between 2,000 and 10,000 connections held in
//! memory (handshakes done in memory, client sides dropped). meshtls's
//! connections also keep the `PeerIdentity` the acceptor hands out.
//!
//! ```sh
//! cargo bench --bench memory
//! ```
#![allow(unsafe_code)] // the counting allocator below; benchmark code only

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use meshtls::rustls::ServerConnection;
use meshtls::rustls::pki_types::ServerName;
use meshtls::rustls::{ClientConnection, ServerConfig};
use support::{Case, Material};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One handshake in memory; returns the established server side.
fn establish(
    server: &std::sync::Arc<ServerConfig>,
    client: &std::sync::Arc<meshtls::rustls::ClientConfig>,
) -> ServerConnection {
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut input = &buf[..];
        while !input.is_empty() {
            s.read_tls(&mut input).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut input = &buf[..];
        while !input.is_empty() {
            c.read_tls(&mut input).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    s
}

fn slope(mut hold: impl FnMut(usize) -> Box<dyn std::any::Any>) -> f64 {
    let (small, large) = (2_000, 10_000);
    let base = LIVE.load(Ordering::Relaxed);
    let a = hold(small);
    let at_small = LIVE.load(Ordering::Relaxed) - base;
    drop(a);
    let base = LIVE.load(Ordering::Relaxed);
    let b = hold(large);
    let at_large = LIVE.load(Ordering::Relaxed) - base;
    drop(b);
    (at_large - at_small) as f64 / (large - small) as f64
}

fn main() {
    let m = Material::new(Case::BASE);
    let bare_server = support::bare_server(&m, true);
    let bare_client = support::bare_client(&m, true, false);
    let mesh = support::meshtls_server(&m, true);
    let mesh_config = mesh.config();
    let mesh_client = support::meshtls_client(&m, true, false).config();
    let acceptor = mesh.acceptor();

    let bare = slope(|n| {
        let conns: Vec<ServerConnection> = (0..n)
            .map(|_| establish(&bare_server, &bare_client))
            .collect();
        Box::new(conns)
    });
    let meshtls = slope(|n| {
        let conns: Vec<(ServerConnection, meshtls::PeerIdentity)> = (0..n)
            .map(|_| {
                let conn = establish(&mesh_config, &mesh_client);
                let peer = acceptor.identify(&conn).unwrap();
                (conn, peer)
            })
            .collect();
        Box::new(conns)
    });
    println!("live heap bytes per established server connection (slope 2,000 -> 10,000)\n");
    println!("| setup | bytes / connection |");
    println!("|---|---|");
    println!("| bare rustls `ServerConnection` | {bare:.0} |");
    println!("| meshtls `ServerConnection` + `PeerIdentity` | {meshtls:.0} |");
    println!("| **meshtls / bare** | **{:.3}x** |", meshtls / bare);
}
