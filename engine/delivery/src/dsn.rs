//! RFC 3464 delivery status notifications (bounces), built from values passed in.
//!
//! A DSN is a `multipart/report; report-type=delivery-status` (RFC 6522) with three parts: a
//! human-readable explanation, the `message/delivery-status` fields (per message, then per
//! recipient: Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date)
//! and the original header section as `text/rfc822-headers`. Only failures are reported
//! (Action: failed), for recipients that bounced or expired.
//!
//! Loop prevention lives in [`should_send`]: never a DSN for the null reverse-path or for a DSN;
//! the DSN itself is sent with the null reverse-path (the driver stores it with `mail_from` "").

use std::fmt::Write as _;

/// One failed recipient in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The recipient address as given in RCPT TO.
    pub address: String,
    /// Enhanced status code (RFC 3463), e.g. (5, 1, 1).
    pub status: (u8, u16, u16),
    /// The MX host that answered, if any.
    pub remote_mta: Option<String>,
    /// The remote reply ("550 5.1.1 no such user") or our reason ("expired after 5 days").
    pub diagnostic: String,
    /// The recipient expired (true) rather than being refused.
    pub expired: bool,
}

/// Everything needed to build one DSN.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our host name (Reporting-MTA and From).
    pub reporting_mta: &'a str,
    /// The original sender: the DSN's recipient.
    pub original_sender: &'a str,
    /// Our queue id of the original message (X-Petrel-Queue-ID and Original-Envelope-Id).
    pub queue_id: &'a str,
    /// When the original message arrived, unix seconds.
    pub arrival_unix_secs: i64,
    /// Now, unix seconds (Date, Last-Attempt-Date).
    pub now_unix_secs: i64,
    /// The failed recipients; at least one.
    pub recipients: &'a [FailedRecipient],
    /// The original message (only its header section is included).
    pub original_message: &'a [u8],
}

/// Bytes of the original header section copied into a DSN at most.
pub const ORIGINAL_HEADERS_MAX_BYTES: usize = 64 * 1024;

/// Whether a failure of this message may produce a DSN: never for the null sender (`""`,
/// RFC 5321 §4.5.5) and never for a DSN we generated.
pub fn should_send(mail_from: &str, is_dsn: bool) -> bool {
    !is_dsn && !mail_from.is_empty()
}

/// Builds the DSN message (CRLF line ends), ready to be spooled with the null sender.
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let headers = header_section(input.original_message);
    let boundary = boundary_for(input, headers);
    let date = rfc5322_date(input.now_unix_secs);
    let mut m = String::with_capacity(2048 + headers.len());
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <dsn.{id}.{now}@{mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         X-Petrel-Queue-ID: {id}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n",
        mta = input.reporting_mta,
        to = input.original_sender,
        id = input.queue_id,
        now = input.now_unix_secs,
    );
    human_part(&mut m, input, &boundary);
    status_part(&mut m, input, &boundary);
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn human_part(m: &mut String, input: &DsnInput<'_>, boundary: &str) {
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is the mail system at host {mta}.\r\n\r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients.\r\n\r\n",
        mta = input.reporting_mta
    );
    for r in input.recipients {
        let why = if r.expired {
            "delivery time expired"
        } else {
            "refused"
        };
        let _ = write!(
            m,
            "<{}>: {}: {}\r\n",
            r.address,
            why,
            one_line(&r.diagnostic)
        );
    }
    m.push_str("\r\n");
}

fn status_part(m: &mut String, input: &DsnInput<'_>, boundary: &str) {
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; {mta}\r\n\
         X-Petrel-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        mta = input.reporting_mta,
        id = input.queue_id,
        arrival = rfc5322_date(input.arrival_unix_secs),
    );
    let last = rfc5322_date(input.now_unix_secs);
    for r in input.recipients {
        let (a, b, c) = r.status;
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {addr}\r\nOriginal-Recipient: rfc822; {addr}\r\n\
             Action: failed\r\nStatus: {a}.{b}.{c}\r\n",
            addr = r.address
        );
        if let Some(mta) = &r.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {mta}\r\n");
        }
        let _ = write!(
            m,
            "Diagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {last}\r\n",
            one_line(&r.diagnostic)
        );
    }
    m.push_str("\r\n");
}

