//! Evolution API bodies: parsing and the item rules never panic; what passes is storable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(Some(batch)) = whatsapp_ingest::evolution::parse(body) else {
        return;
    };
    let (kept, refused) = batch.admit(1_763_800_000.0);
    for m in &kept.messages {
        for text in [Some(&m.wamid), m.body.as_ref(), m.name.as_ref()]
            .into_iter()
            .flatten()
        {
            assert!(!text.contains('\0'), "a stored text holds NUL: {text:?}");
        }
        // A lead is a canonical WhatsApp id, or a linked id the gateway could not resolve.
        let lead = m.lead.0.as_str();
        assert!(
            lead.strip_prefix("lid:").is_some_and(|l| !l.is_empty())
                || whatsapp_ingest::phone::canonical_wa_id(lead).as_deref() == Some(lead),
            "lead {lead:?}"
        );
    }
    for (_, reason) in &refused {
        assert!(!reason.is_empty());
    }
});
