//! Outbound credentials against real parts in the test: an OAuth2 token endpoint that issues
//! tokens as ServiceNow's `oauth_token.do` does (client credentials in HTTP Basic), a target
//! that takes only the tokens it issued and not those it revoked, and an HTTPS server that
//! requires a client certificate signed by its CA.

mod common;

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const CLIENT_ID: &str = "gateway-client-id-31337";
const CLIENT_SECRET: &str = "client-secret-never-shown-4242";
const TOKEN_PATH: &str = "/oauth_token.do";
const TABLE_PATH: &str = "/api/now/table/incident";

/// What the token endpoint and the target saw, and how they answer.
#[derive(Default)]
struct Auth {
    /// Each token request: its Authorization and Content-Type headers, and its form.
    token_requests: Vec<(String, String, String)>,
    /// Tokens issued, in order.
    issued: Vec<String>,
    /// Tokens the target no longer takes.
    revoked: HashSet<String>,
    /// Answers (status, body) to the next token requests, before tokens are issued again.
    token_failures: VecDeque<(u16, String)>,
    /// `expires_in` of the tokens issued (none: left out).
    expires_in: Option<u64>,
    /// The bearer token of each request the target received, and the status it answered.
    calls: Vec<(String, u16)>,
    /// The target revokes the token of its next N requests and answers them 401.
    revoke_next: usize,
    /// The target answers every request 401.
    refuse_all: bool,
}

type Shared = Arc<Mutex<Auth>>;

