//! Relation names as SQL writes them, for rules that name relations: `orders`, `public.orders`,
//! `"Orders"`. Unquoted parts fold to lower case and quoted parts keep theirs, as PostgreSQL
//! does, so a rule and a statement agree on what a name means.

use std::fmt;

/// `name` or `schema.name` (a database prefix is dropped: a session reaches one database).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationName {
    pub schema: Option<String>,
    pub name: String,
}

impl RelationName {
    /// Parse a name as SQL would read it; `None` when it is not one.
    pub fn parse(text: &str) -> Option<RelationName> {
        let mut parts = Vec::new();
        let mut chars = text.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        '"' => break,
                        c => part.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '"' {
                        break;
                    }
                    part.push(c.to_ascii_lowercase());
                    chars.next();
                }
                part = part.trim().to_owned();
            }
            if part.is_empty() {
                return None;
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return None,
            }
        }
        let name = parts.pop()?;
        let schema = parts.pop();
        if parts.len() > 1 {
            return None;
        }
        Some(RelationName { schema, name })
    }

    /// Whether a rule naming `self` covers a statement's `relation`. A bare rule name matches
    /// the relation in any schema; a qualified rule also matches an unqualified reference,
    /// since the proxy does not know which schema the session's search_path picks (fail closed).
    pub fn covers(&self, relation: &RelationName) -> bool {
        self.name == relation.name
            && match (&self.schema, &relation.schema) {
                (Some(rule), Some(used)) => rule == used,
                _ => true,
            }
    }
}

fn write_part(f: &mut fmt::Formatter<'_>, part: &str) -> fmt::Result {
    let plain = part.chars().next().is_some_and(|c| c == '_' || c.is_lowercase() || !c.is_ascii())
        && part.chars().all(|c| c == '_' || c == '$' || c.is_ascii_digit() || c.is_lowercase() || !c.is_ascii())
        && !part.chars().any(char::is_uppercase);
    if plain {
        f.write_str(part)
    } else {
        write!(f, "\"{}\"", part.replace('"', "\"\""))
    }
}

impl fmt::Display for RelationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write_part(f, schema)?;
            f.write_str(".")?;
        }
        write_part(f, &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::RelationName;

    fn name(text: &str) -> RelationName {
        RelationName::parse(text).unwrap_or_else(|| panic!("{text} parses"))
    }

    #[test]
    fn folds_unquoted_and_keeps_quoted_case() {
        assert_eq!(name("Orders"), RelationName { schema: None, name: "orders".into() });
        assert_eq!(name("\"Orders\""), RelationName { schema: None, name: "Orders".into() });
        assert_eq!(
            name("Public.\"Odd.Name\""),
            RelationName { schema: Some("public".into()), name: "Odd.Name".into() }
        );
        assert_eq!(name("db.public.orders"), RelationName { schema: Some("public".into()), name: "orders".into() });
        for bad in ["", ".", "a..b", "\"open", "a.b.c.d", "a\"b\""] {
            assert_eq!(RelationName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["orders", "public.orders", "\"Orders\"", "public.\"Odd.Name\"", "\"we\"\"ird\""] {
            assert_eq!(name(text).to_string(), text);
            assert_eq!(name(&name(text).to_string()), name(text));
        }
    }

    #[test]
    fn rules_cover_schemas_conservatively() {
        let covers = |rule: &str, used: &str| name(rule).covers(&name(used));
        assert!(covers("secrets", "secrets"));
        assert!(covers("secrets", "public.secrets"));
        assert!(covers("public.secrets", "secrets"));
        assert!(covers("public.secrets", "PUBLIC.SECRETS"));
        assert!(!covers("public.secrets", "archive.secrets"));
        assert!(!covers("secrets", "\"Secrets\""));
        assert!(covers("\"Secrets\"", "\"Secrets\""));
    }
}
