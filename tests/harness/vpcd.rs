//! pcscd + vpcd readers and tessera-vpiv cards for tests (filled in by the virtual-card issue).
