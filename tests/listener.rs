//! The listener: early answers reach the client (lingering close), connection slots shared
//! fairly (per-client limit, idle connections shed under pressure, an admin reserve), and the
//! admin listener over TLS.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `gateway.toml` with extra `[server]` lines.
fn config_with(ws: &Workspace, server: &str) -> std::path::PathBuf {
    let config = ws.config("127.0.0.1:0", "");
    with_server(&config, server);
    config
}

/// A gateway in process (and its workspace) with extra `[server]` lines.
async fn gateway_with(server: &str) -> (Workspace, incident_gateway::Gateway) {
    let ws = Workspace::new();
    let gw = start_in_process(&config_with(&ws, server)).await;
    (ws, gw)
}

/// Python's urllib posts `mib` MiB `times` times (over TLS trusting the CA file in the fifth
/// argument, if given); prints a JSON count of the outcomes.
const URLLIB_POST: &str = r#"
import json, ssl, sys, urllib.request, urllib.error
url, key, mib, times = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context(cafile=sys.argv[5]) if len(sys.argv) > 5 else None
body = b'{"incidentId":"BIG","pad":"' + b"x" * (mib * 1024 * 1024) + b'"}'
outcomes = {}
for _ in range(times):
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            k = "answered %d" % r.status
    except urllib.error.HTTPError as e:
        doc = json.loads(e.read())
        k = "answered %d %s %s" % (e.code, e.headers.get("Content-Type"), doc.get("status"))
    except Exception as e:
        k = "failed %s: %s" % (type(e).__name__, e)
    outcomes[k] = outcomes.get(k, 0) + 1
print(json.dumps(outcomes, sort_keys=True))
"#;

async fn urllib_posts(
    url: &str,
    mib: usize,
    times: usize,
    ca_file: Option<&std::path::Path>,
) -> serde_json::Value {
    let out = tokio::process::Command::new("python3")
        .args(["-c", URLLIB_POST, url, SOURCE_KEY])
        .arg(mib.to_string())
        .arg(times.to_string())
        .args(ca_file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_sent_before_the_body_is_read_reaches_urllib_every_time() {
    let (ws, gw) = gateway_with("max_body_bytes = 1048576").await;
    let url = format!("http://{}/v1/incidents", gw.addr);
    let started = Instant::now();
    let outcomes = urllib_posts(&url, 3, 50, None).await;
    let took = started.elapsed();
    assert_eq!(
        outcomes,
        serde_json::json!({"answered 413 application/problem+json 413": 50}),
        "every one of 50 posts of 3 MiB reads its 413"
    );
    eprintln!("50 posts of 3 MiB answered 413 in {took:?}");
    // Ten times the limit: the client still writes all of it before it reads.
    let outcomes = urllib_posts(&url, 10, 5, None).await;
    assert_eq!(
        outcomes,
        serde_json::json!({"answered 413 application/problem+json 413": 5}),
        "every one of 5 posts of 10 MiB reads its 413"
    );
    assert_eq!(ws.counts().0, 0);
    gw.stop().await.unwrap();
}

/// A raw connection to `to` from the local address `ip` (the loopback range is all local, so
/// 127.0.0.2 and 127.0.0.3 are other clients).
async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closes `s` (end of stream or reset) within `within`, sending nothing.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => false,
    }
}

/// Reads one HTTP/1.1 response (status and body, by Content-Length) from `s`.
async fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while got.len() < head_end + length {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some((
        status,
        String::from_utf8_lossy(&got[head_end..head_end + length]).to_string(),
    ))
}

/// `GET path` on a raw keep-alive connection; the status, or `None` when the connection
/// was closed instead.
async fn raw_get(s: &mut TcpStream, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    read_response(s).await.map(|(status, _)| status)
}

/// `n` keep-alive connections to `to` from `ip`, each served once.
async fn served_connections(ip: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = connect_from(ip, to).await;
        assert_eq!(raw_get(&mut s, "/healthz").await, Some(200));
        held.push(s);
    }
    held
}

