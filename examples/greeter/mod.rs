//! The examples' gRPC service, generated from `greeter.proto` by the build
//! script (protox + tonic's code generator: no `protoc` needed), and a
//! `Greeter` that answers with the caller's verified identity.
#![allow(dead_code, unreachable_pub)]

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The generated messages, server and client.
pub mod proto {
    tonic::include_proto!("meshtls.example");
}

use proto::greeter_client::GreeterClient;
use proto::greeter_server::{Greeter as GreeterService, GreeterServer};
use proto::{HelloReply, HelloRequest};

/// Greets callers by the identity meshtls verified.
#[derive(Debug, Default)]
pub struct Greeter;

#[tonic::async_trait]
impl GreeterService for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let caller = meshtls::tonic::peer(&request)
            .map(|peer| peer.to_string())
            .ok_or_else(|| Status::unauthenticated("no mTLS peer identity"))?;
        let message = format!("hello {caller}, you said {:?}", request.get_ref().name);
        Ok(Response::new(HelloReply { message }))
    }
}

/// The service, ready for `Server::builder().add_service(..)`.
pub fn server() -> GreeterServer<Greeter> {
    GreeterServer::new(Greeter)
}

/// Calls `SayHello` once on `channel`.
pub async fn say_hello(channel: Channel, name: &str) -> Result<String, Status> {
    let reply = GreeterClient::new(channel)
        .say_hello(HelloRequest {
            name: name.to_owned(),
        })
        .await?;
    Ok(reply.into_inner().message)
}
