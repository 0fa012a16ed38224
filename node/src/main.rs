//! The `shoal` binary's edge: parse the command line, set up logging, dispatch.

use clap::Parser;
use shoal_node::cli::{CertsCommand, Cli, Command, LogFormat};
use shoal_node::{commands, config::NodeConfig, daemon, demo};
use tracing_subscriber::EnvFilter;

/// mimalloc returns freed pages to the OS; with glibc malloc a node that parsed a 10k-service
/// rules file kept its peak RSS after the table shrank (issue #15).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    init_logging(format);
    match dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output went away (`shoal table | head`): it has what it wanted.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let report = report(&e);
            let report = shoal_node::terminal_safe(&report);
            // With JSON logs the last word is a JSON line too: a plain one was dropped by log
            // pipelines that parse every line (an operator's probe). Plain when logging is off.
            if format == LogFormat::Json && tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!(error = %report, "shoal stopped");
            } else {
                eprintln!("error: {report}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-joined as `{:#}` would, except that a cause is left out when
/// the message before it already ends with it (errors that embed their source's text).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = NodeConfig::resolve(&args)?;
            fail_stop_on_panic();
            runtime()?.block_on(daemon::run(config))
        }
        Command::Status(args) => runtime()?.block_on(commands::status(&args)),
        Command::Table(args) => runtime()?.block_on(commands::table(&args)),
        Command::Dataplane(args) => runtime()?.block_on(commands::dataplane(&args)),
        Command::Certs(CertsCommand::Init(args)) => commands::certs_init(&args),
        Command::Certs(CertsCommand::Issue(args)) => commands::certs_issue(&args),
        Command::Check(args) => commands::check(&args),
        Command::Demo(args) => runtime()?.block_on(demo::run(&args)),
        Command::BackendInit(args) => commands::backend_init(&args),
        Command::AnnounceGuard(args) => {
            shoal_node::announce::guard::run(
                shoal_node::announce::guard::GuardTargets {
                    table: args.table,
                    interface: args.interface,
                },
                std::time::Duration::from_millis(args.deadline_ms),
            );
            Ok(())
        }
        Command::Sysctls(args) => commands::sysctls(&args),
    }
}

/// A panic anywhere in a running node ends the process. A panicked task otherwise dies alone
/// and the node keeps gossiping that it is ready while that duty (the source, reconcile, the
/// announcements) is gone; a dead node is seen by the mesh within a second, its watchdog
/// withdraws its routes and its supervisor restarts it.
fn fail_stop_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// chitchat's `state` module warns about its own reconciliation, nothing an operator can act
/// on: a peer that already forgot a dead incarnation refuses the reset a node still holding it
/// sends, every round until that node forgets it too (`dead_node_grace_ms`, an hour), and each
/// refusal was a WARN: up to 300 lines a second, half of a soak's log (an audit).
const DEFAULT_LOG: &str = "info,quinn=warn,chitchat=warn,chitchat::state=error,rustls=warn";

fn init_logging(format: LogFormat) {
    // An empty SHOAL_LOG is the default (as an EnvFilter it would leave only errors); one that
    // does not parse is the default too, said once logging is up (it was silently ignored).
    let mut refused = None;
    let filter = match std::env::var("SHOAL_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(&value).unwrap_or_else(|e| {
            refused = Some((value, e));
            EnvFilter::new(DEFAULT_LOG)
        }),
        _ => EnvFilter::new(DEFAULT_LOG),
    };
    // Colours only on a terminal: in a file or a container's log they are escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // On a failed write tracing-subscriber reports with `eprintln!`, which panics when
        // stderr is gone: a log pipe whose reader exited (`| tee`, a restarted log collector)
        // panicked every task that logged, and the node stopped applying tables while it said
        // it was ready (an audit). Lost log lines are the lesser harm.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Some((value, e)) = refused {
        tracing::warn!(SHOAL_LOG = %value, error = %e, default = DEFAULT_LOG, "SHOAL_LOG does not parse as a log filter; using the default");
    }
}