/// The header section of a message: up to (not including) the empty line, bounded.
fn header_section(message: &[u8]) -> &[u8] {
    let end = memfind(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let end = end.min(ORIGINAL_HEADERS_MAX_BYTES);
    // Cut at a line end so a truncated section stays well-formed.
    match message[..end].iter().rposition(|b| *b == b'\n') {
        Some(i) if end < message.len() => &message[..=i],
        _ => &message[..end],
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A boundary that does not occur in the copied headers.
fn boundary_for(input: &DsnInput<'_>, headers: &[u8]) -> String {
    let mut b = format!("=_petrel_{}_{}", input.queue_id, input.now_unix_secs);
    while memfind(headers, b.as_bytes()).is_some() {
        b.push('x');
    }
    b
}

/// Diagnostic text on one line (no CR/LF from a remote reply can break the report).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// RFC 5322 date in UTC, e.g. "Tue, 03 Nov 2026 09:04:05 +0000".
pub fn rfc5322_date(unix_secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(mo - 1) as usize % 12];
    format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm: (year, month 1..=12, day 1..=31).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(recipients: &[FailedRecipient]) -> Vec<u8> {
        build(&DsnInput {
            reporting_mta: "mx.petrel.test",
            original_sender: "alice@sender.example",
            queue_id: "0100000000000001",
            arrival_unix_secs: 1_700_000_000,
            now_unix_secs: 1_700_000_360,
            recipients,
            original_message: b"From: alice@sender.example\r\nSubject: hi\r\n\r\nbody line\r\n",
        })
    }

    fn failed(addr: &str, expired: bool) -> FailedRecipient {
        FailedRecipient {
            address: addr.into(),
            status: if expired { (4, 4, 7) } else { (5, 1, 1) },
            remote_mta: Some("mx.dest.example".into()),
            diagnostic: "550 5.1.1 no such user\r\nInjected: header".into(),
            expired,
        }
    }

    /// Splits a multipart body by its boundary: (top headers, parts as (headers, body)).
    fn parse(msg: &str) -> (String, Vec<(String, String)>) {
        let (top, body) = msg.split_once("\r\n\r\n").expect("header/body split");
        let unfolded = top.replace("\r\n\t", " ");
        let b = unfolded
            .split("boundary=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("boundary");
        let delim = format!("--{b}");
        let end = format!("--{b}--");
        assert!(body.contains(&end), "closing delimiter");
        let parts = body
            .split(&delim)
            .skip(1)
            .filter(|p| !p.starts_with("--"))
            .map(|p| {
                let p = p.trim_start_matches("\r\n");
                let (h, b) = p.split_once("\r\n\r\n").expect("part header/body split");
                (h.to_string(), b.to_string())
            })
            .collect();
        (unfolded, parts)
    }

    #[test]
    fn multipart_report_has_three_parts_in_order() {
        let msg = sample(&[
            failed("bob@dest.example", false),
            failed("carol@dest.example", true),
        ]);
        let text = String::from_utf8(msg).expect("ascii");
        let (top, parts) = parse(&text);
        assert!(top.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(top.contains("To: <alice@sender.example>"));
        assert!(top.contains("Date: Tue, 14 Nov 2023 22:19:20 +0000"));
        assert!(top.contains("Auto-Submitted: auto-replied"));
        assert_eq!(parts.len(), 3);
        assert!(parts[0].0.contains("text/plain"));
        assert!(parts[0]
            .1
            .contains("<bob@dest.example>: refused: 550 5.1.1 no such user"));
        assert!(parts[1].0.contains("Content-Type: message/delivery-status"));
        assert!(parts[2].0.contains("Content-Type: text/rfc822-headers"));
        assert_eq!(
            parts[2].1.trim_end(),
            "From: alice@sender.example\r\nSubject: hi"
        );
        assert!(
            !parts[2].1.contains("body line"),
            "only the headers go back"
        );
        for line in text.split("\r\n") {
            assert!(
                !line.contains('\n') && !line.contains('\r'),
                "bare line end"
            );
            assert!(
                !line.starts_with("Injected:"),
                "reply text stays on one line"
            );
        }
    }

    #[test]
    fn delivery_status_fields_per_recipient() {
        let msg = sample(&[
            failed("bob@dest.example", false),
            failed("carol@dest.example", true),
        ]);
        let text = String::from_utf8(msg).expect("ascii");
        let (_, parts) = parse(&text);
        let groups: Vec<&str> = parts[1].1.trim_end().split("\r\n\r\n").collect();
        assert_eq!(groups.len(), 3, "per-message group + one per recipient");
        assert!(groups[0].starts_with("Reporting-MTA: dns; mx.petrel.test"));
        assert!(groups[0].contains("Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000"));
        assert!(groups[1].contains("Final-Recipient: rfc822; bob@dest.example"));
        assert!(groups[1].contains("Action: failed"));
        assert!(groups[1].contains("Status: 5.1.1"));
        assert!(groups[1].contains("Remote-MTA: dns; mx.dest.example"));
        assert!(groups[1].contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
        assert!(groups[2].contains("Final-Recipient: rfc822; carol@dest.example"));
        assert!(groups[2].contains("Status: 4.4.7"));
    }

    #[test]
    fn never_for_null_sender_or_dsn() {
        assert!(should_send("alice@example.com", false));
        assert!(!should_send("", false));
        assert!(!should_send("alice@example.com", true));
    }

    #[test]
    fn dates_are_correct() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_798_761_599),
            "Thu, 31 Dec 2026 23:59:59 +0000"
        );
    }

    #[test]
    fn headers_are_bounded() {
        let mut big = Vec::new();
        for i in 0..10_000 {
            big.extend_from_slice(format!("X-Filler-{i}: aaaaaaaaaaaaaaaaaa\r\n").as_bytes());
        }
        big.extend_from_slice(b"\r\nbody\r\n");
        let h = header_section(&big);
        assert!(h.len() <= ORIGINAL_HEADERS_MAX_BYTES);
        assert!(h.ends_with(b"\r\n"));
    }
}
