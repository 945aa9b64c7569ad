//! Generated gRPC types and services of the tenancy platform.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Accounts on the control plane: `Auth` (login, sessions, passwords) and `Users`.
pub mod accounts {
    pub mod v1 {
        tonic::include_proto!("tenancy.accounts.v1");
    }
}

/// Control plane: `TenantAdmin` (operators) and `TenantDirectory` (routers).
pub mod control {
    pub mod v1 {
        tonic::include_proto!("tenancy.control.v1");
    }
}

/// Domain API of the tenant router: `Leads`, `Conversations`, `Catalog`.
pub mod domain {
    pub mod v1 {
        tonic::include_proto!("tenancy.domain.v1");
    }
}

pub mod model;

/// Encoded `FileDescriptorSet` of every proto in this crate, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