fn json_reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `POST /oauth_token.do`: issues a token to the right client, after a moment (so sends that
/// need one meanwhile overlap the fetch).
async fn token_endpoint(State(auth): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let form = String::from_utf8_lossy(&body).into_owned();
    let mut auth = auth.lock().unwrap();
    auth.token_requests.push((
        header(&headers, "authorization"),
        header(&headers, "content-type"),
        form.clone(),
    ));
    if let Some((status, body)) = auth.token_failures.pop_front() {
        return (StatusCode::from_u16(status).unwrap(), body).into_response();
    }
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    if header(&headers, "authorization") != format!("Basic {basic}")
        || !form.contains("grant_type=client_credentials")
    {
        return json_reply(
            401,
            json!({"error": "invalid_client", "error_description": "Client authentication failed"}),
        );
    }
    let token = format!("issued-access-token-{}", auth.issued.len() + 1);
    auth.issued.push(token.clone());
    let mut answer = json!({"access_token": token, "token_type": "Bearer", "scope": "useraccount"});
    if let Some(seconds) = auth.expires_in {
        answer["expires_in"] = json!(seconds);
    }
    json_reply(200, answer)
}

/// `POST /api/now/table/incident`: takes a request whose bearer token it issued and did not
/// revoke, and echoes the token back (a careless API), so the test sees it masked.
async fn table(State(auth): State<Shared>, headers: HeaderMap) -> Response {
    let bearer = header(&headers, "authorization")
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .to_string();
    let mut auth = auth.lock().unwrap();
    let valid = auth.issued.contains(&bearer) && !auth.revoked.contains(&bearer);
    let status = if !valid || auth.refuse_all {
        401
    } else if auth.revoke_next > 0 {
        auth.revoke_next -= 1;
        auth.revoked.insert(bearer.clone());
        401
    } else {
        201
    };
    auth.calls.push((bearer.clone(), status));
    if status == 401 {
        return json_reply(
            401,
            json!({"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}}),
        );
    }
    let sys_id = format!("sys{:04}", auth.calls.len());
    json_reply(
        201,
        json!({"result": {"sys_id": sys_id, "authorized_as": format!("Bearer {bearer}")}}),
    )
}

/// The token endpoint and the target, on one in-test server.
struct ServiceNow {
    auth: Shared,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceNow {
    async fn start(expires_in: Option<u64>) -> ServiceNow {
        let auth: Shared = Arc::new(Mutex::new(Auth {
            expires_in,
            ..Auth::default()
        }));
        let app = axum::Router::new()
            .route(TOKEN_PATH, post(token_endpoint))
            .route(TABLE_PATH, post(table))
            .with_state(auth.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ServiceNow { auth, addr, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Auth) -> T) -> T {
        f(&mut self.auth.lock().unwrap())
    }

    fn token_requests(&self) -> usize {
        self.with(|a| a.token_requests.len())
    }

    fn calls(&self) -> Vec<(String, u16)> {
        self.with(|a| a.calls.clone())
    }
}

impl Drop for ServiceNow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connector to the in-test ServiceNow with OAuth2: the client from `id` and `secret` (as
/// written: literal values, or `${VAR}`s), `token_url` where tokens come from.
fn oauth_connector(name: &str, sn: &ServiceNow, token_url: &str, id: &str, secret: &str) -> String {
    let extra = format!(
        r#"concurrency = 8
ticket_id = "/result/sys_id"
error_message = ["/error/message"]
{retry}
[connectors.oauth2]
token_url = "{token_url}"
client_id = "{id}"
client_secret = "{secret}"
scopes = ["useraccount"]
"#,
        retry = fast_retry(),
    );
    http_connector(name, &sn.url(TABLE_PATH), &extra)
}

/// The gateway in process, on a config with one OAuth2 connector to `sn` and `delivery`.
async fn gateway_for(
    sn: &ServiceNow,
    delivery: &str,
) -> (Workspace, incident_gateway::Gateway, String) {
    let ws = Workspace::new();
    let connector = oauth_connector(
        "servicenow",
        sn,
        &sn.url(TOKEN_PATH),
        CLIENT_ID,
        CLIENT_SECRET,
    );
    let config = ws.config("127.0.0.1:0", &connector);
    with_delivery(&config, delivery);
    let (gw, base) = start_gateway(&config).await;
    (ws, gw, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_fetch_serves_twenty_concurrent_deliveries() {
    let sn = ServiceNow::start(Some(3600)).await;
    let (ws, gw, base) = gateway_for(&sn, "concurrency = 8").await;
    let batch: Vec<Value> = (0..20).map(|i| incident(&format!("OAUTH-{i}"))).collect();
    let r = post_raw(
        &base,
        Some(SOURCE_KEY),
        Some(APPLICATION_JSON),
        json!(batch).to_string(),
    )
    .await;
    assert_eq!(r.status(), 202);
    let delivered = listed_when(&base, "status=delivered", Duration::from_secs(20), |l| {
        l.len() == 20
    })
    .await;
    assert!(
        delivered.is_some(),
        "20 deliveries delivered: {:?}",
        sn.calls()
    );
    // The first wave of 8 sends all needed a token at once: one fetch served them all.
    assert_eq!(sn.token_requests(), 1);
    let calls = sn.calls();
    assert_eq!(calls.len(), 20);
    let token = sn.with(|a| a.issued[0].clone());
    assert!(
        calls
            .iter()
            .all(|(t, status)| *t == token && *status == 201),
        "{calls:?}"
    );
    // The token request: client credentials in HTTP Basic, a form with grant and scope.
    let (authorization, content_type, form) = sn.with(|a| a.token_requests[0].clone());
    assert!(authorization.starts_with("Basic "), "{authorization}");
    assert_eq!(content_type, "application/x-www-form-urlencoded");
    assert_eq!(form, "grant_type=client_credentials&scope=useraccount");
    // The target echoed the token back: the attempt records hold it masked.
    let (_, view) = admin_get(&base, "/v1/incidents/OAUTH-3").await;
    let shown = view.to_string();
    assert!(shown.contains("Bearer ********"), "{shown}");
    for secret in [token.as_str(), CLIENT_SECRET] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
        assert!(!ws.store_contains(secret), "{secret} in the store");
    }
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_replaced_before_it_expires() {
    // Two seconds: replaced after its first half (the margin is half a short token's life).
    let sn = ServiceNow::start(Some(2)).await;
    let (_ws, gw, base) = gateway_for(&sn, "concurrency = 1").await;
    let mut sent = 0;
    while sn.with(|a| a.issued.len()) < 2 && sent < 60 {
        let id = format!("REFRESH-{sent}");
        let delivery = first_delivery(&accepted(&base, &incident(&id)).await);
        settled(&base, &delivery, &["delivered"], Duration::from_secs(10)).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (issued, calls) = sn.with(|a| (a.issued.clone(), a.calls.clone()));
    assert!(
        issued.len() >= 2,
        "a second token after {sent} deliveries: {calls:?}"
    );
    // The target never refused a token: each new one was fetched on time, not after a 401.
    assert!(calls.iter().all(|(_, status)| *status == 201), "{calls:?}");
    // Every fetch was used, and tokens were used in the order they were issued.
    let mut used: Vec<&str> = calls.iter().map(|(t, _)| t.as_str()).collect();
    used.dedup();
    assert_eq!(used, issued.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(sn.token_requests(), issued.len());
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_the_target_fetches_a_new_token_once_and_a_second_refusal_is_final() {
    let sn = ServiceNow::start(Some(3600)).await;
    let (_ws, gw, base) = gateway_for(&sn, "concurrency = 1").await;
    // The target revokes the first token as it refuses it: the retry carries a new one.
    sn.with(|a| a.revoke_next = 1);
    let id = first_delivery(&accepted(&base, &incident("REVOKED-1")).await);
    let done = settled(&base, &id, &["delivered"], Duration::from_secs(10)).await;
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["status_code"], 401);
    assert_eq!(attempts[0]["outcome"], "retry");
    assert_eq!(
        attempts[0]["error"],
        "HTTP 401: the target refused the OAuth2 token; the next attempt fetches a new one"
    );
    assert_eq!(attempts[1]["status_code"], 201);
    let (issued, calls) = sn.with(|a| (a.issued.clone(), a.calls.clone()));
    assert_eq!(issued.len(), 2);
    assert_eq!(
        calls,
        vec![(issued[0].clone(), 401), (issued[1].clone(), 201)]
    );

    // Now the target refuses every token: the accepted token's 401 is retried with a new one,
    // whose 401 is final — no loop of fetches.
    sn.with(|a| a.refuse_all = true);
    let id = first_delivery(&accepted(&base, &incident("REFUSED-1")).await);
    let dead = settled(&base, &id, &["dead"], Duration::from_secs(10)).await;
    let attempts = dead["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{dead}");
    assert_eq!(attempts[0]["outcome"], "retry");
    assert_eq!(attempts[1]["status_code"], 401);
    assert_eq!(attempts[1]["outcome"], "dead");
    let last_error = dead["last_error"].as_str().unwrap();
    assert!(
        last_error.starts_with("HTTP 401: User Not Authenticated"),
        "{last_error}"
    );
    assert_eq!(sn.token_requests(), 3);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_refuses_or_is_down_makes_a_retry_and_no_secret_shows() {
    let sn = ServiceNow::start(None).await;
    // The endpoint refuses the client twice, quoting what it got (as a careless one would),
    // then is unavailable once, then issues a token.
    sn.with(|a| {
        a.token_failures.extend([
            (
                401,
                json!({"error": "invalid_client", "error_description": format!("Client authentication failed for {CLIENT_ID}:{CLIENT_SECRET}")})
                    .to_string(),
            ),
            (401, json!({"error": "invalid_client"}).to_string()),
            (503, "<html>Service Unavailable</html>".to_string()),
        ])
    });
    let ws = Workspace::new();
    let down = format!("http://127.0.0.1:{}{TOKEN_PATH}", free_port());
    let connectors = oauth_connector(
        "servicenow",
        &sn,
        &sn.url(TOKEN_PATH),
        "${SN_CLIENT_ID}",
        "${SN_CLIENT_SECRET}",
    ) + &oauth_connector(
        "unreachable",
        &sn,
        &down,
        "${SN_CLIENT_ID}",
        "${SN_CLIENT_SECRET}",
    );
    let config = ws.config("127.0.0.1:0", &connectors);
    let log = ws.path().join("gateway.log");
    let (mut child, base) = spawn_binary_logged(
        &config,
        "debug",
        &[
            ("SN_CLIENT_ID", CLIENT_ID),
            ("SN_CLIENT_SECRET", CLIENT_SECRET),
        ],
        &log,
    );
    let answer = accepted(&base, &incident("TOKEN-DOWN-1")).await;
    let ids: Vec<&str> = pluck(&answer["deliveries"], "id");
    let connectors: Vec<&str> = pluck(&answer["deliveries"], "connector");
    let id_of = |name: &str| ids[connectors.iter().position(|c| *c == name).unwrap()].to_string();
    let done = settled(
        &base,
        &id_of("servicenow"),
        &["delivered"],
        Duration::from_secs(15),
    )
    .await;
    let attempts = done["attempts"].as_array().unwrap();
    let errors: Vec<&str> = attempts
        .iter()
        .map(|a| a["error"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        errors,
        [
            "OAuth2 token: HTTP 401: invalid_client (Client authentication failed for ********:********)",
            "OAuth2 token: HTTP 401: invalid_client",
            "OAuth2 token: HTTP 503",
            "",
        ],
        "{done}"
    );
    for failed in &attempts[..3] {
        assert_eq!(failed["outcome"], "retry");
        assert_eq!(
            failed["status_code"],
            Value::Null,
            "nothing reached the target"
        );
    }
    // Only the attempt with a token reached the target.
    assert_eq!(sn.calls().len(), 1);
    // A token endpoint nobody answers at: retried, saying so.
    let unreachable = attempted(&base, &id_of("unreachable"), 2, Duration::from_secs(10)).await;
    assert_eq!(unreachable["status"], "pending");
    let last_error = unreachable["last_error"].as_str().unwrap();
    assert!(
        last_error.starts_with("OAuth2 token: connection failed"),
        "{last_error}"
    );
    let (_, view) = admin_get(&base, "/v1/incidents/TOKEN-DOWN-1").await;
    sigkill(&mut child);

    // `render` shows where the token goes, masked; it fetches none.
    let env = [
        ("SN_CLIENT_ID", CLIENT_ID),
        ("SN_CLIENT_SECRET", CLIENT_SECRET),
    ];
    let preview = output_text(&render(&config, "servicenow", &sample_file(), None, &env));
    assert!(preview.contains("\nauthorization: ********\n"), "{preview}");
    assert_eq!(sn.token_requests(), 4, "render fetched no token");

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("OAuth2 token: HTTP 503"),
        "the retries are logged: {logs}"
    );
    let token = sn.with(|a| a.issued[0].clone());
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    for secret in [CLIENT_SECRET, CLIENT_ID, token.as_str(), basic.as_str()] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!ws.store_contains(secret), "{secret} in the store");
        assert!(
            !view.to_string().contains(secret),
            "{secret} in the admin API"
        );
        assert!(!preview.contains(secret), "{secret} in render output");
    }
}

/// A CA, and PEM files in `dir` signed by it: `server.pem`/`server.key` for localhost,
/// `client.pem`/`client.key` for client authentication, and the CA as `ca.pem`.
fn certificates(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "igw test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, san, usage) in [
        ("server", "localhost", ExtendedKeyUsagePurpose::ServerAuth),
        (
            "client",
            "incident-gateway",
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, san);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    ca_cert.der().clone()
}

/// An HTTPS server that completes a handshake only with a client certificate signed by `ca`;
/// it counts the requests it serves.
async fn mtls_server(
    dir: &Path,
    ca: rustls::pki_types::CertificateDer<'static>,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: axum::http::Uri| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(uri.path().to_string());
                (StatusCode::OK, "{\"ok\":true}")
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client without a certificate fails here: nothing is served to it.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_opens_a_server_that_requires_one() {
    let ws = Workspace::new();
    let ca = certificates(ws.path());
    let (port, seen) = mtls_server(ws.path(), ca).await;
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let connectors = http_connector(
        "with-cert",
        &url("/with-cert"),
        &format!(
            "tls_ca_file = \"ca.pem\"\ntls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"\n{}",
            fast_retry()
        ),
    ) + &http_connector(
        "without-cert",
        &url("/without-cert"),
        &format!("tls_ca_file = \"ca.pem\"\n{}", fast_retry()),
    );
    let config = ws.config("127.0.0.1:0", &connectors);
    let (gw, base) = start_gateway(&config).await;
    let answer = accepted(&base, &incident("MTLS-1")).await;
    let ids: Vec<&str> = pluck(&answer["deliveries"], "id");
    let connectors: Vec<&str> = pluck(&answer["deliveries"], "connector");
    let id_of = |name: &str| ids[connectors.iter().position(|c| *c == name).unwrap()].to_string();
    settled(
        &base,
        &id_of("with-cert"),
        &["delivered"],
        Duration::from_secs(10),
    )
    .await;
    let refused = attempted(&base, &id_of("without-cert"), 2, Duration::from_secs(10)).await;
    assert_eq!(
        refused["status"], "pending",
        "a failed handshake is retried: {refused}"
    );
    // Under TLS 1.3 the server's refusal of a missing certificate comes after the client's
    // side of the handshake is done: the client sees the alert ("CertificateRequired") or only
    // the connection closing, whichever reaches it first.
    let error = refused["last_error"].as_str().unwrap_or_default();
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("connection"),
        "{error}"
    );
    // Only the connector with the certificate got through.
    assert_eq!(*seen.lock().unwrap(), ["/with-cert"]);
    gw.stop().await.unwrap();
}
