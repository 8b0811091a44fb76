//! Opening a connection: the handshake URL (`?user=` and `&resume=` in guest
//! mode), headers (subprotocol, `Authorization: Bearer`), TLS for `wss://`
//! (rustls with the web roots, a `--ca-file`, or `--insecure`), and the
//! classification of failures into retryable and fatal ones.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::ChatArgs;
use crate::protocol::{decode_server_frame, Encoding, ServerFrame};

/// How long one connection attempt (TCP, TLS and upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a normal close waits for the server's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how to connect; built once from the command line.
pub(crate) struct Target {
    url: String,
    token: Option<String>,
    encoding: Encoding,
    tls: Option<Arc<ClientConfig>>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The server answered the handshake with an HTTP error.
    Refused {
        /// HTTP status.
        status: u16,
        /// `error` of the JSON body (or empty).
        code: String,
        /// `message` of the JSON body (or empty).
        message: String,
    },
    /// TCP, TLS or WebSocket failure.
    Io(String),
    /// The attempt took longer than [`CONNECT_TIMEOUT`].
    Timeout,
    /// The server upgraded but did not speak protocol v1 (no `welcome`).
    Protocol(String),
}

impl ConnectError {
    /// Whether a reconnecting client should try again: network failures,
    /// 429, 5xx (draining, backplane down) and 409 (the old connection may
    /// still hold the name; the resume token usually settles it) are
    /// transient; 400, 401 and 403 are not.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            ConnectError::Refused { status, .. } => {
                *status == 409 || *status == 429 || *status >= 500
            }
            ConnectError::Io(_) | ConnectError::Timeout | ConnectError::Protocol(_) => true,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused {
                status,
                code,
                message,
            } => write!(f, "connection refused: HTTP {status} {code}: {message}"),
            ConnectError::Io(e) => write!(f, "cannot connect: {e}"),
            ConnectError::Timeout => write!(f, "cannot connect: timed out"),
            ConnectError::Protocol(e) => write!(f, "unexpected server reply: {e}"),
        }
    }
}

impl Target {
    /// Validates the URL and prepares TLS. `Err` is a message for the user.
    pub(crate) fn new(args: &ChatArgs) -> Result<Self, String> {
        let url = args.url.trim();
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("invalid URL {url:?}: expected ws://HOST/PATH or wss://HOST/PATH")
        })?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => {
                return Err(format!(
                    "invalid URL {url:?}: the scheme must be ws:// or wss://"
                ))
            }
        };
        // Drop any fragment; it is never sent.
        let rest = rest.split('#').next().unwrap_or_default();
        let url = format!("{}://{rest}", if secure { "wss" } else { "ws" });
        // Check early that it parses as a request URI.
        url.as_str()
            .into_client_request()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let tls = if secure {
            Some(Arc::new(tls_config(args)?))
        } else {
            if args.insecure || args.ca_file.is_some() {
                tracing::warn!("--insecure and --ca-file only apply to wss:// URLs");
            }
            None
        };
        Ok(Target {
            url,
            token: args.token.clone(),
            encoding: args.encoding.into(),
            tls,
        })
    }

    /// The handshake URL: guests add `user=` and, when reconnecting with a
    /// claim, `resume=`; with a token the identity comes from the header.
    fn handshake_url(&self, user: &str, resume: Option<&str>) -> String {
        let mut url = self.url.clone();
        let mut params = Vec::new();
        if self.token.is_none() && !user.is_empty() {
            params.push(format!("user={}", percent_encode(user)));
            if let Some(r) = resume {
                params.push(format!("resume={}", percent_encode(r)));
            }
        }
        for p in params {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&p);
        }
        url
    }

    /// One connection attempt, up to and including the `welcome` frame.
    pub(crate) async fn connect(
        &self,
        user: &str,
        resume: Option<&str>,
    ) -> Result<(Conn, ServerFrame), ConnectError> {
        let url = self.handshake_url(user, resume);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(self.encoding.subprotocol()),
        );
        if let Ok(agent) = HeaderValue::from_str(concat!("relay-chat/", env!("CARGO_PKG_VERSION")))
        {
            headers.insert(header::USER_AGENT, agent);
        }
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ConnectError::Io("the token is not a valid header value".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        let connector = self.tls.clone().map(Connector::Rustls);
        let attempt = async {
            let (ws, _) =
                tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
                    .await
                    .map_err(classify)?;
            let mut conn = Conn {
                ws,
                encoding: self.encoding,
            };
            match conn.recv().await {
                Some(Ok(welcome @ ServerFrame::Welcome { .. })) => Ok((conn, welcome)),
                Some(Ok(other)) => Err(ConnectError::Protocol(format!(
                    "expected welcome, got {other:?}"
                ))),
                Some(Err(e)) => Err(ConnectError::Protocol(e)),
                None => Err(ConnectError::Io("closed before welcome".into())),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout),
        }
    }
}

/// Turns a handshake error into a [`ConnectError`].
fn classify(e: WsError) -> ConnectError {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let body: Value = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let field = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
            ConnectError::Refused {
                status,
                code: field("error"),
                message: field("message"),
            }
        }
        other => ConnectError::Io(other.to_string()),
    }
}

