//! The `warren` binary: flags, environment, config errors and graceful shutdown on SIGTERM.

use std::process::Command;

use crate::common::{Raw, spawn_binary, warren};

/// Run to completion; (exit code, non-empty stderr lines).
fn fails(c: &mut Command) -> (i32, Vec<String>) {
    let out = c.output().expect("runs");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[test]
fn bad_flags_and_values_exit_nonzero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "frame_max = \"big\"\n").unwrap();
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "no_such_setting = 1\n").unwrap();
    let small = dir.path().join("small.toml");
    std::fs::write(&small, "frame_max = 100\n").unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec!["--bogus".into()],
        vec!["--listen".into(), "nonsense".into()],
        vec!["--http-listen".into(), "127.0.0.1:notaport".into()],
        vec!["--config".into(), bad_toml.display().to_string()],
        vec!["--config".into(), unknown_key.display().to_string()],
        vec!["--config".into(), small.display().to_string()],
        vec!["--config".into(), "/nonexistent/warren.toml".into()],
    ];
    for args in cases {
        let (code, lines) = fails(warren().args(&args));
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with("warren: "), "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_320_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = spawn_binary(
        warren()
            .env("WARREN_LISTEN", "127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path()),
    );
    let broker = crate::common::TestBroker {
        server: None,
        port: r.port,
        dir: None,
        config: warren::Config::default(),
    };
    let mut raw = Raw::connect(&broker).await;
    raw.open(0, 0).await;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(r.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    raw.expect_close(320).await;
    let exit = tokio::task::spawn_blocking(move || r.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_or_corrupt_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn_binary(
        warren()
            .env("WARREN_LISTEN", "127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path()),
    );
    let (code, lines) = fails(
        warren()
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert_ne!(code, 0);
    assert!(
        lines.iter().any(|l| l.contains("in use by another broker")),
        "{lines:?}"
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // Garbage where the store's manifest pointer should be: refuse to start, say why.
    std::fs::write(dir.path().join("store").join("CURRENT"), b"garbage\n").unwrap();
    let (code, lines) = fails(
        warren()
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert_ne!(code, 0);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("warren: ") && l.contains("store")),
        "{lines:?}"
    );
}
