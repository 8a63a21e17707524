//! Graceful shutdown: one small type the driver's loop selects on. It fires
//! on SIGTERM or ctrl-c (or when a test's trigger is pulled); the loop then
//! stops taking input, and everything it persisted is already durable.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Pulls a [`Shutdown`].
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A shutdown fired by hand.
    pub fn manual() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown { rx })
    }

    /// A shutdown fired by SIGTERM or ctrl-c. Must run inside a tokio runtime.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let (trigger, shutdown) = Shutdown::manual();
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            #[cfg(unix)]
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
            trigger.fire();
        });
        Ok(shutdown)
    }

    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Returns once fired (at once if it already was).
    pub async fn fired(&mut self) {
        let _ = self.rx.wait_for(|f| *f).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pulled_trigger_fires_every_clone() {
        let (trigger, mut a) = Shutdown::manual();
        let mut b = a.clone();
        assert!(!a.is_fired());
        trigger.fire();
        a.fired().await;
        b.fired().await;
        assert!(b.is_fired());
    }
}
