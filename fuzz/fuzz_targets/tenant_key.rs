//! Tenant keys (`x-tenant`, CLI arguments): never panic; an accepted key has one spelling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_model::TenantKey;

fuzz_target!(|raw: &str| {
    if let Ok(key) = TenantKey::parse(raw) {
        assert_eq!(key.to_string(), raw);
    }
});
