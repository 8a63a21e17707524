//! Logs of every program: to stderr and to a file under `./log/` (or the
//! directory given with `--log-dir`), filtered by `RUST_LOG` (default
//! `info`). The file is written by a background thread, off the hot path;
//! keep the returned guard alive until exit, or its last lines are lost.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer as _};

/// Starts logging to stderr and to `dir/<name>.log` (appended).
pub fn init(dir: &Path, name: &str) -> std::io::Result<WorkerGuard> {
    std::fs::create_dir_all(dir)?;
    // Opened here, so an unwritable directory is an error now rather than
    // silence later.
    let file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_filter(filter()))
        .with(fmt::layer().with_ansi(false).with_writer(writer).with_filter(filter()))
        .try_init();
    Ok(guard)
}
