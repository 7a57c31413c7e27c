//! Test-only helpers for Rust integration tests: a real S3 server (moto, from PyPI:
//! `moto[server]`, installed by `scripts/install-test-deps.sh`) on a free port with buckets,
//! and `shale` processes (`serve` against that S3 server, or `dev`) that can be killed with
//! SIGKILL, stopped with SIGTERM and restarted on the same data.
//!
//! Everything here uses `std` only: processes, plain HTTP/1.1 over `TcpStream` for the
//! S3 calls moto accepts unsigned (create bucket, list objects), and a raw Kafka
//! ApiVersions request for readiness. Every process is killed when its handle drops.
//!
//! ```no_run
//! let s3 = shale_testkit::S3Server::start()?;
//! let bucket = s3.create_bucket("shale")?;
//! let node = shale_testkit::Shale::serve_s3(&s3, &bucket, &[("wal.batch.interval.ms", "20")])?;
//! println!("bootstrap {}", node.bootstrap());
//! # anyhow::Ok(())
//! ```

pub mod faulty;

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A TCP port that is free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Whether `moto_server` (or the `moto` Python package) is available, so tests can skip
/// with a message instead of failing on a machine without the test dependencies.
pub fn s3_server_available() -> bool {
    moto_command().is_some()
}

fn moto_command() -> Option<Vec<String>> {
    if let Some(path) = which("moto_server") {
        return Some(vec![path.display().to_string()]);
    }
    let ok = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| vec!["python3".into(), "-m".into(), "moto.server".into()])
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn send_signal(child: &Child, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {} failed", child.id());
    }
    Ok(())
}

/// A minimal HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP response: {:.200}", buf))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `moto_server -H 127.0.0.1 -p PORT`: an in-memory S3 server. Killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl S3Server {
    pub const ACCESS_KEY: &'static str = "test";
    pub const SECRET_KEY: &'static str = "test";
    pub const REGION: &'static str = "us-east-1";

    /// Starts moto on a free port and waits until it answers (typically < 1 s).
    pub fn start() -> anyhow::Result<Self> {
        let cmd = moto_command().context(
            "moto_server not found: install the test dependencies (scripts/install-test-deps.sh)",
        )?;
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log"))?;
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut server = S3Server {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("moto_server exited with {status}");
            }
            if matches!(http(port, "GET", "/"), Ok((200, _))) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                kill(&mut server.child);
                bail!("moto_server not ready after 30s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts unsigned requests); returns its name.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<String> {
        let (status, body) = http(self.port, "PUT", &format!("/{name}"))?;
        if status != 200 {
            bail!("creating bucket {name}: HTTP {status}: {body:.300}");
        }
        Ok(name.to_string())
    }

    /// Keys of the objects in a bucket (first 1000).
    pub fn list_keys(&self, bucket: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) = http(self.port, "GET", &format!("/{bucket}?list-type=2"))?;
        if status != 200 {
            bail!("listing bucket {bucket}: HTTP {status}: {body:.300}");
        }
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Path of the `shale` binary: `$SHALE_BIN`, else `target/release/shale`, else
/// `target/debug/shale` of this workspace.
pub fn shale_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHALE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("shale");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no shale binary: run `cargo build --release -p shale` or set SHALE_BIN")
}

