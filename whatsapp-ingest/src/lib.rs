//! WhatsApp deliveries, from bytes to rows: the Meta Cloud API and Evolution payload
//! parsers, the rules each item passes before it may be stored ([`items`]), the canonical
//! WhatsApp id ([`phone`]) and the statement that stores one tenant's batch ([`store`]).
//!
//! The router stores deliveries as they arrive; the control plane replays dead letters
//! (deliveries kept while their tenant was suspended) through the same code, so a message
//! is stored the same way whichever path brings it.

pub mod evolution;
pub mod items;
pub mod meta;
pub mod phone;
pub mod store;

pub use store::{Batch, Incoming, Statements, Stored};
