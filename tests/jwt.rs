//! `--auth jwt` against real nodes (PROTOCOL §8): real RSA, EC (P-256,
//! P-384), Ed25519 keys made by `openssl` and HMAC secrets; every accepted
//! algorithm, the refusals (401 `unauthorized` before the upgrade), a real
//! JWKS document served over loopback HTTP that the test rotates (and counts
//! the fetches of), revocation reaching a user's connections on two nodes
//! on one Redis, and logout in token mode.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use testkit::redis::RedisServer;
use testkit::*;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const API_KEY: &str = "k-jwt-tests";

/// A change made to valid claims.
type ClaimsChange = dyn Fn(&mut Value);

/// A key pair made by `openssl`: the private key (PKCS#8 PEM) and the
/// public key (SPKI PEM).
struct Pair {
    private: String,
    public: String,
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pair(dir: &std::path::Path, name: &str, genpkey: &[&str]) -> Pair {
    let path = dir.join(format!("{name}.key"));
    let p = path.to_str().unwrap();
    let mut args = vec!["genpkey", "-out", p];
    args.extend_from_slice(genpkey);
    openssl(&args);
    Pair {
        private: std::fs::read_to_string(&path).unwrap(),
        public: openssl(&["pkey", "-in", p, "-pubout"]),
    }
}

fn rsa(dir: &std::path::Path, name: &str) -> Pair {
    pair(
        dir,
        name,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
}

fn ec(dir: &std::path::Path, name: &str, curve: &str) -> Pair {
    pair(
        dir,
        name,
        &[
            "-algorithm",
            "EC",
            "-pkeyopt",
            &format!("ec_paramgen_curve:{curve}"),
        ],
    )
}

fn ed(dir: &std::path::Path, name: &str) -> Pair {
    pair(dir, name, &["-algorithm", "ed25519"])
}

fn now() -> u64 {
    relay::backplane::now_ms() / 1000
}

/// Claims for `sub`, valid for a minute, with the tests' issuer and audience.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iat": now(), "exp": now() + 60, "iss": "app", "aud": "relay"})
}

fn encoding_key(alg: Algorithm, pem: &str) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 => EncodingKey::from_secret(pem.as_bytes()),
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    }
}

fn sign(alg: Algorithm, pem: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &encoding_key(alg, pem)).unwrap()
}

fn sign_kid(alg: Algorithm, pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, pem)).unwrap()
}

async fn connect(node: &Node, token: &str) -> Result<Client, Refused> {
    Connect::new(format!("{}?token={token}", node.url()))
        .open()
        .await
}

async fn refused(node: &Node, token: &str, what: &str) {
    match connect(node, token).await {
        Ok(c) => panic!("{what}: accepted as {}", c.user),
        Err(r) => {
            assert_eq!(r.status, 401, "{what}: {:?}", r.body);
            assert_eq!(r.body["error"], "unauthorized", "{what}");
            assert!(r.body["message"].is_string(), "{what}");
        }
    }
}

