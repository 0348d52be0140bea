//! CRLs matched to the CA that signed them, newest first, and sets of CRLs
//! that cannot be read one way only: refused at load, naming both.

mod common;

use std::time::{Duration, SystemTime};

use common::{BuilderExt, Pki, Wire, bare_client, shop, start};
use meshtls::dev::DevCa;
use meshtls::error::MaterialError;
use meshtls::rustls;
use meshtls::{Allow, Error, ManualClock};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Issue 19, defect 8: two CRLs of one CA with the same CRL number and
/// thisUpdate but different contents. Which is "newest" cannot be told, and
/// taking the first listed hid the second's revocation: refuse the set.
#[test]
fn two_crls_of_one_ca_that_tie_but_differ_are_refused() {
    let pki = Pki::new();
    let revoked = pki.client_cert(&shop("web"));
    let this_update = SystemTime::now() - Duration::from_secs(60);
    // Two handles on one CA key that each count their own CRL numbers: a
    // CA that reissued without moving its number on.
    let twin = DevCa::from_pem(pki.ca.cert_pem(), pki.ca.key_pem()).unwrap();
    let clean = pki
        .ca
        .crl_between(&[], this_update, this_update + HOUR)
        .unwrap();
    let revoking = twin
        .crl_between(&[revoked.serial()], this_update, this_update + HOUR)
        .unwrap();
    let crl = pki.write("ca.crl", format!("{clean}{revoking}"));
    let err = pki
        .server_td()
        .crl_file(&crl)
        .build()
        .map(|_| ())
        .expect_err("a set of CRLs that contradict each other was accepted");
    assert!(
        matches!(err, Error::Material(MaterialError::CrlConflict { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("#0") && text.contains("#1"), "{text}");

    // The same CRL twice is no conflict.
    let twice = pki.write("twice.crl", format!("{revoking}{revoking}"));
    pki.server_td().crl_file(&twice).build().unwrap();
}

/// `DevCa::crl` issued twice in a row (the same millisecond, the same
/// thisUpdate second): the second is newer, and its revocation holds.
#[tokio::test]
async fn dev_ca_crls_issued_back_to_back_are_ordered() {
    let pki = Pki::new();
    let revoked = pki.client_cert(&shop("web"));
    let mut pem = String::new();
    for _ in 0..5 {
        pem.push_str(&pki.ca.crl(&[], HOUR).unwrap());
    }
    pem.push_str(&pki.ca.crl(&[&revoked], HOUR).unwrap());
    let crl = pki.write("ca.crl", pem);
    let (_server, mut running) = start(pki.server_td().crl_file(&crl)).await;
    running
        .assert_revoked(&pki.client_with(&revoked).build().unwrap())
        .await;
}

// Found by the red team of issue 19: a CA that signs one CRL twice (ECDSA
// signatures differ) must not be read as a conflict.

/// Two CRLs that say exactly the same thing (same issuer key, number,
/// thisUpdate, nextUpdate, no entries): two signers of one CA (a CA
/// cluster, two runs of a CRL job from the same CA files in one
/// millisecond, a mirror that re-signs), each signature its own (ECDSA).
fn same_crl_signed_twice(pki: &Pki) -> (String, String) {
    let twin = DevCa::from_pem(pki.ca.cert_pem(), pki.ca.key_pem()).unwrap();
    let this_update = SystemTime::now() - Duration::from_secs(60);
    let next_update = this_update + Duration::from_secs(86_400);
    let a = pki.ca.crl_between(&[], this_update, next_update).unwrap();
    let b = twin.crl_between(&[], this_update, next_update).unwrap();
    assert_ne!(a, b, "the two signatures should differ (ECDSA)");
    (a, b)
}

#[test]
fn control_the_same_crl_bytes_twice_load() {
    let pki = Pki::new();
    let (a, _) = same_crl_signed_twice(&pki);
    let first = pki.write("first.crl", &a);
    let second = pki.write("second.crl", &a);
    pki.server_td()
        .crl_file(first)
        .crl_file(second)
        .build()
        .expect("the same CRL twice is refused");
}

#[test]
fn the_same_crl_signed_twice_loads() {
    let pki = Pki::new();
    let (a, b) = same_crl_signed_twice(&pki);
    let first = pki.write("first.crl", &a);
    let second = pki.write("second.crl", &b);
    let built = pki.server_td().crl_file(first).crl_file(second).build();
    if let Err(e) = built {
        panic!(
            "two CRLs with the same issuer key, number, dates and (no) entries, differing only in \
             their signatures, refuse the whole set (a reload would keep the old generation): {e}"
        );
    }
}

// ---------------------------------------------------------------------------
// Found by the second red team of issue 19: two CRLs of one CA key with the
// same CRL number, thisUpdate and revoked serials (the CA re-signed its CRL
// with a later nextUpdate, or two publishers share its key) are one CRL; the
// first in file order used to be kept whatever its nextUpdate, so a shorter
// one first made every handshake fail once it passed, with a fresh copy in
// the same file. The one that stays fresh longer is kept.
// ---------------------------------------------------------------------------

/// The CA's two equivalent CRLs (valid 1 h and 20 days), in the order
/// given; then a client's full handshake 2 h later.
fn handshake_two_hours_after(short_first: bool) -> Result<(), String> {
    let pki = Pki::new();
    let now = SystemTime::now();
    // Two handles on the CA's key: each numbers its CRLs from the same
    // thisUpdate, so both get the same CRL number.
    let twin = DevCa::from_pem(pki.ca.cert_pem(), pki.ca.key_pem()).unwrap();
    let this_update = now - Duration::from_secs(60);
    let short = pki.ca.crl_between(&[], this_update, now + HOUR).unwrap();
    let long = twin.crl_between(&[], this_update, now + 20 * DAY).unwrap();
    let crls = if short_first {
        format!("{short}{long}")
    } else {
        format!("{long}{short}")
    };
    let crl = pki.write("ca.crl", crls);
    let time = ManualClock::new(now);
    let server = pki
        .server_allow(Allow::spiffe_id(&shop("web")))
        .crl_file(&crl)
        .on_clock(&time)
        .build()
        .unwrap();
    let cert = pki
        .ca
        .leaf()
        .spiffe(&shop("web"))
        .client()
        .valid_for(2 * DAY)
        .issue()
        .unwrap();
    let client = || bare_client(pki.ca.cert_pem(), Some(&cert), &[&rustls::version::TLS13]);
    Wire::new(server.config(), client())
        .complete()
        .expect("admitted while both CRLs are fresh");
    time.advance(2 * HOUR);
    Wire::new(server.config(), client()).complete()
}

#[test]
fn control_equivalent_crls_long_first_keep_admitting() {
    handshake_two_hours_after(false).expect("refused with a fresh CRL in the file");
}

#[test]
fn equivalent_crls_short_first_keep_admitting() {
    let result = handshake_two_hours_after(true);
    assert!(
        result.is_ok(),
        "the CRL file holds two CRLs of the CA with the same number, thisUpdate and revoked \
         serials, valid 1 h and 20 days: 2 h later a client is refused ({result:?}) because \
         the one kept is the first in the file, now stale"
    );
}
