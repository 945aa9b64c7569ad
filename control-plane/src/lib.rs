//! Control plane of the tenancy platform: the `empresas` catalog, provisioning of tenant
//! databases, fleet migrations, and the directory routers read their routes from.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod auth;
pub mod backup;
pub mod bootstrap;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dbserver;
pub mod deletion;
pub mod directory;
pub mod error;
pub mod export;
pub mod fleet;
pub mod grpc;
pub mod harden;
pub mod ingest;
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod pgconn;
pub mod provision;
pub mod replay;
pub mod roles;
pub mod rotation;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod template;
pub mod tokens;
pub mod usage;

pub use config::Config;
pub use error::Error;
