//! An echo WebSocket server on exactly relay's transport: the node's own
//! upgrade answer (`relay::http::WsUpgrade`), reader loop, writer task,
//! bounded queue and closing handshake (`relay::session::echo`), with an
//! inbound handler that sends every message back. It exists to run the
//! Autobahn|Testsuite (RFC 6455) cases against the transport
//! (`scripts/autobahn`); it refuses to listen on a non-loopback address.
//!
//!     cargo run --example echo -- 127.0.0.1:9001

use std::net::SocketAddr;
use std::time::Duration;

use axum::response::Response;
use axum::routing::get;
use axum::Router;
use relay::http::WsUpgrade;

/// Large enough for the 16 MiB messages of Autobahn's 9.* cases.
const MAX_MESSAGE: usize = 32 << 20;

async fn echo(ws: WsUpgrade) -> Response {
    let (response, socket) = ws.accept(None, MAX_MESSAGE);
    tokio::spawn(async move {
        if let Some(socket) = socket.await {
            relay::session::echo::run(socket, Duration::from_secs(25), 100_000, 2 * MAX_MESSAGE)
                .await;
        }
    });
    response
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the echo server listens on loopback addresses only",
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("echo listening on ws://{}", listener.local_addr()?);
    let app = Router::new().route("/", get(echo)).fallback(get(echo));
    axum::serve(listener, app).await
}
