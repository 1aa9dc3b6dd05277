//! A registry per test: its own temp root, its own port on 127.0.0.1, its own credentials.

#![allow(dead_code)] // Each test binary uses its own part.

pub mod api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use enclii_registry::{Credentials, Registry};

pub struct TestRegistry {
    pub registry: Registry,
    pub addr: SocketAddr,
    pub root: TempDir,
    pub credentials: Credentials,
    server: tokio::task::JoinHandle<()>,
}

impl TestRegistry {
    pub async fn start(test: &str) -> Self {
        let root = TempDir::new(&format!("enclii-registry-{test}"));
        let credentials = Credentials::generate("enclii");
        let registry = Registry::open(root.to_path_buf(), credentials.clone()).expect("opening the registry");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = registry.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            registry,
            addr,
            root,
            credentials,
            server,
        }
    }

    /// `127.0.0.1:<port>`, as image references name the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host())
    }

    pub fn user(&self) -> &str {
        &self.credentials.username
    }

    pub fn password(&self) -> &str {
        &self.credentials.password
    }

    /// Files directly under `folder` (relative to the root), e.g. `blobs/sha256`.
    pub fn files(&self, folder: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join(folder))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for TestRegistry {
    /// Stops the server; the root goes after, with the field.
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A fresh folder under the system's temp folder (`<prefix>-<random>`), removed on drop; reads
/// as its path.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Makes a file look last used `age` ago (as if written then): what GC's grace period reads.
pub fn age(path: &Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

/// Fails the test with how to install `what` when `check` cannot run: the tests never skip.
pub async fn require(program: &str, args: &[&str], how: &str) {
    let output = tokio::process::Command::new(program).args(args).output().await;
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`{program} {}` failed ({}): {}\n{how}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("cannot run {program}: {e}\n{how}"),
    }
}

/// Runs a command, failing the test with its output if it fails; returns stdout.
pub async fn run(command: &mut tokio::process::Command) -> String {
    let output = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
