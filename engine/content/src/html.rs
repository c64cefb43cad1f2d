//! A bounded scan of HTML with `html5gum` (a WHATWG tokenizer): the links with their visible
//! text, the forms with whether they ask for a credential, and the visible text. Tokens only,
//! no tree: a mail's HTML is often broken, and the tokenizer recovers the way browsers do.

use html5gum::{HtmlString, StartTag, Token, Tokenizer};

use crate::domain::cut;
use crate::limits::{
    FORMS_MAX, HREF_BYTES_MAX, LINKS_MAX, LINK_TEXT_BYTES_MAX, VISIBLE_TEXT_BYTES_MAX,
};

/// One link: where it points and what a reader sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// The href, at most [`HREF_BYTES_MAX`] bytes.
    pub href: String,
    /// The visible text, whitespace-collapsed, at most [`LINK_TEXT_BYTES_MAX`] bytes.
    pub text: String,
}

/// One form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    /// The action, at most [`HREF_BYTES_MAX`] bytes; empty when absent.
    pub action: String,
    /// It has a password field, or a field named like a credential (password, PIN, card number).
    pub asks_credential: bool,
}

/// What the scan found in one message's HTML (all parts together).
#[derive(Debug, Default)]
pub struct Scan {
    /// At most [`LINKS_MAX`].
    pub links: Vec<Link>,
    /// At most [`FORMS_MAX`]. Credential fields outside any form count as a form without action.
    pub forms: Vec<Form>,
    /// Visible text (not inside script or style), lowercase, at most
    /// [`VISIBLE_TEXT_BYTES_MAX`] bytes.
    pub text: String,
}

/// Names of fields that collect a credential.
const CREDENTIAL_FIELD_WORDS: &[&str] = &[
    "pass",
    "pwd",
    "pin",
    "cvv",
    "cvc",
    "ssn",
    "cardnumber",
    "card_number",
    "otp",
];

impl Scan {
    /// Adds the tokens of `html` (already cut to the caller's byte bound).
    pub fn add_html(&mut self, html: &str) {
        let mut open_link: Option<Link> = None;
        let mut open_form: Option<Form> = None;
        let mut hidden_depth = 0usize; // inside <script>/<style>/<title>
        for token in Tokenizer::new(html).flatten() {
            match token {
                Token::StartTag(tag) => {
                    let name = tag.name.as_slice();
                    match name {
                        b"a" | b"area" => {
                            self.close_link(&mut open_link);
                            if let Some(href) = attr(&tag, b"href") {
                                open_link = Some(Link {
                                    href: cut(&href, HREF_BYTES_MAX).to_string(),
                                    text: String::new(),
                                });
                                if name == b"area" || tag.self_closing {
                                    self.close_link(&mut open_link);
                                }
                            }
                        }
                        b"form" => {
                            self.close_form(&mut open_form);
                            let action = attr(&tag, b"action").unwrap_or_default();
                            open_form = Some(Form {
                                action: cut(&action, HREF_BYTES_MAX).to_string(),
                                asks_credential: false,
                            });
                        }
                        b"input" | b"select" | b"textarea" if is_credential_field(&tag) => {
                            match open_form.as_mut() {
                                Some(f) => f.asks_credential = true,
                                None => self.push_form(Form {
                                    action: String::new(),
                                    asks_credential: true,
                                }),
                            }
                        }
                        b"script" | b"style" | b"title" if !tag.self_closing => {
                            hidden_depth = hidden_depth.saturating_add(1);
                        }
                        _ => {}
                    }
                }
                Token::EndTag(tag) => match tag.name.as_slice() {
                    b"a" | b"area" => self.close_link(&mut open_link),
                    b"form" => self.close_form(&mut open_form),
                    b"script" | b"style" | b"title" => {
                        hidden_depth = hidden_depth.saturating_sub(1);
                    }
                    _ => {}
                },
                Token::String(s) if hidden_depth == 0 => {
                    let s = String::from_utf8_lossy(s.as_slice());
                    if let Some(link) = open_link.as_mut() {
                        push_collapsed(&mut link.text, &s, LINK_TEXT_BYTES_MAX);
                    }
                    push_collapsed(&mut self.text, &s.to_lowercase(), VISIBLE_TEXT_BYTES_MAX);
                }
                _ => {}
            }
        }
        self.close_link(&mut open_link);
        self.close_form(&mut open_form);
    }

