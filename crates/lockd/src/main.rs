//! `lockd`: the lock server. Parses options, sets up logging, raises the open-files
//! limit, and runs [`lockd_server::Server`] until SIGTERM or SIGINT.

mod options;

use anyhow::Context;
use clap::Parser;
use lockd_server::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = options::Cli::parse();
    let check = cli.check_config;
    let settings = match options::resolve(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lockd: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if check {
        let c = &settings.server;
        println!(
            "lockd: configuration is valid: listen {}:{}, lock timeout {} s, max locks {}, max clients {}",
            c.address,
            c.port,
            c.lock_timeout.as_secs(),
            c.max_locks,
            c.max_clients
        );
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(settings.json_logs);
    match run(settings) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

fn run(settings: options::Settings) -> anyhow::Result<()> {
    if let Some(generated) = &settings.generated_key {
        println!("lockd: no auth key given; generated one: {}", generated.key);
        println!("lockd: auth key written to {}", generated.path.display());
    }
    match lockd_server::sys::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let rt = if settings.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    let threads = settings.threads;
    rt.block_on(async move {
        let config = settings.server;
        let server = lockd_server::Server::bind(config.clone()).await?;
        if let Some(a) = server.admin_addr() {
            tracing::info!(address = %a, "admin HTTP listening");
        }
        tracing::info!(
            address = %server.local_addr(),
            lock_timeout_s = config.lock_timeout.as_secs(),
            max_locks = config.max_locks,
            max_clients = config.max_clients,
            max_backlog = config.max_backlog,
            auth_scheme = ?config.auth_scheme,
            idle_timeout_s = config.idle_timeout.map(|d| d.as_secs()),
            data_dir = config.data_dir.as_ref().map(|d| d.display().to_string()),
            tls = config.tls_cert.is_some(),
            tls_required = config.tls_required,
            busy_poll_us = config.busy_poll.map_or(0, |d| d.as_micros() as u64),
            threads,
            "lockd listening"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        tokio::spawn(on_hangup(server.handle()));
        server.run(shutdown).await;
        anyhow::Ok(())
    })
}

/// SIGHUP: read the TLS certificate and key again.
async fn on_hangup(handle: lockd_server::ServerHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        match handle.reload_tls() {
            Ok(true) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
            Ok(false) => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; the old certificate stays in use")
            }
        }
    }
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, closing the open ones"
    );
    shutdown.cancel();
}
