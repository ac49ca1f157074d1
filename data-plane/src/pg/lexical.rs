//! The server's lexical rules, held to the ones the proxy parses with.
//!
//! pg_query reads SQL like a server with `standard_conforming_strings = on` and a client
//! encoding in which an ASCII byte is always a character of its own. Were the server to read
//! differently, one string literal to the proxy could be a string and a second statement to the
//! server (`\'` with standard_conforming_strings off; a multibyte SJIS, BIG5, GBK, UHC, GB18030
//! or JOHAB character whose second byte is `\` or `'`). So every session is held to those rules:
//!
//! - the proxy starts each upstream session with `standard_conforming_strings=on` (a startup
//!   option outranks role and database defaults, and RESET returns to it);
//! - an agent asking for a client encoding outside the server-safe ones is refused at startup;
//! - statements that would change either (SET, `set_config`, ALTER ROLE/DATABASE/FUNCTION ...
//!   SET) are denied unless they keep a safe value;
//! - should the server still report an unsafe value (ParameterStatus), the session ends.
//!
//! `backslash_quote` is left alone: with the two rules above, its only effect is to make the
//! server refuse `\'` in an `E''` string, which fails the statement; it never moves a boundary.

use super::classify::{Setting, SettingValue};

/// What the proxy asks of every upstream session at startup.
pub const UPSTREAM_OPTIONS: &str = "-c standard_conforming_strings=on";

/// Client encodings PostgreSQL can also use as server encodings: in each, every byte below 0x80
/// is an ASCII character, so quotes and backslashes are where the parser sees them. (Names as
/// PostgreSQL matches them: lower case, letters and digits only.)
const SAFE_ENCODINGS: &[&str] = &[
    "utf8",
    "unicode",
    "sqlascii",
    "eucjp",
    "euccn",
    "euckr",
    "euctw",
    "eucjis2004",
    "muleinternal",
    "latin1",
    "latin2",
    "latin3",
    "latin4",
    "latin5",
    "latin6",
    "latin7",
    "latin8",
    "latin9",
    "latin10",
    "iso88591",
    "iso88592",
    "iso88593",
    "iso88594",
    "iso88595",
    "iso88596",
    "iso88597",
    "iso88598",
    "iso88599",
    "iso885910",
    "iso885913",
    "iso885914",
    "iso885915",
    "iso885916",
    "win866",
    "windows866",
    "alt",
    "win874",
    "windows874",
    "win1250",
    "windows1250",
    "win1251",
    "windows1251",
    "win",
    "win1252",
    "windows1252",
    "win1253",
    "windows1253",
    "win1254",
    "windows1254",
    "win1255",
    "windows1255",
    "win1256",
    "windows1256",
    "win1257",
    "windows1257",
    "win1258",
    "windows1258",
    "abc",
    "tcvn",
    "tcvn5712",
    "vscii",
    "koi8",
    "koi8r",
    "koi8u",
];

fn clean(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

pub fn safe_encoding(name: &str) -> bool {
    SAFE_ENCODINGS.contains(&clean(name).as_str())
}

fn is_on(value: &str) -> bool {
    // PostgreSQL's boolean spellings (any unique prefix of on/true/yes, or 1).
    let v = value.trim().to_ascii_lowercase();
    v == "on" || v == "1" || (!v.is_empty() && ("true".starts_with(&v) || "yes".starts_with(&v)))
}

/// The agent's startup parameters.
pub fn check_startup(params: &[(String, String)]) -> Result<(), String> {
    for (name, value) in params {
        if name == "client_encoding" && !safe_encoding(value) {
            return Err(unsafe_encoding(value));
        }
    }
    Ok(())
}

fn unsafe_encoding(value: &str) -> String {
    format!(
        "client_encoding {value:?} is not supported: its multibyte characters can contain quote or backslash \
         bytes, so the server could read statements differently from the proxy; use UTF8"
    )
}

/// A ParameterStatus the server reported.
pub fn check_reported(name: &str, value: &str) -> Result<(), String> {
    match name {
        "standard_conforming_strings" if !is_on(value) => {
            Err("the upstream session turned standard_conforming_strings off; the session is closed because the \
             server would read string literals differently from the proxy"
                .into())
        }
        "client_encoding" if !safe_encoding(value) => Err(unsafe_encoding(value)),
        _ => Ok(()),
    }
}

/// A setting a statement changes: `Err` says why the statement is refused.
pub fn check_setting(setting: &Setting) -> Result<(), String> {
    let Some(name) = &setting.name else {
        return match setting.value {
            SettingValue::ResetAll => Ok(()),
            _ => Err("a setting whose name the proxy cannot see (set_config with a computed name, or a write to \
                      pg_settings) would change; use SET with a name"
                .into()),
        };
    };
    let safe = match (name.as_str(), &setting.value) {
        (_, SettingValue::Reset | SettingValue::ResetAll) => true,
        ("standard_conforming_strings", SettingValue::Literal(v)) => is_on(v),
        ("client_encoding", SettingValue::Literal(v)) => safe_encoding(v),
        ("standard_conforming_strings" | "client_encoding", SettingValue::Computed) => false,
        _ => true,
    };
    if safe {
        Ok(())
    } else {
        Err(format!(
            "changing {name} to anything but a value the proxy parses with (standard_conforming_strings on, a \
             server-safe client encoding) is not allowed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> Setting {
        Setting { name: Some(name.into()), value: SettingValue::Literal(value.into()) }
    }

    #[test]
    fn encodings_whose_bytes_can_hide_a_quote_are_refused() {
        for safe in ["UTF8", "utf-8", "Unicode", "SQL_ASCII", "LATIN1", "EUC_JP", "WIN1252", "ISO-8859-5"] {
            assert!(safe_encoding(safe), "{safe}");
        }
        for unsafe_ in ["SJIS", "Shift_JIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "WIN932", "auto", ""] {
            assert!(!safe_encoding(unsafe_), "{unsafe_}");
        }
        assert!(check_startup(&[("client_encoding".into(), "SJIS".into())]).is_err());
        assert!(check_startup(&[("client_encoding".into(), "UTF8".into())]).is_ok());
    }

    #[test]
    fn settings_that_move_string_boundaries_are_refused() {
        assert!(check_setting(&set("standard_conforming_strings", "off")).is_err());
        assert!(check_setting(&set("standard_conforming_strings", "false")).is_err());
        assert!(check_setting(&set("standard_conforming_strings", "on")).is_ok());
        assert!(check_setting(&set("client_encoding", "GBK")).is_err());
        assert!(check_setting(&set("client_encoding", "UTF8")).is_ok());
        assert!(check_setting(&set("backslash_quote", "on")).is_ok());
        assert!(check_setting(&Setting { name: None, value: SettingValue::Literal("off".into()) }).is_err());
        assert!(
            check_setting(&Setting { name: Some("client_encoding".into()), value: SettingValue::Computed }).is_err()
        );
        assert!(check_setting(&Setting { name: Some("client_encoding".into()), value: SettingValue::Reset }).is_ok());
        assert!(check_reported("standard_conforming_strings", "off").is_err());
        assert!(check_reported("client_encoding", "SJIS").is_err());
        assert!(check_reported("application_name", "anything").is_ok());
    }
}
