//! Validation rules of protocol v1: names and message text.

/// Configurable input limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum characters of a message text after trimming.
    pub max_text_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 4000,
        }
    }
}

/// Why a text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// Nothing left after trimming.
    Empty,
    /// Longer than the limit.
    TooLong {
        /// The limit in characters.
        max: usize,
    },
    /// Holds a control character other than newline and tab (PROTOCOL §11).
    Control,
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$`: user and room names.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.len() <= 32
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `c` is a control character a text may not hold: every Unicode
/// `Cc` character (C0, DEL, C1) except `\n` and `\t`.
fn is_forbidden_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// Trims the text and checks its length in characters and that it holds no
/// control character other than `\n` and `\t`.
pub fn validate_text(raw: &str, limits: &Limits) -> Result<String, TextError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(TextError::Empty);
    }
    // Count at most max+1 characters: a huge text is rejected without a full scan.
    if text.chars().take(limits.max_text_chars + 1).count() > limits.max_text_chars {
        return Err(TextError::TooLong {
            max: limits.max_text_chars,
        });
    }
    if text.chars().any(is_forbidden_control) {
        return Err(TextError::Control);
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "A9", "alice", "bob_1.x-y", &"a".repeat(32), "0"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "_a",
            ".a",
            "-a",
            "a b",
            "é",
            "a/b",
            &"a".repeat(33),
            "a\n",
            "a{b}",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn text_rules() {
        let l = Limits { max_text_chars: 5 };
        assert_eq!(validate_text("  hi ", &l), Ok("hi".into()));
        assert_eq!(validate_text(" \n\t ", &l), Err(TextError::Empty));
        assert_eq!(validate_text("ééééé", &l), Ok("ééééé".into()));
        assert_eq!(
            validate_text("123456", &l),
            Err(TextError::TooLong { max: 5 })
        );
        assert_eq!(validate_text("a\nb\tc", &l), Ok("a\nb\tc".into()));
        for bad in ["a\0b", "\u{1b}[31m", "a\rb", "a\u{7f}", "x\u{85}y", "\u{7}"] {
            assert_eq!(validate_text(bad, &l), Err(TextError::Control), "{bad:?}");
        }
    }
}
