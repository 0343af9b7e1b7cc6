//! The one set of rules for free text a user sends: experiment names, tag keys
//! and values, cancel and retry reasons, and the filters that select by them.
//!
//! Why these rules: every such string is stored in the log forever, projected
//! into Postgres (whose `text` and `jsonb` cannot hold NUL: one NUL once froze
//! every read model), printed in terminals and audit reports (where control
//! characters and bidirectional overrides can hide or reorder what is shown),
//! and compared for equality in filters (where two spellings of one accented
//! letter must be one name). So free text:
//! - holds no control character (Unicode `Cc`: NUL, escapes, DEL, C1), except
//!   line breaks and tabs where a field is multi-line ([`TextKind::Multiline`]);
//! - holds no bidirectional override or isolate (U+202A-U+202E, U+2066-U+2069);
//! - is at most a given number of *characters* (not bytes);
//! - is stored in Unicode NFC: [`normalize`] at the edge, [`check`] refuses
//!   what was not normalized.
//!
//! Command arguments and environment values are not free text: they go to a
//! program byte for byte, so only NUL (which no argv can hold) is refused there.

use std::borrow::Cow;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// Whether line breaks and tabs are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    /// A name or value shown on one line (experiment, tag, filter value).
    Line,
    /// A free-form message (a reason): `\n`, `\r` and `\t` allowed.
    Multiline,
}

/// Why a text was refused; `code` is the stable machine-readable code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters, not {actual}")]
    TooLong { max: usize, actual: usize },
    #[error("must not contain the control character U+{0:04X}")]
    Control(u32),
    #[error("must not contain the bidirectional control U+{0:04X}")]
    Bidi(u32),
    #[error("must be in Unicode NFC")]
    NotNormalized,
}

impl TextError {
    pub fn code(&self) -> &'static str {
        match self {
            TextError::Empty => "text_empty",
            TextError::TooLong { .. } => "text_too_long",
            TextError::Control(_) | TextError::Bidi(_) => "text_invalid_character",
            TextError::NotNormalized => "text_not_normalized",
        }
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks `s` against the rules: non-empty, at most `max_chars` characters, no
/// forbidden character, NFC.
pub fn check(s: &str, kind: TextKind, max_chars: usize) -> Result<(), TextError> {
    if s.is_empty() {
        return Err(TextError::Empty);
    }
    let mut count = 0usize;
    for c in s.chars() {
        count += 1;
        if c.is_control() && !(kind == TextKind::Multiline && matches!(c, '\n' | '\r' | '\t')) {
            return Err(TextError::Control(c as u32));
        }
        if is_bidi_control(c) {
            return Err(TextError::Bidi(c as u32));
        }
    }
    if count > max_chars {
        return Err(TextError::TooLong { max: max_chars, actual: count });
    }
    let nfc = match is_nfc_quick(s.chars()) {
        IsNormalized::Yes => true,
        IsNormalized::No => false,
        IsNormalized::Maybe => s.chars().nfc().eq(s.chars()),
    };
    if !nfc {
        return Err(TextError::NotNormalized);
    }
    Ok(())
}

/// `s` in NFC (borrowed when it already is).
pub fn normalize(s: &str) -> Cow<'_, str> {
    if is_nfc_quick(s.chars()) == IsNormalized::Yes { Cow::Borrowed(s) } else { Cow::Owned(s.nfc().collect()) }
}

/// Normalizes `s` in place.
pub fn normalize_in_place(s: &mut String) {
    if let Cow::Owned(n) = normalize(s) {
        *s = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_other_controls_are_refused_where_text_is_one_line() {
        for bad in ["a\0b", "\u{1b}[31m", "a\nb", "\u{7f}", "\u{85}"] {
            assert_eq!(check(bad, TextKind::Line, 100).unwrap_err().code(), "text_invalid_character", "{bad:?}");
        }
        assert!(check("line one\nline two\tend", TextKind::Multiline, 100).is_ok());
        assert!(check("a\0b", TextKind::Multiline, 100).is_err());
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let s = "é".repeat(128);
        assert_eq!(s.len(), 256);
        assert!(check(&s, TextKind::Line, 128).is_ok());
        assert_eq!(check(&"é".repeat(129), TextKind::Line, 128), Err(TextError::TooLong { max: 128, actual: 129 }));
        assert_eq!(check("", TextKind::Line, 1), Err(TextError::Empty));
    }

    #[test]
    fn bidi_overrides_are_refused() {
        assert_eq!(check("abc\u{202E}def", TextKind::Line, 100), Err(TextError::Bidi(0x202E)));
    }

    #[test]
    fn decomposed_text_is_refused_until_normalized() {
        let nfd = "e\u{301}"; // e + combining acute
        assert_eq!(check(nfd, TextKind::Line, 10), Err(TextError::NotNormalized));
        let n = normalize(nfd);
        assert_eq!(n, "\u{e9}");
        assert!(check(&n, TextKind::Line, 10).is_ok());
        assert!(matches!(normalize("plain"), Cow::Borrowed(_)));
    }
}
