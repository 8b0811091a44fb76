//! `rediss://`: two real nodes reach a real redis-server over TLS only (its
//! plain port is used by nothing but the test's readiness check), trusting
//! the server's certificate through `SSL_CERT_FILE` as a private CA would be
//! trusted in a container. A message published on one node is delivered on
//! the other, so both the command connections and pub/sub run over TLS.

use testkit::redis::RedisServer;
use testkit::*;

#[tokio::test]
async fn nodes_share_rooms_through_a_tls_only_redis() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("rcgen");
    let cert_path = dir.path().join("redis.crt");
    let key_path = dir.path().join("redis.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls_port = free_port().to_string();
    let redis = RedisServer::with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert_path.to_str().unwrap(),
        "--tls-key-file",
        key_path.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let ca = cert_path.to_str().unwrap();
    let a = Node::in_cluster(&url, "tls-a", &[], &[("SSL_CERT_FILE", ca)]);
    let b = Node::in_cluster(&url, "tls-b", &[], &[("SSL_CERT_FILE", ca)]);

    let mut alice = guest(&a, "alice").await;
    let mut bob = guest(&b, "bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    let id = alice.say("lobby", "over tls").await;
    let got = js(&bob.recv_type("message").await);
    assert_eq!(got["text"], "over tls");
    assert_eq!(got["id"], id);
    assert_eq!(get(a.addr, "/readyz").await.0, 200);

    // The nodes' connections are TLS ones: every client Redis lists came in
    // on the TLS port (the plain port has only this query's own connection).
    let clients = redis::query(redis.port(), "CLIENT LIST").unwrap_or_default();
    let remote: Vec<&str> = clients
        .lines()
        .filter(|l| l.starts_with("id=") && !l.contains("cmd=client"))
        .collect();
    assert!(
        remote.len() >= 2,
        "the nodes hold no connections: {clients}"
    );
    for line in remote {
        assert!(
            line.contains(&format!("laddr=127.0.0.1:{tls_port}")),
            "a connection not on the TLS port: {line}"
        );
    }
}
