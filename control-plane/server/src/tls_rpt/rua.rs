//! The TLS-RPT policy record (RFC 8460 §3): `_smtp._tls.<domain>` TXT
//! `v=TLSRPTv1; rua=<uri>[,<uri>...]`, with `mailto:` and `https:` URIs (pure).

/// URIs taken from one record, at most (more are ignored: each is a delivery).
pub const RUA_URIS_MAX: usize = 4;
/// Longest URI accepted, bytes.
pub const RUA_URI_MAX_BYTES: usize = 1_024;

/// Where a report goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` an address (its query part, if any, dropped).
    Mailto(String),
    /// An `https:` URL, POSTed to.
    Https(String),
}

impl Rua {
    /// The URI as the record gave it (the report's state keeps the ones done).
    pub fn uri(&self) -> String {
        match self {
            Rua::Mailto(a) => format!("mailto:{a}"),
            Rua::Https(u) => u.clone(),
        }
    }
}

/// Why a domain gets no report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuaError {
    #[error("no TLSRPTv1 record")]
    NoRecord,
    #[error("{0} TLSRPTv1 records (exactly one is allowed)")]
    Several(usize),
    #[error("the record has no rua")]
    NoRua,
    #[error("the record has no usable rua URI")]
    NoUsableUri,
}

/// The report URIs of the TXT strings at `_smtp._tls.<domain>`.
pub fn parse(txts: &[String]) -> Result<Vec<Rua>, RuaError> {
    let records: Vec<&String> = txts
        .iter()
        .filter(|t| {
            let v = t.trim_start();
            v.strip_prefix("v=TLSRPTv1")
                .is_some_and(|rest| rest.is_empty() || rest.trim_start().starts_with(';'))
        })
        .collect();
    let record = match records.as_slice() {
        [] => return Err(RuaError::NoRecord),
        [one] => *one,
        many => return Err(RuaError::Several(many.len())),
    };
    let rua = record
        .split(';')
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("rua"))
        .map(|(_, v)| v.trim())
        .ok_or(RuaError::NoRua)?;
    let uris: Vec<Rua> = rua
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.len() <= RUA_URI_MAX_BYTES)
        .filter_map(uri)
        .take(RUA_URIS_MAX)
        .collect();
    if uris.is_empty() {
        return Err(RuaError::NoUsableUri);
    }
    Ok(uris)
}

fn uri(u: &str) -> Option<Rua> {
    let (scheme, rest) = u.split_once(':')?;
    if scheme.eq_ignore_ascii_case("mailto") {
        let address = rest.split('?').next().unwrap_or("");
        let address = percent_decode(address)?;
        let (local, domain) = address.rsplit_once('@')?;
        let ok = !local.is_empty()
            && !domain.is_empty()
            && address
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b','));
        return ok.then_some(Rua::Mailto(address));
    }
    if scheme.eq_ignore_ascii_case("https") && rest.starts_with("//") {
        return url::Url::parse(u)
            .ok()
            .filter(|p| p.host_str().is_some())
            .map(|_| Rua::Https(u.to_string()));
    }
    None
}

/// `%XX` escapes decoded (the record escapes `,` and `;` this way); `None` on a bad escape or
/// a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Vec<Rua>, RuaError> {
        parse(&[s.to_string()])
    }

    #[test]
    fn mailto_and_https_uris_in_order() {
        let got = one("v=TLSRPTv1; rua=mailto:tls%2Brpt@a.test?subject=x, https://r.a.test/tlsrpt")
            .expect("parsed");
        assert_eq!(
            got,
            [
                Rua::Mailto("tls+rpt@a.test".into()),
                Rua::Https("https://r.a.test/tlsrpt".into())
            ]
        );
        assert_eq!(got[0].uri(), "mailto:tls+rpt@a.test");
    }

    #[test]
    fn bad_records_give_no_uri() {
        assert_eq!(one("v=spf1 -all"), Err(RuaError::NoRecord));
        assert_eq!(one("v=TLSRPTv1;"), Err(RuaError::NoRua));
        assert_eq!(
            one("v=TLSRPTv1; rua=http://a.test/x,ftp://a.test,mailto:nobody"),
            Err(RuaError::NoUsableUri)
        );
        assert_eq!(
            parse(&[
                "v=TLSRPTv1; rua=mailto:a@a.test".into(),
                "v=TLSRPTv1; rua=mailto:b@a.test".into()
            ]),
            Err(RuaError::Several(2))
        );
        assert_eq!(
            one("v=TLSRPTv10; rua=mailto:a@a.test"),
            Err(RuaError::NoRecord)
        );
        let many = format!("v=TLSRPTv1; rua={}", ["mailto:a@a.test"; 9].join(","));
        assert_eq!(one(&many).expect("parsed").len(), RUA_URIS_MAX);
    }
}
