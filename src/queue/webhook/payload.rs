//! listmonk's bounce payload: the JSON body of one POST, and the campaign UUID read from
//! the failed message's headers. Pure: no I/O.
//!
//! Must never send a `campaign_uuid` that is not a UUID (listmonk casts it and would fail
//! the whole request).

use crate::queue::headers::Fields;
use serde_json::{json, Value};

/// What `source` says in every payload.
pub const SOURCE: &str = "mailvalve";

/// listmonk's bounce payload for one recipient, without a campaign.
pub fn payload(email: &str, hard: bool, meta: &Value) -> Value {
    payload_for_campaign(email, "", hard, meta)
}

/// listmonk's bounce payload with the campaign's UUID (see [`campaign_uuid`]); a
/// `campaign_uuid` that is not a UUID is sent as `""`, because listmonk casts it to
/// `UUID` and would fail the whole request. A `null` meta is sent as `{}`.
pub fn payload_for_campaign(email: &str, campaign_uuid: &str, hard: bool, meta: &Value) -> Value {
    let campaign = if is_uuid(campaign_uuid) {
        campaign_uuid
    } else {
        ""
    };
    let meta = if meta.is_null() {
        json!({})
    } else {
        meta.clone()
    };
    json!({
        "email": email,
        "campaign_uuid": campaign,
        "source": SOURCE,
        "type": if hard { "hard" } else { "soft" },
        "meta": meta,
    })
}

/// The campaign UUID listmonk puts into every campaign mail (`X-Listmonk-Campaign`), read
/// from a header section (e.g. `dsn::header_block(message)`).
pub fn campaign_uuid(headers: &[u8]) -> Option<String> {
    let fields = Fields::of(headers);
    let v = fields.listmonk_campaign()?;
    is_uuid(v).then(|| v.to_ascii_lowercase())
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_and_campaign_header() {
        let uuid = "9f86b50d-5711-41c8-ab03-bc91c43d711b";
        let p = payload_for_campaign("a@b.example", uuid, false, &json!({"k": 1}));
        assert_eq!(
            p,
            json!({"email": "a@b.example", "campaign_uuid": uuid, "source": "mailvalve", "type": "soft", "meta": {"k": 1}})
        );
        let p = payload_for_campaign("a@b.example", "not-a-uuid", true, &json!({}));
        assert_eq!(p["campaign_uuid"], "");
        let headers = format!(
            "From: a@b\r\nx-listmonk-campaign:  {}\r\n",
            uuid.to_uppercase()
        );
        assert_eq!(campaign_uuid(headers.as_bytes()).as_deref(), Some(uuid));
        assert_eq!(campaign_uuid(b"From: a@b\r\n"), None);
        assert_eq!(campaign_uuid(b"X-Listmonk-Campaign: 42\r\n"), None);
    }
}
