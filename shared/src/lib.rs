//! The contract between Tollgate's planes: the event envelope and its hash chain, the agent
//! identity, JetStream names, token verification and configuration helpers.
//!
//! Everything here is plain data and pure functions, except behind the `net` feature, which adds
//! the two pieces of network I/O both planes need: fetching issuer keys (JWKS) and making sure
//! the event stream exists.

pub mod config;
pub mod control;
pub mod event;
pub mod export;
pub mod identity;
pub mod keys;
pub mod mask;
pub mod names;
pub mod policy;
pub mod token;

#[cfg(feature = "net")]
pub mod jwks;
#[cfg(feature = "net")]
pub mod stream;
