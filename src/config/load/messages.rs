//! Errors of `toml`, serde and the `config` crate, turned into what a person needs: the
//! key itself (not its enclosing table), a message without the source line (which could
//! hold a password), the allowed values of an enum, and a line and column.
//!
//! Pure: no I/O. Must never quote the configuration text.

/// serde reports an unknown field as an error of the *enclosing* table; name the field
/// itself: `upstream` + "unknown field `bogus`, ..." → `upstream.bogus`.
/// Likewise a missing field: `server.tls` + "missing field `key`" → `server.tls.key`.
pub(super) fn name_the_field(key: Option<String>, message: String) -> (Option<String>, String) {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        let full = match key {
            Some(k) => format!("{k}.{field}"),
            None => field.to_owned(),
        };
        return (Some(full), "required key is missing".to_owned());
    }
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return (key, message);
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return (key, message);
    };
    let already = key
        .as_deref()
        .is_some_and(|k| k == field || k.ends_with(&format!(".{field}")));
    let full = match key {
        Some(k) if already => k,
        Some(k) => format!("{k}.{field}"),
        None => field.to_owned(),
    };
    let expected = expected.trim_start_matches(',').trim();
    let message = if expected.is_empty() {
        "unknown key".to_owned()
    } else {
        format!("unknown key, {expected}")
    };
    (Some(full), message)
}

/// The key and a key-less message out of the `config` crate's nested error.
pub(super) fn flatten_config_error(e: &::config::ConfigError) -> (Option<String>, String) {
    use ::config::ConfigError as E;
    match e {
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.clone(),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        E::At { error, key, .. } => {
            let (inner_key, message) = flatten_config_error(error);
            (key.clone().or(inner_key), message)
        }
        E::NotFound(key) => (Some(key.clone()), "required key is missing".to_owned()),
        // Pass 1 already parsed the file; never print the parser's cause (it can quote
        // the source line).
        E::FileParse { .. } => (None, "the file is not valid TOML".to_owned()),
        E::Message(m) => (None, enum_message(m).unwrap_or_else(|| m.clone())),
        other => (None, other.to_string()),
    }
}

/// The `config` crate says "enum TlsMode does not have variant constructor x" without
/// the allowed values; let serde say it the usual way ("unknown variant `x`, expected
/// one of ..."), for the enums of the schema.
pub(super) fn enum_message(message: &str) -> Option<String> {
    use serde::de::value::{Error, StrDeserializer};
    use serde::Deserialize;
    let rest = message.strip_prefix("enum ")?;
    let (name, value) = rest.split_once(" does not have variant constructor ")?;
    let de = StrDeserializer::<Error>::new(value);
    let err = match name {
        "TlsMode" => crate::config::schema::TlsMode::deserialize(de).err(),
        "Mode" => crate::config::schema::Mode::deserialize(de).err(),
        _ => None,
    }?;
    Some(err.to_string())
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