/// `GET /healthz` on `gw` through `client`.
async fn health_via(
    client: &reqwest::Client,
    gw: &incident_gateway::Gateway,
) -> reqwest::Result<reqwest::Response> {
    client
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_more_than_its_share_of_connections() {
    let (_ws, gw) = gateway_with(
        "max_connections = 16\nmax_connections_per_client = 4\nadmin_reserved_connections = 2",
    )
    .await;
    let mut held = served_connections("127.0.0.2", gw.addr, 4).await;
    // The fifth from the same address is closed without an answer.
    let mut extra = connect_from("127.0.0.2", gw.addr).await;
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)).await,
        "a fifth connection from 127.0.0.2 was not refused"
    );
    // Another address is served, and the four held are still served.
    let r = health_via(&client_from("127.0.0.3"), &gw).await;
    assert_eq!(r.unwrap().status(), 200);
    for s in &mut held {
        assert_eq!(raw_get(s, "/healthz").await, Some(200));
    }
    // A connection given back makes room for that address again.
    drop(held.pop());
    let served = eventually(Duration::from_secs(5), || async {
        let mut s = connect_from("127.0.0.2", gw.addr).await;
        raw_get(&mut s, "/healthz").await.map(|_| s)
    })
    .await;
    assert!(served.is_some(), "a released slot was not given back");
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_shed_when_slots_run_short_so_no_client_is_locked_out() {
    let (_ws, gw) = gateway_with(
        "max_connections = 8\nmax_connections_per_client = 8\nadmin_reserved_connections = 2\nidle_timeout = \"60s\"",
    )
    .await;
    // Up to half full, a keep-alive connection keeps its normal idle timeout.
    let mut calm = served_connections("127.0.0.2", gw.addr, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in &mut calm {
        assert_eq!(raw_get(s, "/healthz").await, Some(200), "cut at half full");
    }
    drop(calm);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // One address takes every slot: idle connections and slow headers.
    let mut holders = Vec::new();
    for i in 0..8 {
        let mut s = connect_from("127.0.0.2", gw.addr).await;
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                .await
                .unwrap();
        }
        holders.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new client is served at once: the connection that waited longest makes room.
    let started = Instant::now();
    // (The client is kept: its connection, idle in its pool, keeps the slots full.)
    let newcomer = client_from("127.0.0.3");
    let r = health_via(&newcomer, &gw).await;
    let answered_in = started.elapsed();
    assert!(
        matches!(&r, Ok(r) if r.status() == 200),
        "a new client was locked out: {r:?}"
    );
    assert!(
        answered_in < Duration::from_secs(2),
        "served after {answered_in:?}"
    );
    // With the slots full, waiting connections go after about a second, not 60 s.
    let started = Instant::now();
    for s in &mut holders {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a waiting connection was still open under pressure"
        );
    }
    let shed_in = started.elapsed();
    eprintln!("new client served in {answered_in:?}; all holders shed within {shed_in:?}");
    drop(newcomer);
    gw.stop().await.unwrap();
}

/// Starts a POST of `total` bytes with a valid key and sends its first byte only: a busy
/// connection (the handler is reading the body).
async fn busy_post(from: &str, to: SocketAddr, body: &[u8]) -> TcpStream {
    let mut s = connect_from(from, to).await;
    let head = format!(
        "POST /v1/incidents HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {SOURCE_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..1]).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_from_its_reserve_when_every_general_slot_is_busy() {
    let (ws, gw) = gateway_with(
        "max_connections = 8\nmax_connections_per_client = 8\nadmin_reserved_connections = 2\nbody_read_timeout = \"30s\"",
    )
    .await;
    let base = format!("http://{}", gw.addr);
    // Six slow uploads hold every general slot; they are busy, so nothing may shed them.
    let mut bodies = Vec::new();
    let mut busy = Vec::new();
    for i in 0..6 {
        let mut body = serde_json::to_vec(&incident(&format!("SLOW-{i}"))).unwrap();
        body.resize(20_000, b' ');
        busy.push(busy_post("127.0.0.2", gw.addr, &body).await);
        bodies.push(body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two more uploads reach the reserve, which turns them away at once.
    let mut turned_away = Vec::new();
    for _ in 0..2 {
        let mut s = busy_post("127.0.0.2", gw.addr, &bodies[0]).await;
        let (status, text) = read_response(&mut s).await.expect("an answer");
        assert_eq!(status, 503, "{text}");
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["status"], 503);
        // Still open (and lingering) on the client side: the reserve is full now.
        turned_away.push(s);
    }

    let admin = client_from("127.0.0.3");
    let started = Instant::now();
    let deliveries = format!("{base}/v1/deliveries");
    let r = get_as(&admin, &deliveries, ADMIN_TOKEN).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the admin API did not answer from the reserve"
    );
    eprintln!("admin answered from the reserve in {:?}", started.elapsed());

    // A reserved slot serves nothing else: ingest, health, or an admin path without the token.
    let other = client_from("127.0.0.4");
    let ingest = format!("{base}/v1/incidents");
    let refused = [
        post_incident_via(&other, &ingest, &incident("RESERVE-1")).await,
        health_via(&other, &gw).await.unwrap(),
        other.get(&deliveries).send().await.unwrap(),
        get_as(&other, &deliveries, SOURCE_KEY).await.unwrap(),
    ];
    for r in refused {
        let doc = problem(r, 503).await;
        assert_eq!(doc["status"], 503);
    }
    // The busy uploads were never cut short: past the pressure limit, they finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (s, body) in busy.iter_mut().zip(&bodies) {
        s.write_all(&body[1..]).await.unwrap();
        let (status, text) = read_response(s).await.expect("an answer");
        assert_eq!(status, 202, "{text}");
    }
    assert_eq!(
        ws.counts().0,
        6,
        "the six uploads stored, nothing from the reserve"
    );
    gw.stop().await.unwrap();
}

