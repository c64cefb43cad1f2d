//! The classifier's input for a remote reply, and a parser for reply text as logs store it.

/// A negative SMTP reply: the basic code, the RFC 3463 enhanced code when the server sent one,
/// and the text (multi-line replies joined with spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The three-digit reply code (e.g. 550).
    pub code: u16,
    /// The enhanced status code (class, subject, detail), e.g. (5, 1, 1).
    pub enhanced: Option<(u8, u16, u16)>,
    /// The text after the codes.
    pub text: &'a str,
}

impl<'a> Reply<'a> {
    /// A reply from its parts.
    pub fn new(code: u16, enhanced: Option<(u8, u16, u16)>, text: &'a str) -> Reply<'a> {
        Reply {
            code,
            enhanced,
            text,
        }
    }

    /// Parses a reply as logs, DSNs and events show it: `550 5.1.1 text`, `550-5.1.1 text`,
    /// `550 text` or `550 #5.1.0 text`. `None` when the line does not start with a reply code
    /// in 200..=599. Continuation prefixes inside the text stay in the text.
    pub fn parse(line: &'a str) -> Option<Reply<'a>> {
        let line = line.trim_start();
        let digits = line.get(..3)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let code: u16 = digits.parse().ok()?;
        if !(200..600).contains(&code) {
            return None;
        }
        let rest = &line[3..];
        let rest = match rest.strip_prefix([' ', '-']) {
            Some(after) => after,
            None if rest.is_empty() => rest,
            None => return None,
        };
        let rest = rest.trim_start();
        let candidate = rest.strip_prefix('#').unwrap_or(rest);
        let (word, after) = match candidate.find(|c: char| c.is_ascii_whitespace() || c == ',') {
            Some(i) => (&candidate[..i], &candidate[i..]),
            None => (candidate, ""),
        };
        match parse_enhanced(word) {
            Some(enhanced) => Some(Reply::new(
                code,
                Some(enhanced),
                after.trim_start_matches(',').trim(),
            )),
            None => Some(Reply::new(code, None, rest.trim())),
        }
    }
}

/// Parses `class.subject.detail` (RFC 3463: class 2, 4 or 5, each number at most three digits).
pub(crate) fn parse_enhanced(word: &str) -> Option<(u8, u16, u16)> {
    let mut parts = word.split('.');
    let class: u8 = parse_part(parts.next()?, 1)?.try_into().ok()?;
    let subject = parse_part(parts.next()?, 3)?;
    let detail = parse_part(parts.next()?, 3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class, subject, detail))
}

/// One dot-separated number of at most `digits_max` digits.
fn parse_part(part: &str, digits_max: usize) -> Option<u16> {
    if part.is_empty() || part.len() > digits_max || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_logs_show() {
        let r = Reply::parse("550-5.1.1 The email account does not exist").unwrap();
        assert_eq!(
            r,
            Reply::new(550, Some((5, 1, 1)), "The email account does not exist")
        );
        let r = Reply::parse("421 4.7.0 [TSS04] Messages deferred").unwrap();
        assert_eq!(r.enhanced, Some((4, 7, 0)));
        assert_eq!(r.text, "[TSS04] Messages deferred");
        let r = Reply::parse("550 #5.1.0 Address rejected.").unwrap();
        assert_eq!(r.enhanced, Some((5, 1, 0)));
        let r = Reply::parse("550 5.7.0, Mail Sending denied.").unwrap();
        assert_eq!(
            (r.enhanced, r.text),
            (Some((5, 7, 0)), "Mail Sending denied.")
        );
        let r = Reply::parse("550 5.7.606 Access denied").unwrap();
        assert_eq!(r.enhanced, Some((5, 7, 606)));
        let r = Reply::parse("554 Transaction failed").unwrap();
        assert_eq!(
            (r.code, r.enhanced, r.text),
            (554, None, "Transaction failed")
        );
        let r = Reply::parse("550 7.7.1 not an enhanced code").unwrap();
        assert_eq!((r.enhanced, r.text), (None, "7.7.1 not an enhanced code"));
        assert_eq!(Reply::parse("451").unwrap().text, "");
    }

    #[test]
    fn rejects_what_is_not_a_reply() {
        for bad in [
            "",
            "55",
            "abc text",
            "5500 x",
            "150 x",
            "600 x",
            "550x text",
        ] {
            assert_eq!(Reply::parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_enhanced("5.1"), None);
        assert_eq!(parse_enhanced("5.1.1.1"), None);
        assert_eq!(parse_enhanced("5.1000.1"), None);
        assert_eq!(parse_enhanced("3.1.1"), None);
    }
}
