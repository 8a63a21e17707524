//! Refs, URLs, the repository cache and checkouts (the git CLI). Being written.
