//! What a user sees from `shale dev`: a short banner on stdout, then quiet logs on stderr.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest acceptable log line: one screen line and a bit, never a state dump.
const MAX_LINE: usize = 300;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Src {
    Out,
    Err,
}

fn forward(src: Src, r: impl Read + Send + 'static, tx: mpsc::Sender<(Src, String)>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send((src, line)).is_err() {
                break;
            }
        }
    });
}

/// Runs `shale dev` in `dir` until its banner is complete plus `settle`, then stops it with
/// SIGINT (as Ctrl-C would) and returns everything it printed.
fn run_dev(dir: &Path, port: u16, settle: Duration) -> Vec<(Src, String)> {
    run_dev_with(dir, port, settle, None)
}

/// [`run_dev`] with `RUST_LOG` set to `rust_log` (unset when `None`) and `SHALE_LOG` unset.
fn run_dev_with(
    dir: &Path,
    port: u16,
    settle: Duration,
    rust_log: Option<&str>,
) -> Vec<(Src, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shale"));
    cmd.args(["dev", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--port", &port.to_string()])
        .current_dir(dir)
        // The default filter is under test, not the developer's.
        .env_remove("SHALE_LOG")
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shale dev");
    let (tx, rx) = mpsc::channel();
    forward(Src::Out, child.stdout.take().unwrap(), tx.clone());
    forward(Src::Err, child.stderr.take().unwrap(), tx);

    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready_at = None;
    loop {
        let now = Instant::now();
        let until = ready_at
            .map_or(deadline, |t: Instant| t + settle)
            .min(deadline);
        if now >= until {
            break;
        }
        match rx.recv_timeout(until - now) {
            Ok(l) => {
                if l.0 == Src::Out && l.1.starts_with("stop with") {
                    ready_at = Some(Instant::now());
                }
                lines.push(l);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let exited = Instant::now() + Duration::from_secs(20);
    while Instant::now() < exited {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The pipes close when the process exits; collect what it printed while stopping.
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(l);
    }
    assert!(ready_at.is_some(), "no banner within 60 s: {lines:#?}");
    lines
}

fn check_quiet(lines: &[(Src, String)]) {
    for (src, l) in lines {
        assert!(
            l.len() <= MAX_LINE,
            "{src:?} line of {} chars: {}",
            l.len(),
            &l[..MAX_LINE]
        );
        assert!(!l.contains('\u{1b}'), "colour codes in a pipe: {l}");
        assert!(
            !(l.contains("openraft") && l.contains("INFO")),
            "openraft INFO line by default: {l}"
        );
    }
}

#[test]
fn shale_dev_prints_a_short_banner_and_then_stays_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    for start in ["first start", "restart on the same data dir"] {
        let lines = run_dev(dir.path(), port, Duration::from_secs(2));
        let out: Vec<&str> = lines
            .iter()
            .filter(|(s, _)| *s == Src::Out)
            .map(|(_, l)| l.as_str())
            .collect();
        // Scripts wait for exactly this first line.
        assert_eq!(
            out.first().copied(),
            Some(format!("bootstrap: 127.0.0.1:{port}").as_str()),
            "{start}: {out:#?}"
        );
        let banner = out.join("\n");
        for want in [
            env!("CARGO_PKG_VERSION"),
            &dir.path().join("data").display().to_string(),
            "object store: local directory",
            "Ctrl-C",
        ] {
            assert!(
                banner.contains(want),
                "{start}: banner lacks {want:?}:\n{banner}"
            );
        }
        assert!(out.len() <= 6, "{start}: banner of {} lines", out.len());
        check_quiet(&lines);
        let info = lines
            .iter()
            .filter(|(s, l)| *s == Src::Err && l.contains(" INFO "))
            .count();
        // Start and stop; per-event lines are for debugging (with some margin for new ones).
        assert!(info <= 8, "{start}: {info} INFO lines: {lines:#?}");
    }
}

#[test]
fn rust_log_still_turns_openraft_info_back_on() {
    let dir = tempfile::tempdir().unwrap();
    let lines = run_dev_with(
        dir.path(),
        free_port(),
        Duration::from_millis(500),
        Some("info,openraft=info"),
    );
    assert!(
        lines
            .iter()
            .any(|(s, l)| *s == Src::Err && l.contains("INFO") && l.contains("openraft")),
        "{lines:#?}"
    );
}
