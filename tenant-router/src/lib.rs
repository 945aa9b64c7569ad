//! Tenant router: the stateless daemon internal services call instead of holding tenant
//! database credentials. gRPC domain API (leads, conversations, catalog) over per-tenant
//! pools, with routes learned from the control plane and a connection budget per server.
#![forbid(unsafe_code)]

pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod inbox;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod pools;
pub mod revocations;
pub mod routes;
pub mod server;
pub mod tokens;
pub mod usage;
pub mod webhook;

pub use config::Config;
pub use error::RouterError;