/// A `shale` process on a free port with its own data directory. Killed on drop.
pub struct Shale {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Shale {
    /// `shale serve` against an S3 server and bucket, with extra settings.
    pub fn serve_s3(
        s3: &S3Server,
        bucket: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut all = vec![
            ("object.store", "s3".to_string()),
            ("s3.endpoint", s3.endpoint()),
            ("s3.bucket", bucket.to_string()),
            ("s3.region", S3Server::REGION.to_string()),
            ("s3.access.key.id", S3Server::ACCESS_KEY.to_string()),
            ("s3.secret.access.key", S3Server::SECRET_KEY.to_string()),
        ];
        all.extend(settings.iter().map(|(k, v)| (*k, v.to_string())));
        Self::serve(
            &all.iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
    }

    /// `shale serve --config` with these settings (listeners and data.dir are filled in).
    pub fn serve(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut toml = format!(
            "\"node.id\" = 1\n\"listeners\" = \"PLAINTEXT://127.0.0.1:{port}\"\n\"data.dir\" = {:?}\n",
            dir.path().join("data").display().to_string()
        );
        for (k, v) in settings {
            toml.push_str(&format!("{k:?} = {v:?}\n"));
        }
        let config = dir.path().join("shale.toml");
        std::fs::write(&config, toml)?;
        let args = vec![
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        Self::launch(dir, port, args, vec![])
    }

    /// `shale dev` on a free port with a temporary data directory; `SHALE_*` overrides.
    pub fn dev(overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let args = vec![
            "dev".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--port".into(),
            port.to_string(),
        ];
        let envs = overrides
            .iter()
            .map(|(k, v)| {
                (
                    format!("SHALE_{}", k.to_ascii_uppercase().replace('.', "_")),
                    v.to_string(),
                )
            })
            .collect();
        Self::launch(dir, port, args, envs)
    }

    fn launch(
        dir: tempfile::TempDir,
        port: u16,
        args: Vec<String>,
        envs: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut s = Shale {
            child: None,
            port,
            args,
            envs,
            dir,
        };
        s.start()?;
        Ok(s)
    }

    /// (Re)starts the process on the same port and data, and waits until it is ready.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(shale_bin()?);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("SHALE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        self.child = Some(cmd.spawn().context("starting shale")?);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                self.child = None;
                bail!(
                    "shale exited with {status} while starting:\n{}",
                    self.log_tail(40)
                );
            }
            if api_versions_ok(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("shale not ready after {timeout:?}:\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("shale.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        kill(&mut child);
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for the exit status (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        send_signal(&child, "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                kill(&mut child);
                bail!("shale did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Shale {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

/// Sends ApiVersions v0 and checks for a response with error code 0.
pub fn api_versions_ok(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // size, api key 18, version 0, correlation id 1, client id "tk"
        let mut req = vec![0, 0, 0, 12, 0, 18, 0, 0, 0, 0, 0, 1, 0, 2];
        req.extend_from_slice(b"tk");
        s.write_all(&req)?;
        let mut head = [0u8; 10];
        s.read_exact(&mut head)?;
        Ok(head[4..8] == [0, 0, 0, 1] && head[8..10] == [0, 0])
    };
    attempt().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
    }

    #[test]
    fn s3_server_starts_and_creates_buckets() {
        if !s3_server_available() {
            eprintln!("skipped: moto_server not installed (scripts/install-test-deps.sh)");
            return;
        }
        let s3 = S3Server::start().unwrap();
        assert_eq!(s3.create_bucket("testkit").unwrap(), "testkit");
        assert!(s3.list_keys("testkit").unwrap().is_empty());
        assert!(s3.list_keys("no-such-bucket").is_err());
    }

    #[test]
    fn shale_serve_against_s3_restarts_after_kill_and_stops_on_sigterm() {
        if !s3_server_available() || shale_bin().is_err() {
            eprintln!("skipped: needs moto_server and a built shale binary");
            return;
        }
        let s3 = S3Server::start().unwrap();
        let bucket = s3.create_bucket("node").unwrap();
        let mut node = Shale::serve_s3(&s3, &bucket, &[("wal.batch.interval.ms", "20")]).unwrap();
        assert!(api_versions_ok(node.port()));
        node.kill9().unwrap();
        assert!(!api_versions_ok(node.port()));
        node.start().unwrap();
        assert!(api_versions_ok(node.port()));
        let status = node.terminate(Duration::from_secs(60)).unwrap();
        assert!(status.success(), "SIGTERM must exit 0, got {status}");
    }

    #[test]
    fn shale_dev_starts_on_a_free_port() {
        if shale_bin().is_err() {
            eprintln!("skipped: no shale binary");
            return;
        }
        let node = Shale::dev(&[("num.partitions", "2")]).unwrap();
        assert!(api_versions_ok(node.port()));
        assert_eq!(node.bootstrap(), format!("127.0.0.1:{}", node.port()));
    }
}
