//! The signals that stop a process of ours: SIGTERM and SIGINT, and SIGHUP for the demo only.

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What SIGHUP does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hangup {
    /// It stops the process too (the demo: its terminal closed).
    Stops,
    /// It is logged and ignored (a node). Its default action ended the process at once,
    /// without withdrawing or leaving the mesh (an operator's probe: `kill -HUP`, as `systemctl
    /// reload` or logrotate send, or a closed terminal), and there is nothing to reload by
    /// signal: the rules file and the certificates are reloaded when they change.
    Ignored,
}

pub(crate) struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    on_hangup: Hangup,
}

impl StopSignals {
    pub(crate) fn install(on_hangup: Hangup) -> anyhow::Result<Self> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            hangup: signal(SignalKind::hangup()).context("installing a SIGHUP handler")?,
            on_hangup,
        })
    }

    /// The name of the next signal that stops the process.
    pub(crate) async fn next(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return "SIGTERM",
                _ = self.interrupt.recv() => return "SIGINT",
                _ = self.hangup.recv() => match self.on_hangup {
                    Hangup::Stops => return "SIGHUP",
                    Hangup::Ignored => tracing::info!("SIGHUP ignored: the rules file and the certificates are reloaded when they change; stop with SIGTERM"),
                },
            }
        }
    }
}
