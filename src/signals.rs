//! Process signals.
//!
//! Owns: the one shutdown future of the process.
//!
//! Promises: [`shutdown`] completes on the first SIGTERM or SIGINT; a second one exits the
//! process at once (status 130), for operators who do not want to wait for the drain.

/// Completes on the first SIGTERM/SIGINT; arms an immediate exit on the second.
pub async fn shutdown() {
    wait_for_signal().await;
    tracing::info!("signal received; draining (a second signal exits at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("credbroker: second signal, exiting now");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, fall back to Ctrl-C only.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
