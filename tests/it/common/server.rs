//! A real server for the tests: in process on an ephemeral port, or the real binary.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use akidb_engine::{Model, ModelOptions};
use akidb_server::{Server, ServerConfig};

use super::{hf_env, hf_home};

pub struct TestServer {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl TestServer {
    /// Starts a real server on an ephemeral port in its own runtime thread.
    pub fn start(model: &str, config: ServerConfig) -> Self {
        Self::start_with_delay(model, config, Duration::ZERO)
    }

    pub fn start_with_delay(model: &str, config: ServerConfig, load_delay: Duration) -> Self {
        Self::start_models(&[model], config, load_delay)
    }

    /// One server holding every model in `models`, each behind its own scheduler.
    pub fn start_models(models: &[&str], config: ServerConfig, load_delay: Duration) -> Self {
        hf_env();
        let all: Vec<ModelOptions> =
            models.iter().map(|m| ModelOptions { model: m.to_string(), ..Default::default() }).collect();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let server = Server::bind(ServerConfig { host: "127.0.0.1".into(), port: 0, ..config })
                    .await
                    .map_err(|e| e.to_string())?;
                addr_tx.send(server.local_addr().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
                let load = move || {
                    std::thread::sleep(load_delay);
                    all.iter().map(Model::load).collect::<Result<Vec<_>, _>>()
                };
                server
                    .run(load, async move {
                        let _ = stop_rx.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("server bound");
        Self { base: format!("http://{addr}"), stop: Some(stop), thread: Some(thread) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn wait_healthy(&self) {
        wait_healthy(&self.base).await;
    }

    /// Waits for the server to end by itself.
    pub fn join(mut self) -> Result<(), String> {
        self.thread.take().expect("thread").join().expect("server thread")
    }

    /// Stops accepting, lets in-flight requests finish, returns the server's result.
    pub fn shutdown(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().expect("thread").join().expect("server thread")
    }
}

/// Starts the real binary and returns it with its address, read from its log.
pub fn spawn_binary(args: &[&str]) -> (std::process::Child, String) {
    let (child, base, _) = spawn_binary_logged(args);
    (child, base)
}

/// The same, with every line the server logs (at info) kept for the test to read.
pub fn spawn_binary_logged(args: &[&str]) -> (std::process::Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_akidb"))
        .env("HF_HOME", hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "info")
        .args(["serve", "--port", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn akidb serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                    sent = true;
                }
            }
            kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("server logged its address");
    (child, format!("http://{addr}"), log)
}

/// Polls `base`/health until it answers 200 (at most 30 s).
pub async fn wait_healthy(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became healthy");
}
