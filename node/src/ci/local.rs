//! The `local` step runner (child processes). Being written.
