//! The application's JWKS document (`--jwks-url`): fetched at start, cached,
//! re-fetched when a token names a `kid` the cache does not hold (at most
//! once every [`MIN_REFETCH`], however many such tokens arrive: one fetch
//! at a time, the others wait for it and then look again), and refreshed
//! every [`REFRESH`] in the background. A fetch that fails (timeout, HTTP
//! error, bad JSON) keeps the cached keys. Only RSA, EC and OKP (Ed25519)
//! keys are taken; symmetric `oct` keys are ignored (an HS256 key must come
//! from `--jwt-secret`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::DecodingKey;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::jwt::{Family, PublicKey};

/// Fewest time between two fetches caused by unknown `kid`s.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Background refresh period.
pub const REFRESH: Duration = Duration::from_secs(300);
/// Upper bound of one fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_DOCUMENT: usize = 1 << 20;

/// A cached JWKS document.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<Vec<PublicKey>>>,
    /// When the last fetch started (one fetch at a time).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
}

impl Jwks {
    /// A cache of the document at `url`, empty until the first fetch.
    pub fn new(url: &str) -> Result<Arc<Self>, String> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("JWKS client: {e}"))?;
        Ok(Arc::new(Jwks {
            url: url.to_owned(),
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }))
    }

    /// How many fetches were started.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The cached keys.
    pub fn cached(&self) -> Arc<Vec<PublicKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches the document now and replaces the cache; on failure the cache
    /// stays. Returns the number of usable keys.
    pub async fn fetch(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.download().await.and_then(|body| parse(&body));
        match result {
            Ok(keys) => {
                let n = keys.len();
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                tracing::debug!(url = self.url, keys = n, "JWKS fetched");
                Ok(n)
            }
            Err(e) => {
                tracing::warn!(url = self.url, error = %e, "JWKS fetch failed; keeping the cached keys");
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("document over {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn matching(&self, kid: Option<&str>, family: Family) -> Vec<PublicKey> {
        self.cached()
            .iter()
            .filter(|k| k.family == family && (kid.is_none() || k.kid.as_deref() == kid))
            .cloned()
            .collect()
    }

    /// The keys of `family` that may have signed a token naming `kid` (all
    /// of the family when it names none). An unknown `kid` re-fetches the
    /// document first when the last fetch is [`MIN_REFETCH`] old.
    pub async fn keys_for(&self, kid: Option<&str>, family: Family) -> Vec<PublicKey> {
        let found = self.matching(kid, family);
        if !found.is_empty() || kid.is_none() {
            return found;
        }
        {
            let mut last = self.last_fetch.lock().await;
            // Another handshake may have fetched while this one waited.
            let found = self.matching(kid, family);
            if !found.is_empty() {
                return found;
            }
            if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
                return Vec::new();
            }
            *last = Some(Instant::now());
            let _ = self.fetch_locked().await;
        }
        self.matching(kid, family)
    }

    /// Refreshes the cache every [`REFRESH`] until `cancel`.
    pub async fn refresh_until(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            let _ = self.fetch().await;
        }
    }
}

/// The usable keys of a JWKS document: RSA, EC and OKP keys, each with its
/// `kid`; keys of other types, or that do not parse, are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<PublicKey>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("no `keys` list".into());
    };
    let mut keys = Vec::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(PublicKey {
            kid: jwk.common.key_id.clone(),
            family,
            key,
        });
    }
    Ok(keys)
}

/// Makes ring the process's default rustls provider (once; a provider
/// installed earlier stays). reqwest is built with `rustls-no-provider`
/// (so no second crypto library is compiled), and the OTLP exporter's
/// blocking reqwest client, which shares that build, needs a default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS for `https://` JWKS URLs: the webpki roots, plus the certificates of
/// `SSL_CERT_FILE` when set (a private CA).
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        use rustls_pki_types::pem::PemObject;
        if let Ok(certs) = rustls_pki_types::CertificateDer::pem_file_iter(&path) {
            for cert in certs.flatten() {
                let _ = roots.add(cert);
            }
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("JWKS TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_unknown_keys_are_skipped() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty":"XYZ","kid":"x"},
            {"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let keys = parse(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (keys[0].kid.as_deref(), keys[0].family),
            (Some("e"), Family::Ed)
        );
        assert!(parse(b"[]").is_err());
        assert!(parse(b"nope").is_err());
    }
}
