//! Mutual TLS for Rust services the way a service mesh does it, without the
//! mesh.
//!
//! meshtls builds hardened rustls configs for both sides of a connection:
//! TLS 1.3 only, a client certificate required, every peer's identity checked
//! against an allow-list of SPIFFE IDs, DNS names or (opt-in) legacy CNs, and
//! certificates, trust bundles and CRLs that rotate with no restart: on
//! disk, pushed by the application ([`Mtls::update`] with an [`Update`] from
//! Vault, a secret manager or its own code), or streamed from a SPIRE agent
//! (the SPIFFE Workload API, feature `workload-api`: `Builder::workload_api`).
//!
//! # The model
//!
//! A [`ServerTls`] or [`ClientTls`] holds one `Arc<rustls::ServerConfig>` /
//! `Arc<rustls::ClientConfig>` that never goes stale: its certificate
//! resolver, verifier and session state read the current *generation*, a
//! validated set of material swapped in whole. Hand the config to any
//! framework that takes a rustls config, or use the [`Acceptor`] /
//! [`Connector`], which add a timeout, a judgment of every peer after its
//! handshake (closing the few windows a bare config leaves) and the
//! peer's [`PeerIdentity`].
//!
//! # A tour
//!
//! ```no_run
//! use meshtls::{Allow, ClientTls, ServerTls};
//!
//! # async fn tour() -> Result<(), Box<dyn std::error::Error>> {
//! // The server: its own identity, the CA that signs clients, who may call.
//! let server = ServerTls::builder()
//!     .identity_files("tls/server.crt", "tls/server.key")
//!     .client_roots_file("tls/ca.crt")
//!     .allow(Allow::spiffe_pattern("spiffe://prod.example/ns/billing/**"))
//!     .allow(Allow::dns("*.svc.cluster.local"))
//!     .watch()?; // reloads on rotation; `.build()` for static files
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! let acceptor = server.acceptor();
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         match acceptor.accept(tcp).await {
//!             Ok((_tls, peer)) => println!("accepted {peer}"),
//!             Err(e) => eprintln!("refused: {e}"), // e.reason(): NotAllowed, Revoked, ...
//!         }
//!     }
//! });
//!
//! // The client: verifies the server by its SPIFFE ID.
//! let client = ClientTls::builder()
//!     .identity_files("tls/client.crt", "tls/client.key")
//!     .server_roots_file("tls/ca.crt")
//!     .expect_server(Allow::spiffe_id("spiffe://prod.example/ns/billing/sa/api"))
//!     .build()?;
//! let tcp = tokio::net::TcpStream::connect("127.0.0.1:8443").await?;
//! let (_tls, server_identity) = client.connector().connect("localhost", tcp).await?;
//! println!("server is {server_identity}");
//! # Ok(())
//! # }
//! ```
//!
//! # Defaults
//!
//! - TLS 1.3 only, with a crypto provider of meshtls's own (aws-lc-rs, or
//!   `ring` with the `ring` feature): never the process default.
//! - Cipher suites AES-256-GCM and ChaCha20-Poly1305 (AES-128-GCM on request);
//!   key exchange X25519MLKEM768 first, then X25519, P-256, P-384.
//! - Client certificates required; no allow-list, no build
//!   (`.dangerous().allow_any_authenticated()` opts out on purpose; every
//!   option that weakens a default is behind [`Builder::dangerous`]).
//! - With CRLs, unknown revocation status is refused and stale CRLs are
//!   enforced.
//! - A refused handshake sends the TLS alert (`access_denied` for policy);
//!   the reason (certificate, rule) goes to [`Event`]s and `tracing`.
//!
//! See the [`reload`] module for what a rotation does to connections and
//! resumption.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    unnameable_types,
    unused_qualifications,
    elided_lifetimes_in_paths,
    clippy::use_self,
    clippy::exhaustive_enums,
    clippy::exhaustive_structs
)]

mod accept;
mod allow;
#[cfg(feature = "axum")]
pub mod axum;
mod builder;
mod client;
mod clock;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
mod handle;
mod hardening;
mod identity;
mod judge;
mod live;
mod material;
mod observe;
#[cfg(feature = "pkcs12")]
mod pkcs12;
mod policy;
mod refusal;
pub mod reload;
mod revocation;
mod server;
mod session;
pub mod side;
mod source;
mod spiffe;
#[cfg(feature = "tonic")]
pub mod tonic;
mod track;
mod verify;
#[cfg(feature = "workload-api")]
pub mod workload;

pub use accept::{Acceptor, Incoming, MtlsStream, PeerInfo};
pub use allow::Allow;
pub use builder::{Builder, Dangerous, NeedsIdentity, NeedsRoots, Ready};
pub use client::{ClientTls, ClientTlsBuilder, Connector};
pub use clock::{Clock, ManualClock};
pub use error::{Error, HandshakeError, RejectReason};
pub use handle::Mtls;
pub use identity::{IdentityError, PeerIdentity, VouchedBy};
pub use judge::RevocationScope;
pub use live::ReloadOutcome;
pub use material::Update;
pub use observe::{CertFacts, Event, Stats};
pub use policy::{NotAllowed, Policy};
pub use refusal::{Refused, RefusedBy, refused};
pub use server::{ServerTls, ServerTlsBuilder};
pub use session::Resumption;
pub use source::Source;
pub use spiffe::{SpiffeId, TrustDomain};
pub use track::Tracked;
#[cfg(feature = "workload-api")]
pub use workload::{SvidChoice, WorkloadApi};

/// The rustls this crate was built with, so you name the same version.
pub use rustls;
/// The tokio-rustls this crate was built with.
pub use tokio_rustls;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