#[tokio::test]
async fn every_algorithm_is_accepted_and_every_bad_token_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (rs, es256, es384, eddsa) = (
        rsa(dir.path(), "rsa"),
        ec(dir.path(), "p256", "P-256"),
        ec(dir.path(), "p384", "P-384"),
        ed(dir.path(), "ed"),
    );
    let keys = dir.path().join("app.pem");
    std::fs::write(
        &keys,
        [&rs.public, &es256.public, &es384.public, &eddsa.public]
            .map(|s| s.as_str())
            .concat(),
    )
    .unwrap();
    let node = Node::start(&[
        "--auth",
        "jwt",
        "--jwt-key",
        keys.to_str().unwrap(),
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "app",
        "--jwt-audience",
        "relay",
    ]);
    let accepted = [
        (Algorithm::RS256, rs.private.as_str()),
        (Algorithm::RS384, rs.private.as_str()),
        (Algorithm::RS512, rs.private.as_str()),
        (Algorithm::ES256, es256.private.as_str()),
        (Algorithm::ES384, es384.private.as_str()),
        (Algorithm::EdDSA, eddsa.private.as_str()),
        (Algorithm::HS256, SECRET),
    ];
    for (i, (alg, pem)) in accepted.iter().enumerate() {
        let user = format!("user{i}");
        let mut c = connect(&node, &sign(*alg, pem, &claims(&user)))
            .await
            .unwrap_or_else(|r| panic!("{alg:?} refused: {:?}", r.body));
        assert_eq!(c.user, user, "{alg:?}");
        assert_eq!(frame_type(&c.request(cmd::ping()).await), "pong");
    }
    // The other ways to present a token.
    let t = sign(Algorithm::HS256, SECRET, &claims("bearer"));
    let c = Connect::new(node.url())
        .header("Authorization", format!("Bearer {t}"))
        .open()
        .await;
    assert_eq!(c.map(|c| c.user).ok().as_deref(), Some("bearer"));
    let t = sign(Algorithm::HS256, SECRET, &claims("cookie"));
    let c = Connect::new(node.url())
        .header("Cookie", format!("relay_token={t}"))
        .open()
        .await;
    assert_eq!(c.map(|c| c.user).ok().as_deref(), Some("cookie"));

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("mallory");
        f(&mut c);
        c
    };
    let hs = |c: &Value| sign(Algorithm::HS256, SECRET, c);
    let remove = |key: &'static str| {
        move |c: &mut Value| {
            c.as_object_mut().unwrap().remove(key);
        }
    };
    let bad_claims: [(&str, Box<ClaimsChange>); 8] = [
        ("expired", Box::new(|c| c["exp"] = json!(now() - 60))),
        ("not yet valid", Box::new(|c| c["nbf"] = json!(now() + 60))),
        ("wrong issuer", Box::new(|c| c["iss"] = json!("other"))),
        ("wrong audience", Box::new(|c| c["aud"] = json!("other"))),
        ("no iss", Box::new(remove("iss"))),
        ("no exp", Box::new(remove("exp"))),
        ("bad sub", Box::new(|c| c["sub"] = json!("bad name!"))),
        (
            "oversized",
            Box::new(|c| c["pad"] = json!("x".repeat(10_000))),
        ),
    ];
    for (what, change) in &bad_claims {
        refused(&node, &hs(&with(change.as_ref())), what).await;
    }
    let stranger = rsa(dir.path(), "stranger");
    refused(
        &node,
        &sign(Algorithm::RS256, &stranger.private, &claims("mallory")),
        "wrong key",
    )
    .await;
    refused(
        &node,
        &sign(
            Algorithm::HS256,
            "another-secret-of-32-bytes-or-more!!",
            &claims("m"),
        ),
        "wrong secret",
    )
    .await;
    refused(
        &node,
        &sign(Algorithm::HS384, SECRET, &claims("mallory")),
        "HS384",
    )
    .await;
    // Algorithm confusion: HS256 "signed" with the RSA public key's PEM.
    refused(
        &node,
        &sign(Algorithm::HS256, &rs.public, &claims("mallory")),
        "confusion",
    )
    .await;
    // alg: none, unsigned.
    // `{"alg":"none","typ":"JWT"}`, base64url, before a valid token's claims.
    let signed = sign(Algorithm::HS256, SECRET, &claims("mallory"));
    let payload = signed.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    refused(&node, &none, "alg none").await;
    refused(&node, "not-a-token", "garbage").await;
    let r = Connect::new(node.url())
        .open()
        .await
        .err()
        .expect("no token refused");
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("unauthorized"))
    );
}

