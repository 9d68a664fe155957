//! Throwaway SoftHSM2 tokens for tests (filled in by the foundation issue).
