//! In-memory mutual TLS handshakes, meshtls vs hand-written rustls on the
//! same certificates, provider and key-exchange group; server and client time
//! measured separately, full and resumed (a ticket actually used, checked).
//!
//! The two setups run interleaved in rounds (bare, meshtls, meshtls, bare,
//! ...) and the ratio is taken per round, so drift on a shared machine hits
//! both alike. meshtls's time includes the acceptor's / connector's
//! post-handshake judgment (`identify`) and, on the server, the judgment of
//! the client inside each ticket sealed and opened.
//!
//! ```sh
//! cargo bench --bench handshake
//! ```

mod support;

use std::time::Duration;

use meshtls::rustls::HandshakeKind;
use support::{Case, Checks, Material, Sides, handshake, median, us};

const ROUNDS: usize = 15;
const PER_ROUND: usize = 60;

struct Setup {
    server: std::sync::Arc<meshtls::rustls::ServerConfig>,
    client: std::sync::Arc<meshtls::rustls::ClientConfig>,
    acceptor: Option<meshtls::Acceptor>,
    connector: Option<meshtls::Connector>,
}

impl Setup {
    fn run(&self, want: HandshakeKind) -> Sides {
        let checks = Checks {
            server: self.acceptor.as_ref(),
            client: self.connector.as_ref(),
        };
        if want == HandshakeKind::Resumed {
            // Make sure the client holds a ticket.
            let (_, kind) = handshake(&self.server, &self.client, &checks);
            assert!(kind == HandshakeKind::Full || kind == HandshakeKind::Resumed);
        }
        let mut total = Sides::default();
        for _ in 0..PER_ROUND {
            let (t, kind) = handshake(&self.server, &self.client, &checks);
            assert_eq!(kind, want, "expected a {want:?} handshake");
            total.server += t.server;
            total.client += t.client;
        }
        total
    }
}

/// Handshakes from many distinct clients, server side. Full: more clients
/// than an epoch remembers verdicts for, so every meshtls handshake parses
/// and judges its client. Resumed: likewise, so nearly every resumption
/// finds no remembered verdict (an arbitrary entry makes room when the memo
/// is full) and pays the full judgment when its ticket is opened.
fn distinct_clients(kind: HandshakeKind, clients: usize) {
    let case = Case::BASE;
    let resume = kind == HandshakeKind::Resumed;
    let m = Material::new(case);
    let server = support::meshtls_server(&m, true);
    let bare_server = support::bare_server(&m, true);
    let acceptor = server.acceptor();
    let mut material = Material::new(case);
    let pool: Vec<_> = (0..clients)
        .map(|_| {
            // Same CA and server; a new client certificate each.
            let (chain, key) = m.with_new_client();
            material.client_chain = chain;
            material.client_key = key;
            material.ca_pem = m.ca_pem.clone();
            (
                support::bare_client(&material, true, resume),
                support::meshtls_client(&material, true, resume).config(),
            )
        })
        .collect();
    let none = Checks {
        server: None,
        client: None,
    };
    let with_acceptor = Checks {
        server: Some(&acceptor),
        client: None,
    };
    if resume {
        // Every client holds a ticket before the rounds start.
        for (bare_client, mesh_client) in &pool {
            handshake(&bare_server, bare_client, &none);
            handshake(&server.config(), mesh_client, &with_acceptor);
        }
    }
    let (mut sb, mut sm, mut sr) = (vec![], vec![], vec![]);
    let mut next = 0;
    for round in 0..ROUNDS {
        let mut run = |mesh: bool| {
            let mut total = Duration::ZERO;
            for _ in 0..PER_ROUND {
                let (bare_client, mesh_client) = &pool[next % clients];
                next += 1;
                let (t, got) = if mesh {
                    handshake(&server.config(), mesh_client, &with_acceptor)
                } else {
                    handshake(&bare_server, bare_client, &none)
                };
                assert_eq!(got, kind, "expected a {kind:?} handshake");
                total += t.server;
            }
            total
        };
        let (b, x) = if round % 2 == 0 {
            let b = run(false);
            (b, run(true))
        } else {
            let x = run(true);
            (run(false), x)
        };
        sb.push(per(b));
        sm.push(per(x));
        sr.push(b.as_secs_f64() / x.as_secs_f64());
    }
    println!(
        "| {}, {clients} distinct clients (verdicts not remembered) | {kind:?} | {} | {} | {:.2}x | | | |",
        case.name(),
        us(median(sb)),
        us(median(sm)),
        median(sr)
    );
}

fn per(d: Duration) -> f64 {
    d.as_secs_f64() / PER_ROUND as f64
}

fn main() {
    println!(
        "in-memory handshakes: {ROUNDS} interleaved rounds x {PER_ROUND} handshakes per setup; medians"
    );
    println!("ratio = meshtls throughput / bare rustls throughput (1.00 = same speed)\n");
    println!(
        "| case | kind | server bare | server meshtls | server ratio | client bare | client meshtls | client ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for case in Case::all() {
        let m = Material::new(case);
        let pq = case.post_quantum;
        let server = support::meshtls_server(&m, pq);
        let bare_server = support::bare_server(&m, pq);
        for kind in [HandshakeKind::Full, HandshakeKind::Resumed] {
            let resume = kind == HandshakeKind::Resumed;
            let client = support::meshtls_client(&m, pq, resume);
            let bare = Setup {
                server: bare_server.clone(),
                client: support::bare_client(&m, pq, resume),
                acceptor: None,
                connector: None,
            };
            let mesh = Setup {
                server: server.config(),
                client: client.config(),
                acceptor: Some(server.acceptor()),
                connector: Some(client.connector()),
            };
            let (mut sb, mut sm, mut cb, mut cm, mut sr, mut cr) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for round in 0..ROUNDS {
                let (b, x) = if round % 2 == 0 {
                    let b = bare.run(kind);
                    (b, mesh.run(kind))
                } else {
                    let x = mesh.run(kind);
                    (bare.run(kind), x)
                };
                sb.push(per(b.server));
                sm.push(per(x.server));
                cb.push(per(b.client));
                cm.push(per(x.client));
                sr.push(b.server.as_secs_f64() / x.server.as_secs_f64());
                cr.push(b.client.as_secs_f64() / x.client.as_secs_f64());
            }
            println!(
                "| {} | {:?} | {} | {} | {:.2}x | {} | {} | {:.2}x |",
                case.name(),
                kind,
                us(median(sb)),
                us(median(sm)),
                median(sr),
                us(median(cb)),
                us(median(cm)),
                median(cr)
            );
        }
    }
    distinct_clients(HandshakeKind::Full, 1500);
    distinct_clients(HandshakeKind::Resumed, 3000);
}
