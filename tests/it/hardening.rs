//! Slow and idle clients, the connection cap, and fuzzed requests, over real sockets on
//! 127.0.0.1 against a real server with the tiny model.

use crate::common;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use akidb_server::ServerConfig;
use common::{server::TestServer, TINY};
use proptest::prelude::*;
use serde_json::{json, Value};

fn addr(server: &TestServer) -> String {
    server.url("").trim_start_matches("http://").to_string()
}

/// Blocks until the server closes the connection (read gives EOF or a reset), or `within` passes.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {} // a response (e.g. 408) before the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

fn request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends one request on `stream` and reads one response (headers and a Content-Length body).
fn roundtrip(stream: &mut TcpStream, path: &str, body: &str) -> (u16, String) {
    stream.write_all(request(path, body).as_bytes()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).expect("response");
        assert!(n > 0, "connection closed before a full response");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0usize);
            if data.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + len].to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_dropped_while_normal_clients_are_served() {
    let config = ServerConfig { header_read_timeout: Duration::from_secs(1), ..Default::default() };
    let server = TestServer::start(TINY, config);
    server.wait_healthy().await;
    let target = addr(&server);
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(&target).unwrap();
            s.write_all(b"POST /embed HTTP/1.1\r\nHost: t\r\nContent-Type: appl").unwrap();
            s
        })
        .collect();
    let (status, _) = roundtrip(&mut TcpStream::connect(&target).unwrap(), "/embed", r#"{"inputs":"still here"}"#);
    assert_eq!(status, 200, "served while 200 slow clients hold connections");
    let slow = tokio::task::spawn_blocking(move || {
        slow.iter_mut().map(|s| closed_within(s, Duration::from_secs(10))).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(slow.iter().all(Option::is_some), "every slow client was disconnected: {slow:?}");
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_and_header_timeouts_are_separate() {
    let config = ServerConfig {
        header_read_timeout: Duration::from_secs(1),
        keep_alive_timeout: Duration::from_secs(4),
        ..Default::default()
    };
    let server = TestServer::start(TINY, config);
    server.wait_healthy().await;
    let target = addr(&server);
    tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(&target).unwrap();
        assert_eq!(roundtrip(&mut conn, "/embed", r#"{"inputs":"a"}"#).0, 200);
        // Idle for twice the header timeout: the keep-alive timeout governs, so it stays open.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(roundtrip(&mut conn, "/embed", r#"{"inputs":"b"}"#).0, 200, "reused after 2 s idle");
        let closed = closed_within(&mut conn, Duration::from_secs(10)).expect("closed when idle too long");
        assert!(closed >= Duration::from_secs(3), "closed after {closed:?}, before the 4 s keep-alive timeout");
    })
    .await
    .unwrap();
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_in_json() {
    let config = ServerConfig { body_read_timeout: Duration::from_secs(1), ..Default::default() };
    let server = TestServer::start(TINY, config);
    server.wait_healthy().await;
    let target = addr(&server);
    tokio::task::spawn_blocking(move || {
        for path in ["/embed", "/v1/embeddings"] {
            let mut conn = TcpStream::connect(&target).unwrap();
            let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"inp");
            conn.write_all(head.as_bytes()).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut response = String::new();
            let _ = conn.read_to_string(&mut response);
            assert!(response.starts_with("HTTP/1.1 408"), "{path}: {response}");
            let body: Value = serde_json::from_str(&response[response.find("\r\n\r\n").unwrap() + 4..]).unwrap();
            let message = if path.starts_with("/v1/") { &body["error"]["message"] } else { &body["error"] };
            assert!(message.as_str().unwrap().contains("did not arrive"), "{body}");
        }
    })
    .await
    .unwrap();
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_client_is_served_as_soon_as_a_slot_frees() {
    let config = ServerConfig { max_connections: 4, ..Default::default() };
    let server = TestServer::start(TINY, config);
    server.wait_healthy().await;
    let target = addr(&server);
    // The readiness probe's pooled connection closes first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&target).unwrap()).collect();
    // Let the server accept all four before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn({
        let url = server.url("/embed");
        async move {
            let started = Instant::now();
            let r = reqwest::Client::new().post(url).json(&json!({"inputs": "over the cap"})).send().await.unwrap();
            (r.status().as_u16(), started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "the fifth client waits while four connections are open");
    let freed = Instant::now();
    held.pop();
    let (status, _) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(freed.elapsed() < Duration::from_secs(3), "served {:?} after a slot freed", freed.elapsed());
    drop(held);
    server.shutdown().unwrap();
}

// --- fuzzing: arbitrary bodies on every route -------------------------------------------------

const ROUTES: [&str; 8] = [
    "/api/v1/embed",
    "/v1/embeddings",
    "/embed",
    "/api/embed",
    "/embeddings",
    "/api/embeddings",
    "/embed_all",
    "/tokenize",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("JSON has no NaN", |f| f.is_finite()).prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        Just(json!(1e308)),
        any::<String>().prop_map(Value::String),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map(
                "(inputs|input|model|normalize|truncate|truncation_direction|prompt_name|prompt|encoding_format|dimensions|[a-z]{1,8})",
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like real requests, with arbitrary values in their fields.
fn request_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        (json_value(), prop::option::of(json_value())).prop_map(|(v, m)| json!({"inputs": v, "model": m})),
        (json_value(), json_value()).prop_map(|(v, d)| json!({"input": v, "dimensions": d, "model": "tiny-bert-cls"})),
        prop::collection::vec(any::<String>(), 1..6).prop_map(|t| json!({"inputs": t, "input": t})),
        (prop::collection::vec(any::<String>(), 1..4), json_value(), json_value(), json_value()).prop_map(
            |(t, d, p, n)| json!({"inputs": t, "prompt": t, "dimensions": d, "prompt_name": p, "truncation_direction": n})
        ),
    ]
}

fn check(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: String,
    body: reqwest::Body,
) -> Result<(), TestCaseError> {
    let (status, text) = rt.block_on(async {
        let r = client.post(url).header("content-type", "application/json").body(body).send().await.expect("answered");
        (r.status().as_u16(), r.text().await.expect("body"))
    });
    prop_assert!((200..500).contains(&status), "status {status}: {text}");
    prop_assert!(serde_json::from_str::<Value>(&text).is_ok(), "not JSON ({status}): {text}");
    Ok(())
}

#[test]
fn fuzzed_requests_get_a_json_answer_never_a_5xx_and_the_server_stays_healthy() {
    let server = TestServer::start(TINY, ServerConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(server.wait_healthy());
    let client = reqwest::Client::new();
    let config = ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() };

    proptest!(config.clone(), |(route in 0..ROUTES.len(), body in request_body())| {
        check(&rt, &client, server.url(ROUTES[route]), body.to_string().into())?;
    });
    proptest!(config.clone(), |(route in 0..ROUTES.len(), bytes in prop::collection::vec(any::<u8>(), 0..512))| {
        check(&rt, &client, server.url(ROUTES[route]), bytes.into())?;
    });
    // Tokenization of arbitrary text: any string is a 200 with one vector of the model's size.
    proptest!(config, |(text in any::<String>())| {
        let (status, body) = rt.block_on(async {
            let r = client.post(server.url("/embed")).json(&json!({"inputs": [text]})).send().await.expect("answered");
            (r.status().as_u16(), r.json::<Value>().await.expect("JSON"))
        });
        prop_assert_eq!(status, 200, "{}", body);
        prop_assert_eq!(body[0].as_array().map(Vec::len), Some(32));
    });
    // Deep nesting, past what serde_json recurses into.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = rt
        .block_on(client.post(server.url("/embed")).header("content-type", "application/json").body(deep).send())
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    let health = rt.block_on(client.get(server.url("/health")).send()).unwrap();
    assert_eq!(health.status().as_u16(), 200, "healthy after the fuzzing");
    server.shutdown().unwrap();
}
