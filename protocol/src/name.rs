//! The one rule for names people give things: machines (node names), disks, vaults and
//! policies. A name becomes a file name on several nodes and a word in commands and tables, so
//! it is 1 to 63 ASCII letters, digits, `-`, `_` or `.`, and does not start with `.` (no hidden
//! files, no `.` or `..`). Names are for display and lookup; decisions use node ids.

use std::fmt;

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// A name that follows the rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// A name that does not follow the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', not starting with '.'")]
pub struct NameError {
    /// What was being named (`machine`, `disk`, `vault`, `policy`).
    pub kind: &'static str,
    /// The name given (truncated for display).
    pub name: String,
}

impl Name {
    /// Checks `s` as a name of a `kind` of thing.
    pub fn parse(kind: &'static str, s: &str) -> Result<Name, NameError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME_LEN
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(NameError {
                kind,
                name: s.chars().take(80).collect(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_one_rule() {
        for ok in ["web-1", "db.prod", "a", "A_b-9.c", &"x".repeat(63)] {
            assert!(Name::parse("machine", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(64),
            "a\n",
        ] {
            let e = Name::parse("disk", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid disk name"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn a_valid_name_is_a_safe_file_name(s in ".{0,70}") {
            if let Ok(n) = Name::parse("disk", &s) {
                let p = std::path::Path::new(n.as_str());
                prop_assert_eq!(p.components().count(), 1);
                prop_assert!(matches!(p.components().next(), Some(std::path::Component::Normal(_))));
            }
        }
    }
}
