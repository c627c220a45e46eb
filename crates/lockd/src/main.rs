//! `lockd`: the lock server. Parses options, sets up logging, raises the open-files
//! limit, and runs [`lockd_server::Server`] until SIGTERM or SIGINT.

mod options;

use anyhow::Context;
use clap::Parser;
use lockd_server::CancellationToken;
use tokio::signal::unix::{signal, Signal, SignalKind};

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
        // Before the port opens: a SIGTERM that comes as soon as clients can connect must
        // stop lockd gracefully, not kill it with the default action.
        let signals = Signals::install();
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
        let Signals { term, int, hup } = signals;
        tokio::spawn(on_signal(term, int, shutdown.clone()));
        tokio::spawn(on_hangup(hup, server.handle()));
        server.run(shutdown).await;
        anyhow::Ok(())
    })
}

/// SIGHUP: read the TLS certificate and key again.
/// The signals lockd handles, installed once at start.
struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    fn install() -> Signals {
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot install the {name} handler");
                None
            }
        };
        Signals {
            term: install(SignalKind::terminate(), "SIGTERM"),
            int: install(SignalKind::interrupt(), "SIGINT"),
            hup: install(SignalKind::hangup(), "SIGHUP"),
        }
    }
}

/// Waits for the next delivery of `s`; never, if it could not be installed.
async fn next(s: &mut Option<Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn on_hangup(mut hup: Option<Signal>, handle: lockd_server::ServerHandle) {
    while next(&mut hup).await.is_some() {
        match handle.reload_tls() {
            Ok(true) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
            Ok(false) => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; the old certificate stays in use")
            }
        }
    }
}

async fn on_signal(mut term: Option<Signal>, mut int: Option<Signal>, shutdown: CancellationToken) {
    let name = tokio::select! {
        _ = next(&mut term) => "SIGTERM",
        _ = next(&mut int) => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, closing the open ones"
    );
    shutdown.cancel();
}
