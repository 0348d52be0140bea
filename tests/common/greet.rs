//! The greeter example (`examples/greeter`) served and called over meshtls,
//! for the test files that declare `mod greeter` beside `mod common`:
//! include it with `#[path = "common/greet.rs"] mod greet;`.
#![allow(dead_code)]

use meshtls::{ClientTls, Refused, ServerTls, refused};
use tonic::transport::Endpoint;

use crate::common::web::{endpoint, serve_grpc};
use crate::greeter;

/// Serves the plain greeter on `server`'s acceptor at 127.0.0.1:0: the
/// endpoint to call, and the serving task.
pub async fn serve_greeter(
    server: &ServerTls,
) -> (
    Endpoint,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let (addr, serving) = serve_grpc(server, tonic::service::Routes::new(greeter::server())).await;
    (endpoint(addr), serving)
}

/// What a call failed with: the refusal found in the error, if any, and
/// the error as tonic gave it.
#[derive(Debug)]
pub struct Failed {
    pub refused: Option<Refused>,
    pub said: String,
    pub status: Option<tonic::Status>,
}

/// Connects as `client` (to "localhost") and says "hi": the reply, or what
/// failed, whether the connection or the call.
pub async fn hello(client: &ClientTls, endpoint: Endpoint) -> Result<String, Failed> {
    match meshtls::tonic::channel(client, endpoint, "localhost").await {
        Err(e) => Err(Failed {
            refused: refused(&e),
            said: format!("{e:?}"),
            status: None,
        }),
        Ok(channel) => greeter::say_hello(channel, "hi")
            .await
            .map_err(|status| Failed {
                refused: refused(&status),
                said: format!("{status:?}"),
                status: Some(status),
            }),
    }
}