/// An open connection and its encoding.
pub(crate) struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    encoding: Encoding,
}

/// What reading the connection produced.
pub(crate) enum Incoming {
    /// A decoded server frame.
    Frame(ServerFrame),
    /// The server closed with this code (`None`: without a code) and reason.
    Closed(Option<u16>, String),
    /// The connection failed or ended without a close frame.
    Lost(String),
    /// A frame that is not a protocol frame (control frames, undecodable).
    Other,
}

impl Conn {
    /// Sends one command in the connection's encoding.
    pub(crate) async fn send(&mut self, command: &Value) -> Result<(), String> {
        let message = match self.encoding {
            Encoding::Json => Message::Text(command.to_string().into()),
            Encoding::MsgPack => Message::Binary(
                rmp_serde::to_vec_named(command)
                    .map_err(|e| e.to_string())?
                    .into(),
            ),
        };
        self.ws.send(message).await.map_err(|e| e.to_string())
    }

    /// Reads the next item. Cancel-safe (a stream's `next`).
    pub(crate) async fn next(&mut self) -> Incoming {
        match self.ws.next().await {
            Some(Ok(Message::Text(t))) => decode(t.as_bytes(), Encoding::Json),
            Some(Ok(Message::Binary(b))) => decode(&b, Encoding::MsgPack),
            Some(Ok(Message::Close(frame))) => match frame {
                Some(f) => Incoming::Closed(Some(u16::from(f.code)), f.reason.to_string()),
                None => Incoming::Closed(None, String::new()),
            },
            Some(Ok(_)) => Incoming::Other,
            Some(Err(e)) => Incoming::Lost(e.to_string()),
            None => Incoming::Lost("connection closed".into()),
        }
    }

    /// The next protocol frame, skipping control frames (used for `welcome`).
    async fn recv(&mut self) -> Option<Result<ServerFrame, String>> {
        loop {
            match self.next().await {
                Incoming::Frame(f) => return Some(Ok(f)),
                Incoming::Other => continue,
                Incoming::Closed(code, reason) => {
                    return Some(Err(format!("closed ({code:?}) {reason}")))
                }
                Incoming::Lost(_) => return None,
            }
        }
    }

    /// Normal close (1000): sends the close frame and waits briefly for the
    /// server's.
    pub(crate) async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        if self.ws.close(Some(frame)).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

fn decode(bytes: &[u8], encoding: Encoding) -> Incoming {
    match decode_server_frame(bytes, encoding) {
        Ok(f) => Incoming::Frame(f),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an undecodable server frame");
            Incoming::Other
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The rustls configuration of `wss://` connections (ring provider).
fn tls_config(args: &ChatArgs) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    if args.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    match &args.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "--ca-file {}: no certificate found",
                    path.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `--insecure`: accepts any certificate, but still checks the handshake
/// signatures so the session keys belong to whoever presented it.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> ChatArgs {
        ChatArgs {
            url: url.into(),
            user: Some("alice".into()),
            room: "lobby".into(),
            timestamps: false,
            token: None,
            encoding: super::super::ChatEncoding::Json,
            ca_file: None,
            insecure: false,
        }
    }

    #[test]
    fn guest_url_carries_user_and_resume() {
        let t = Target::new(&args("ws://127.0.0.1:8080/ws")).unwrap();
        assert_eq!(
            t.handshake_url("alice", None),
            "ws://127.0.0.1:8080/ws?user=alice"
        );
        assert_eq!(
            t.handshake_url("alice", Some("a+b/c=")),
            "ws://127.0.0.1:8080/ws?user=alice&resume=a%2Bb%2Fc%3D"
        );
        let t = Target::new(&args("ws://h/ws?x=1#frag")).unwrap();
        assert_eq!(t.handshake_url("bob", None), "ws://h/ws?x=1&user=bob");
    }

    #[test]
    fn token_mode_sends_no_user() {
        let mut a = args("ws://h/ws");
        a.token = Some("t".into());
        let t = Target::new(&a).unwrap();
        assert_eq!(t.handshake_url("alice", Some("r")), "ws://h/ws");
    }

    #[test]
    fn schemes() {
        assert!(Target::new(&args("wss://h/ws")).unwrap().tls.is_some());
        assert!(Target::new(&args("https://h/ws")).unwrap().tls.is_some());
        assert!(Target::new(&args("http://h/ws")).unwrap().tls.is_none());
        assert!(Target::new(&args("ftp://h/ws")).is_err());
        assert!(Target::new(&args("h/ws")).is_err());
        let mut a = args("wss://h/ws");
        a.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(Target::new(&a).is_err());
    }

    #[test]
    fn retryable_refusals() {
        let r = |status| ConnectError::Refused {
            status,
            code: String::new(),
            message: String::new(),
        };
        assert!(r(503).retryable());
        assert!(r(429).retryable());
        assert!(r(409).retryable());
        assert!(!r(401).retryable());
        assert!(!r(403).retryable());
        assert!(!r(400).retryable());
        assert!(ConnectError::Timeout.retryable());
    }
}
