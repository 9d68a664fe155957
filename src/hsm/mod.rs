//! `hsm` module (placeholder: filled in by its issue).
