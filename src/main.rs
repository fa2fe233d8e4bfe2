//! The `warren` binary: command line → config → tracing → server, until SIGTERM or Ctrl-C.

use clap::Parser;
use warren::config::{Args, Config};

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("warren: {}", first.trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match warren::server::raise_fd_limit() {
        Some(n) if (n as usize) < config.max_connections + 100 => tracing::warn!(
            "open file limit {n} is below max_connections {}: raise it (ulimit -n)",
            config.max_connections
        ),
        _ => {}
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let server = match warren::Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warren: {e}");
                return 1;
            }
        };
        let failed = tokio::select! {
            _ = wait_for_signal() => None,
            reason = server.failed() => Some(reason),
        };
        match &failed {
            None => tracing::info!("shutting down"),
            Some(reason) => tracing::error!("stopping: {reason}"),
        }
        server.shutdown().await;
        if let Some(reason) = failed {
            eprintln!("warren: stopped: {reason}");
            return 1;
        }
        0
    });
    std::process::exit(code);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