/// A JWKS document served over loopback HTTP; counts its requests.
struct JwksServer {
    addr: std::net::SocketAddr,
    doc: Arc<Mutex<Option<Value>>>,
    hits: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(doc: Value) -> JwksServer {
        let doc = Arc::new(Mutex::new(Some(doc)));
        let hits = Arc::new(AtomicU64::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (d, h) = (d.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    match d.lock().unwrap().clone() {
                        Some(v) => (axum::http::StatusCode::OK, v.to_string()),
                        None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            addr,
            doc,
            hits,
            _task: task,
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

fn jwk(alg: Algorithm, private: &str, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(alg, private), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

// Multi-threaded: the JWKS server must answer while `Node::start` blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_and_unknown_kids_cause_no_fetch_storm() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (rsa(dir.path(), "k1"), ec(dir.path(), "k2", "P-256"));
    let set = |keys: Vec<Jwk>| serde_json::to_value(JwkSet { keys }).unwrap();
    let server = JwksServer::start(set(vec![jwk(Algorithm::RS256, &k1.private, "k1")])).await;
    let url = format!("http://{}/jwks.json", server.addr);
    let node = Node::start(&["--auth", "jwt", "--jwks-url", &url]);
    // The node answers once the document was fetched (or its fetch failed).
    let (s, _) = get(node.addr, "/healthz").await;
    assert_eq!(s, 200);
    assert_eq!(server.hits(), 1, "fetched once at start: {}", node.logs());
    let claims = json!({"sub": "alice", "exp": now() + 60});
    let c = connect(
        &node,
        &sign_kid(Algorithm::RS256, &k1.private, "k1", &claims),
    )
    .await;
    assert_eq!(c.map(|c| c.user).ok().as_deref(), Some("alice"));

    // Rotation: k2 appears. Tokens naming kids the cache does not hold,
    // many at once: one re-fetch at most (10 s apart), not one each.
    *server.doc.lock().unwrap() = Some(set(vec![
        jwk(Algorithm::RS256, &k1.private, "k1"),
        jwk(Algorithm::ES256, &k2.private, "k2"),
    ]));
    let unknown: Vec<_> = (0..20)
        .map(|i| sign_kid(Algorithm::RS256, &k1.private, &format!("nope{i}"), &claims))
        .collect();
    let results = futures_util::future::join_all(unknown.iter().map(|t| connect(&node, t))).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.status == 401)));
    assert!(
        server.hits() <= 2,
        "{} fetches for 20 unknown kids",
        server.hits()
    );
    // After the 10 s bound, k2 is fetched once and accepted.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let before = server.hits();
    let t2 = sign_kid(
        Algorithm::ES256,
        &k2.private,
        "k2",
        &json!({"sub": "bob", "exp": now() + 60}),
    );
    let c = connect(&node, &t2).await;
    assert_eq!(c.map(|c| c.user).ok().as_deref(), Some("bob"));
    assert_eq!(server.hits(), before + 1);
    // An outage keeps the cached keys.
    *server.doc.lock().unwrap() = None;
    let c = connect(&node, &t2).await;
    assert_eq!(c.map(|c| c.user).ok().as_deref(), Some("bob"));
}

#[tokio::test]
async fn revocation_closes_the_users_connections_on_every_node() {
    let redis = RedisServer::new();
    let args = [
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
    ];
    let (n1, n2) = (
        Node::in_cluster(&redis.url(), "n1", &args, &[]),
        Node::in_cluster(&redis.url(), "n2", &args, &[]),
    );
    let token = |sub: &str, iat: u64| {
        sign(
            Algorithm::HS256,
            SECRET,
            &json!({"sub": sub, "iat": iat, "exp": now() + 60}),
        )
    };
    let old = token("alice", now() - 2);
    let mut a1 = connect(&n1, &old).await.unwrap();
    let mut a2 = connect(&n2, &old).await.unwrap();
    let mut bob = connect(&n2, &token("bob", now() - 2)).await.unwrap();
    let (s, body) = http(
        n1.addr,
        "POST",
        "/api/revoke",
        &[
            ("Authorization", &format!("Bearer {API_KEY}")),
            ("Content-Type", "application/json"),
        ],
        &json!({"user": "alice"}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    for c in [&mut a1, &mut a2] {
        let code = tokio::time::timeout(Duration::from_secs(1), c.recv_close()).await;
        assert_eq!(code.ok().flatten(), Some(4001));
    }
    assert_eq!(frame_type(&bob.request(cmd::ping()).await), "pong");
    refused(&n1, &old, "revoked on n1").await;
    refused(&n2, &old, "revoked on n2").await;
    // A token issued after the revocation is fine.
    let c = connect(&n2, &token("alice", now() + 1)).await;
    assert_eq!(c.map(|c| c.user).ok().as_deref(), Some("alice"));
    // The key is required.
    let (s, _) = http(
        n1.addr,
        "POST",
        "/api/revoke",
        &[],
        &json!({"user": "bob"}).to_string(),
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn logout_revokes_the_token_and_clears_the_cookie() {
    let node = Node::start(&["--auth", "token", "--secret", SECRET, "--login-rate", "100"]);
    let body = json!({"username": "carol", "password": "hunter2hunter2"}).to_string();
    let json_ct = [("Content-Type", "application/json")];
    assert_eq!(
        http(node.addr, "POST", "/api/register", &json_ct, &body)
            .await
            .0,
        201
    );
    let (s, login) = http(node.addr, "POST", "/api/login", &json_ct, &body).await;
    assert_eq!(s, 200, "{login}");
    let token = serde_json::from_str::<Value>(&login).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut c = connect(&node, &token).await.unwrap();

    // The raw response, to see the Set-Cookie.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let req = format!(
        "POST /api/logout HTTP/1.1\r\nHost: {}\r\nCookie: relay_token={token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        node.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let cookie = raw
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or("");
    assert!(
        cookie.contains("relay_token=;") && cookie.contains("Max-Age=0"),
        "{cookie}"
    );

    let code = tokio::time::timeout(Duration::from_secs(1), c.recv_close()).await;
    assert_eq!(code.ok().flatten(), Some(4001));
    refused(&node, &token, "logged out").await;
    // A new login is a new token.
    let (_, login) = http(node.addr, "POST", "/api/login", &json_ct, &body).await;
    let fresh = serde_json::from_str::<Value>(&login).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        connect(&node, &fresh).await.map(|c| c.user).ok().as_deref(),
        Some("carol")
    );
}

#[test]
fn token_helper_issues_and_checks() {
    let bin = relay_bin(None).unwrap();
    let run = |args: &[&str]| Command::new(&bin).args(args).output().unwrap();
    let out = run(&[
        "token",
        "issue",
        "--user",
        "dave",
        "--rooms",
        "team-*",
        "--role",
        "admin",
        "--jwt-secret",
        SECRET,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let ok = run(&[
        "token",
        "check",
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        &token,
    ]);
    assert_eq!(ok.status.code(), Some(0));
    let text = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(
        text.contains("accepted: user=dave")
            && text.contains("role=admin")
            && text.contains("rooms=team-*"),
        "{text}"
    );
    let other = "another-secret-of-32-bytes-or-more!!";
    let bad = run(&[
        "token",
        "check",
        "--auth",
        "jwt",
        "--jwt-secret",
        other,
        &token,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).starts_with("refused: "));
    let iss = run(&[
        "token",
        "check",
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "app",
        &token,
    ]);
    assert!(String::from_utf8_lossy(&iss.stdout).contains("`iss`"));
    // Configuration mistakes exit 2 with one line naming the flag.
    for (args, flag) in [
        (vec!["serve", "--auth", "jwt"], "--auth"),
        (
            vec!["serve", "--auth", "jwt", "--jwt-secret", "short"],
            "--jwt-secret",
        ),
        (
            vec!["token", "issue", "--user", "x", "--jwt-secret", "short"],
            "--jwt-secret",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{args:?}"
        );
    }
}