/// A private CA and a server certificate it signed for `names`.
struct PrivateCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl PrivateCa {
    fn new() -> PrivateCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "incident-gateway test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        PrivateCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// (certificate PEM, key PEM)
    fn leaf(&self, name: &str) -> (String, String) {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client(&self, name: &str, addr: SocketAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .resolve(name, addr)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

/// A gateway in process (with extra `[server]` lines in `ws`) whose admin API answers over TLS
/// as `name`, where plain HTTP and a client without the CA fail.
async fn admin_only_over_tls(
    ws: &Workspace,
    server: &str,
    ca: &PrivateCa,
    name: &str,
) -> incident_gateway::Gateway {
    let gw = start_in_process(&config_with(ws, server)).await;
    let admin = gw.admin_addr.expect("admin listener");
    let url = format!("https://{name}:{}/v1/deliveries", admin.port());
    let r = get_as(&ca.client(name, admin), &url, ADMIN_TOKEN).await;
    assert_eq!(r.unwrap().status(), 200);
    let plain_url = format!("http://{admin}/v1/deliveries");
    let plain = get_as(&client(), &plain_url, ADMIN_TOKEN).await;
    assert!(
        plain.is_err(),
        "plain HTTP to the admin listener got an answer: {plain:?}"
    );
    let untrusting = reqwest::Client::builder()
        .resolve(name, admin)
        .build()
        .unwrap();
    let r = get_as(&untrusting, &url, ADMIN_TOKEN).await;
    assert!(r.is_err(), "a client without the CA got through");
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_tls_with_the_ingress_certificate_or_its_own() {
    let ca = PrivateCa::new();
    let ws = Workspace::new();
    let (cert, key) = ca.leaf("localhost");
    ws.write("cert.pem", &cert);
    ws.write("key.pem", &key);
    let (admin_cert, admin_key) = ca.leaf("admin.gateway.test");
    ws.write("admin-cert.pem", &admin_cert);
    ws.write("admin-key.pem", &admin_key);

    // By default the admin listener uses [server.tls].
    let gw = admin_only_over_tls(
        &ws,
        "admin_listen = \"127.0.0.1:0\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
        &ca,
        "localhost",
    )
    .await;
    let url = format!("https://localhost:{}/v1/incidents", gw.addr.port());
    let r = post_incident_via(
        &ca.client("localhost", gw.addr),
        &url,
        &incident("TLS-ADMIN-1"),
    )
    .await;
    assert_eq!(r.status(), 202);
    // An early answer reaches the client over TLS too (the drain follows close_notify).
    let ca_file = ws.write("ca.pem", &ca.pem);
    assert_eq!(
        urllib_posts(&url, 3, 10, Some(&ca_file)).await,
        serde_json::json!({"answered 413 application/problem+json 413": 10}),
    );
    gw.stop().await.unwrap();

    // Or its own certificate, here with a plain ingress.
    let gw = admin_only_over_tls(
        &ws,
        "admin_listen = \"127.0.0.1:0\"\nadmin_tls = { cert = \"admin-cert.pem\", key = \"admin-key.pem\" }",
        &ca,
        "admin.gateway.test",
    )
    .await;
    let r = post_incident(&format!("http://{}", gw.addr), &incident("TLS-ADMIN-2")).await;
    assert_eq!(r.status(), 202);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn plain_http_on_the_admin_listener_only_on_loopback_and_only_when_asked() {
    let ws = Workspace::new();
    let (cert, key) = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map(|c| (c.cert.pem(), c.signing_key.serialize_pem()))
        .unwrap();
    ws.write("cert.pem", &cert);
    ws.write("key.pem", &key);
    let tls = "tls = { cert = \"cert.pem\", key = \"key.pem\" }";
    let load = |server: &str| {
        incident_gateway::config::Config::load(&config_with(&ws, server)).map(|c| c.server)
    };
    let err = load(&format!(
        "admin_listen = \"0.0.0.0:9091\"\nadmin_tls = false\n{tls}"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("server.admin_tls"), "{err}");
    assert!(err.contains("loopback"), "{err}");
    let err = load("admin_tls = { cert = \"cert.pem\", key = \"key.pem\" }")
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs admin_listen"), "{err}");
    let err = load("admin_listen = \"127.0.0.1:0\"\nadmin_tls = true")
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.admin_tls"), "{err}");
    let server = load(&format!("admin_listen = \"127.0.0.1:0\"\n{tls}")).unwrap();
    assert!(server.admin_tls.is_some(), "TLS by default when tls is set");

    // Asked for, on loopback: plain HTTP.
    let config = config_with(
        &ws,
        &format!("admin_listen = \"127.0.0.1:0\"\nadmin_tls = false\n{tls}"),
    );
    let gw = start_in_process(&config).await;
    let admin = format!("http://{}", gw.admin_addr.expect("admin listener"));
    let (status, _) = admin_get(&admin, "/v1/deliveries").await;
    assert_eq!(status, 200);
    gw.stop().await.unwrap();
}