    fn close_link(&mut self, open: &mut Option<Link>) {
        if let Some(mut link) = open.take() {
            if self.links.len() < LINKS_MAX {
                link.text.truncate(link.text.trim_end().len());
                self.links.push(link);
            }
        }
    }

    fn close_form(&mut self, open: &mut Option<Form>) {
        if let Some(form) = open.take() {
            self.push_form(form);
        }
    }

    fn push_form(&mut self, form: Form) {
        if self.forms.len() < FORMS_MAX {
            self.forms.push(form);
        }
    }
}

/// An attribute's value, when present (entities already decoded by the tokenizer).
fn attr(tag: &StartTag<()>, name: &[u8]) -> Option<String> {
    let key = HtmlString(name.to_vec());
    tag.attributes
        .get(&key)
        .map(|v| String::from_utf8_lossy(v.as_slice()).into_owned())
}

/// A password input, or a field whose name or id names a credential.
fn is_credential_field(tag: &StartTag<()>) -> bool {
    if attr(tag, b"type").is_some_and(|t| t.trim().eq_ignore_ascii_case("password")) {
        return true;
    }
    [b"name".as_slice(), b"id", b"autocomplete"]
        .iter()
        .any(|a| {
            attr(tag, a).is_some_and(|v| {
                let v = v.to_ascii_lowercase();
                CREDENTIAL_FIELD_WORDS.iter().any(|w| v.contains(w))
                    || v.contains("current-password")
                    || v.contains("cc-number")
            })
        })
}

/// Appends `s` with runs of whitespace as one space, up to `max` bytes in `out`.
fn push_collapsed(out: &mut String, s: &str, max: usize) {
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            return;
        }
        if c.is_whitespace() || c == '\u{a0}' {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(html: &str) -> Scan {
        let mut s = Scan::default();
        s.add_html(html);
        s
    }

    #[test]
    fn links_with_text() {
        let s = scan(
            r#"<p>Hi <a href="https://x.example/a?b=1&amp;c=2"><b>www.paypal.com</b></a>
               <a href=/rel>More  &nbsp; here</a><a name=top>no href</a><area href="http://y.example/">"#,
        );
        assert_eq!(s.links.len(), 3);
        assert_eq!(s.links[0].href, "https://x.example/a?b=1&c=2");
        assert_eq!(s.links[0].text, "www.paypal.com");
        assert_eq!(s.links[1].text, "More here");
        assert_eq!(s.links[2].href, "http://y.example/");
        assert!(s.text.contains("hi www.paypal.com"));
    }

    #[test]
    fn forms_and_credentials() {
        let s = scan(
            r#"<form action="https://evil.example/p"><input name=email><input type=PASSWORD></form>
               <form action="/search"><input name=q></form><input name="card_number">"#,
        );
        assert_eq!(
            s.forms,
            vec![
                Form {
                    action: "https://evil.example/p".into(),
                    asks_credential: true
                },
                Form {
                    action: "/search".into(),
                    asks_credential: false
                },
                Form {
                    action: String::new(),
                    asks_credential: true
                },
            ]
        );
    }

    #[test]
    fn scripts_and_styles_are_not_text() {
        let s = scan("<style>verify your account</style><script>x</script>Hello");
        assert_eq!(s.text, "hello");
    }

    #[test]
    fn bounds_hold() {
        let html = "<a href=http://a.example/>x</a>".repeat(LINKS_MAX + 10);
        assert_eq!(scan(&html).links.len(), LINKS_MAX);
        let long = format!("<a href=/x>{}</a>", "y".repeat(10_000));
        assert_eq!(scan(&long).links[0].text.len(), LINK_TEXT_BYTES_MAX);
    }
}
