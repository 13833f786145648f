//! The keygate binary: reads the config and runs the proxy.
//!
//! The data plane runs on a multi-thread tokio runtime; the admin HTTP
//! listener runs on its own thread with a current-thread runtime, so health
//! checks and scrapes keep answering when the data plane is saturated, and
//! never steal its workers. Both listeners are bound before anything starts
//! serving, so a bad address fails the start instead of half-starting.
//!
//! SIGHUP re-reads the config file (see `keygate::reload`); SIGTERM and
//! SIGINT shut down gracefully.

/// mimalloc: the data path allocates and frees many small buffers per
/// command (request frames, reply slots); glibc's malloc showed up as a
/// fifth of keygate's CPU in profiles of pipelined load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use keygate::admin::ProxyState;
use keygate::config::{Config, LogFormat};
use keygate::proxy::Proxy;
use keygate::server::Listeners;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;

/// Exit status for a configuration that cannot be read or is invalid.
const EXIT_BAD_CONFIG: u8 = 2;
/// Exit status for a failure while starting or running.
const EXIT_RUNTIME_FAILURE: u8 = 1;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "A Redis-protocol caching proxy that isolates services, governs TTLs, follows Sentinel and measures.",
    after_help = "Exit status:\n  0  clean shutdown (SIGTERM/SIGINT), or --check found the config valid\n  1  failed to start or run (e.g. cannot bind a listener)\n  2  the config file cannot be read or is invalid (also for bad command-line usage)\n\nLog filtering follows RUST_LOG (default: info)."
)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the config, print `config OK: FILE` and exit, without starting.
    #[arg(long)]
    check: bool,
    /// Log line format; overrides `[proxy] log_format`.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Compact,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> LogFormat {
        match arg {
            LogFormatArg::Compact => LogFormat::Compact,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

fn main() -> ExitCode {
    purge_freed_memory_soon();
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("keygate: invalid config {}:\n{error}", cli.config.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check {
        // The TLS files too: a start would fail on them.
        if let Err(error) = keygate::proxy::load_tls(&config) {
            eprintln!("keygate: invalid config {}:\n{error}", cli.config.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        println!("config OK: {}", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let log_format = cli.log_format.map_or(config.proxy.log_format, Into::into);
    init_tracing(log_format);
    match run(config, &cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("keygate failed: {error:#}");
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`);
/// colours only on a terminal, so log files and collectors get plain text.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Compact => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Binds the listeners, starts the admin thread and serves until a signal.
fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    raise_open_files_limit(&config);
    // One worker is one thread either way; the current-thread scheduler
    // does it without the work-stealing machinery (no cross-thread wake-ups
    // to arrange), which is measurably cheaper per request.
    let mut runtime = match config.proxy.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().thread_name("keygate-worker");
    let runtime = runtime.build().context("cannot start the tokio runtime")?;

    let admin_listener = match &config.proxy.admin_listen {
        Some(address) => Some(bind_std(address).with_context(|| {
            format!("cannot bind the admin listener [proxy] admin_listen = {address:?}")
        })?),
        None => None,
    };
    let mut listeners = Listeners::default();
    if let Some(listen) = &config.proxy.listen {
        let listener = runtime
            .block_on(TcpListener::bind(listen))
            .with_context(|| {
                format!("cannot bind the client listener [proxy] listen = {listen:?}")
            })?;
        listeners.plain = Some(listener);
    }
    if let Some(listen_tls) = &config.proxy.listen_tls {
        let listener = runtime
            .block_on(TcpListener::bind(listen_tls))
            .with_context(|| {
                format!("cannot bind the TLS client listener [proxy] listen_tls = {listen_tls:?}")
            })?;
        listeners.tls = Some(listener);
    }

    log_start(&config, config_path);
    let grace = config.proxy.shutdown_grace;
    let proxy = Proxy::new(config)
        .context("cannot build the proxy")?
        .reload_from(config_path.to_path_buf());
    let admin = admin_listener
        .map(|listener| spawn_admin(listener, proxy.state()))
        .transpose()?;

    let served = runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        let hangups = reload_on_hangup(proxy.state()).context("cannot install signal handlers")?;
        tokio::spawn(hangups);
        tokio::spawn(return_freed_memory());
        proxy
            .run_listeners(listeners, shutdown)
            .await
            .context("proxy stopped")
    });
    if let Some(admin) = admin {
        admin.stop();
    }
    runtime.shutdown_timeout(grace);
    served?;
    tracing::info!("keygate stopped");
    Ok(())
}

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (not exported by
/// libmimalloc-sys); a unit test checks it against the option's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc keeps freed memory resident for `purge_delay` (1 s by default)
/// in case it is wanted again. keygate's large allocations are replies held
/// for slow clients, bounded by `max_pending_reply_bytes_hard` per client;
/// with the delay, every buffer a growing reply was copied out of stayed
/// resident too, and RSS reached three times the limit. With mimalloc 2's
/// default of 10 ms, RSS follows what keygate holds, for a few hundred
/// `madvise` calls per million pipelined requests. An operator's
/// `MIMALLOC_PURGE_DELAY` still wins.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

#[allow(unsafe_code)]
fn purge_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option value; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// How often freed memory is offered back to the system.
const MEMORY_RETURN_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// A page freed by another thread than the one that allocated it (a reply
/// read on one worker and written by the client's task on another) goes
/// back only when its owner collects; a proxy that has just dropped a large
/// reply backlog and then serves only small requests may never do so, and
/// kept tens of MiB resident for good; and mimalloc purges what expired
/// only inside a later call that frees a page. A collection once a period
/// on a worker does both (cheap when there is nothing to do).
#[allow(unsafe_code)]
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(MEMORY_RETURN_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: `mi_collect` takes no pointers and may be called from any
        // thread that allocates through mimalloc, as tokio's workers do.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

/// File descriptors keygate needs besides client connections: listeners,
/// the runtime, logs, and slack for connections being refused.
const FD_HEADROOM: u64 = 128;

/// Raises the open-files soft limit to the hard limit: the soft default
/// (often 1024) would make accepts fail below `max_clients`, and a failed
/// accept leaves the client waiting instead of getting a clean refusal.
/// Warns when even the hard limit is too low for the configuration.
fn raise_open_files_limit(config: &Config) {
    let needed = config.proxy.max_clients as u64
        + config.backend_connections() as u64
        + config.backend.dedicated_max as u64
        + FD_HEADROOM;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-files limit is below max_clients plus backend connections; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}

/// One line saying what is starting; never includes a password.
fn log_start(config: &Config, config_path: &Path) {
    let backend = &config.backend;
    let backend_desc = match (&backend.address, &backend.master_name) {
        (Some(address), _) => format!("standalone {address}"),
        (None, Some(master)) => format!(
            "sentinel master {master:?} via {}",
            backend.sentinels.join(",")
        ),
        (None, None) => match &backend.cluster {
            Some(seeds) => format!("cluster via {}", seeds.join(",")),
            None => "none".to_owned(),
        },
    };
    tracing::info!(
        config = %config_path.display(),
        listen = config.proxy.listen.as_deref().unwrap_or("off"),
        listen_tls = config.proxy.listen_tls.as_deref().unwrap_or("off"),
        admin_listen = config.proxy.admin_listen.as_deref().unwrap_or("off"),
        backend = %backend_desc,
        services = config.services.len(),
        "keygate starting"
    );
}

/// Binds a listening socket without a runtime, ready for `from_std`.
fn bind_std(address: &str) -> std::io::Result<StdTcpListener> {
    let listener = StdTcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The admin thread and the way to stop it.
struct AdminThread {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl AdminThread {
    /// Asks the admin listener to shut down gracefully and waits for it.
    fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("admin listener thread panicked");
        }
    }
}

/// Runs the admin listener on its own thread and current-thread runtime.
fn spawn_admin(listener: StdTcpListener, state: Arc<ProxyState>) -> anyhow::Result<AdminThread> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the admin runtime")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("keygate-admin".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                let shutdown = async move {
                    let _ = stopped.await;
                };
                keygate::admin::serve(listener, state, shutdown).await
            });
            if let Err(error) = served {
                tracing::error!("admin listener failed: {error}");
            }
        })
        .context("cannot start the admin thread")?;
    Ok(AdminThread { stop, thread })
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Re-reads the config file on every SIGHUP; the outcome is logged by the
/// reload itself (and shown in `/health`).
fn reload_on_hangup(
    state: Arc<ProxyState>,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading the config");
            let state = state.clone();
            let _ = tokio::task::spawn_blocking(move || state.reload()).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn purge_delay_option_is_the_one_set() {
        // SAFETY: reads an option value.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc 3's default purge delay (main, which changes it, has not run).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                delay, 1000,
                "option {MI_OPTION_PURGE_DELAY} is not purge_delay"
            );
        }
    }
}
