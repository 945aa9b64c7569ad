//! Meta Cloud API bodies: parsing, normalising and the item rules never panic, and every
//! item either passes the rules (and is then storable text) or is refused with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(parsed) = whatsapp_ingest::meta::parse(body) else {
        return;
    };
    for (_, batch) in &parsed.by_phone {
        let (kept, refused) = batch.normalize().admit(1_763_800_000.0);
        for m in &kept.messages {
            for text in [Some(&m.wamid), m.body.as_ref(), m.name.as_ref()]
                .into_iter()
                .flatten()
            {
                assert!(!text.contains('\0'), "a stored text holds NUL: {text:?}");
            }
        }
        for (_, reason) in &refused {
            assert!(!reason.is_empty());
        }
    }
});
