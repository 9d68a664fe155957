//! `tessera renew`: the person's own computer renews their token's certificates, authenticated
//! by the token itself. [`connection`] builds the gRPC channel whose TLS client key is the
//! card's slot (`piv::CardTlsKey`) to the server's `[self_service]` listener. It sits above the
//! help-desk `station` (whose card steps it reuses) and beside `server`; it imports neither
//! `api` nor `enroll`, and holds no CA secret and no management key or PUK.

pub mod connection;
pub mod renewal;
