//! The `docker` step runner (bollard). Being written.
