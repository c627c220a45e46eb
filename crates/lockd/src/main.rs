//! `lockd`: the lock server. Parses options, sets up logging, raises the open-files
//! limit, and runs [`lockd_server::Server`] until SIGTERM or SIGINT.

mod options;

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use lockd_server::CancellationToken;
use tokio::signal::unix::{signal, Signal, SignalKind};

fn main() -> std::process::ExitCode {
    let cli = options::Cli::parse();
    // Made from the flags' definitions (packaging: man page, completions).
    if let Some(shell) = cli.print_completions {
        use clap::CommandFactory;
        let mut cmd = options::Cli::command();
        clap_complete::generate(shell, &mut cmd, "lockd", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    if cli.print_man {
        use clap::CommandFactory;
        return match clap_mangen::Man::new(options::Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "lockd: cannot write the man page: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let check = cli.check_config;
    let settings = match options::resolve(cli) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "lockd: {}", error_text(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    if check {
        return match options::check(&settings) {
            Ok(notes) => {
                for n in notes {
                    lockd_server::logging::say(&format!("lockd: note: {n}"));
                }
                lockd_server::logging::say(&format!(
                    "lockd: configuration is valid: {}",
                    options::describe(&settings.server, settings.threads)
                ));
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "lockd: {}", error_text(&e));
                std::process::ExitCode::FAILURE
            }
        };
    }
    init_logging(settings.json_logs);
    match run(settings) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "lockd: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: an OS error is often both a cause and part of
/// the message that wraps it ("Address already in use (os error 98): Address already in
/// use (os error 98)").
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Never fails, so logging can never panic lockd (see lockd_server::logging); colour
    // only for a person at a terminal, not in files or the journal.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| lockd_server::logging::QuietStderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

fn run(settings: options::Settings) -> anyhow::Result<()> {
    use lockd_server::logging::say;
    match &settings.key_source {
        options::KeySource::Given => {}
        options::KeySource::Generated(path) => {
            say(&format!(
                "lockd: no auth key given; generated one: {}",
                settings.server.auth_key
            ));
            say(&format!("lockd: auth key written to {}", path.display()));
        }
        options::KeySource::File(path) => say(&format!(
            "lockd: no auth key given; using the one in {}",
            path.display()
        )),
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
    let key_file = match &settings.key_source {
        options::KeySource::Generated(p) | options::KeySource::File(p) => Some(p.clone()),
        options::KeySource::Given => None,
    };
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
            options = %options::describe(&config, threads),
            "lockd listening"
        );
        // The one line a person needs to connect, with commands that work as printed.
        let a = server.local_addr();
        let key = match &key_file {
            Some(p) => format!("\"$(cat {})\"", p.display()),
            None => "YOUR-AUTH-KEY".to_string(),
        };
        lockd_server::logging::say(&format!(
            "lockd: connect to {a}: redis-cli -h {} -p {} -a {key} PING, or lockctl --addr {a}{} ping",
            a.ip(),
            a.port(),
            if key_file.is_some() { "" } else { " --auth-key YOUR-AUTH-KEY" },
        ));
        let shutdown = CancellationToken::new();
        let Signals { term, int, hup } = signals;
        tokio::spawn(on_signal(term, int, shutdown.clone()));
        let handle = server.handle();
        tokio::spawn(on_hangup(hup, server.handle()));
        server.run(shutdown).await;
        if let Some(why) = handle.failure() {
            anyhow::bail!("this node's Raft stopped ({why}): start lockd again");
        }
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

/// How long a graceful shutdown may take before lockd exits anyway.
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

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
    // Graceful, within a bound; a second signal forces it.
    let why = tokio::select! {
        _ = next(&mut term) => "a second signal (SIGTERM)",
        _ = next(&mut int) => "a second signal (SIGINT)",
        _ = tokio::time::sleep(SHUTDOWN_BOUND) => "the shutdown bound (10 s)",
    };
    tracing::warn!("{why}: exiting now");
    std::process::exit(1);
}
