//! The end-to-end test harness: real PostgreSQL, real nats-server and a real OIDC issuer on free
//! loopback ports, with the proxy and the control plane running in-process against them.
//! Each test states only its scenario; see `tests/` for the scenarios.

pub mod harness;

pub use harness::*;
