//! The `metrics` feature, scraped as Prometheus text after an admitted
//! handshake, a refused one, reloads (applied, unchanged, rejected) and a
//! live connection closed by a revocation. One test: the recorder is global
//! to the process.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Pki, replace, shop};
use meshtls::{Event, RejectReason};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of `name{labels...}` in the scrape, whatever the label order.
fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, number) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| number.parse().ok())?
    })
}

#[tokio::test]
async fn handshakes_reloads_expiry_and_closed_connections_are_exported() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    let pki = Pki::new();
    let crl = pki.write_crl(&[]);
    let server = pki
        .server_admitting(&shop("web"))
        .crl_file(&crl)
        .live_connection_grace(Duration::ZERO)
        .build()
        .unwrap();
    let mut events = server.subscribe();
    let mut running = common::serve(&server).await;
    let server_side = [("side", "server")];

    // An admitted handshake, kept open.
    let web_cert = pki.client_cert(&shop("web"));
    let web = pki.client_with(&web_cert).build().unwrap();
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let (mut open, _) = web.connector().connect("localhost", tcp).await.unwrap();
    running.expect_admitted().await;
    // A refused one.
    let other = pki.client(&shop("other")).build().unwrap();
    running
        .assert_refused(&other, "AccessDenied", RejectReason::NotAllowed)
        .await;

    let scrape = recorder.render();
    let admitted = [
        ("side", "server"),
        ("result", "admitted"),
        ("reason", "none"),
    ];
    let refused = [
        ("side", "server"),
        ("result", "refused"),
        ("reason", "not_allowed"),
    ];
    assert_eq!(
        value(&scrape, "meshtls_handshakes_total", &admitted),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, "meshtls_handshakes_total", &refused),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, "meshtls_live_connections", &server_side),
        Some(1.0),
        "{scrape}"
    );
    let full = [("side", "server"), ("kind", "full")];
    assert_eq!(
        value(&scrape, "meshtls_handshake_duration_seconds_count", &full),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, "meshtls_generation", &server_side),
        Some(1.0)
    );
    let identity = [("side", "server"), ("role", "identity")];
    let not_after = server.certificate().not_after;
    let expected = not_after.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
    assert_eq!(
        value(
            &scrape,
            "meshtls_certificate_expiration_timestamp_seconds",
            &identity
        ),
        Some(expected)
    );
    let not_before = server.certificate().not_before;
    let issued = not_before.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
    assert_eq!(
        value(
            &scrape,
            "meshtls_certificate_issued_timestamp_seconds",
            &identity
        ),
        Some(issued)
    );
    let crl_next = [("side", "server"), ("role", "crl_next_update")];
    let next = value(
        &scrape,
        "meshtls_certificate_expiration_timestamp_seconds",
        &crl_next,
    )
    .expect("no CRL nextUpdate gauge");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now + 3000.0..now + 3700.0).contains(&next),
        "{next} vs {now}"
    );
    assert!(
        value(
            &scrape,
            "meshtls_certificate_expiration_timestamp_seconds",
            &[("role", "root")]
        )
        .is_some()
    );

    // Reloads: unchanged, rejected, applied (a revocation of the open one).
    server.reload().unwrap();
    replace(&crl, "not a CRL");
    server.reload().unwrap_err();
    replace(
        &crl,
        pki.ca.crl(&[&web_cert], Duration::from_secs(3600)).unwrap(),
    );
    server.reload().unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("no ConnectionClosed within 10 s")
            .unwrap();
        if matches!(event, Event::ConnectionClosed { .. }) {
            break;
        }
    }
    // The client's side ends; the server's handler drops its stream.
    let _ = open.write_all(b"ping\n").await;
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest).await;
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let scrape = recorder.render();
    let reloads = |result| {
        value(
            &scrape,
            "meshtls_reloads_total",
            &[("side", "server"), ("result", result)],
        )
    };
    assert_eq!(reloads("applied"), Some(2.0), "{scrape}");
    assert_eq!(reloads("unchanged"), Some(1.0), "{scrape}");
    assert_eq!(reloads("rejected"), Some(1.0), "{scrape}");
    assert_eq!(
        value(&scrape, "meshtls_generation", &server_side),
        Some(2.0)
    );
    let revoked = [("side", "server"), ("reason", "revoked")];
    assert_eq!(
        value(&scrape, "meshtls_connections_closed_total", &revoked),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, "meshtls_live_connections", &server_side),
        Some(0.0),
        "{scrape}"
    );
    // Labels are bounded sets: no identity, serial or address in any series.
    assert!(!scrape.contains("spiffe://"), "{scrape}");
    assert!(!scrape.contains(web_cert.serial()), "{scrape}");
}
