//! RFC 3464 delivery status notifications (bounces), built from values passed in.
//!
//! A DSN is a `multipart/report; report-type=delivery-status` (RFC 6522) with three parts: a
//! human-readable explanation, the `message/delivery-status` fields (per message: Reporting-MTA,
//! Original-Envelope-Id when the sender gave ENVID, Arrival-Date; per recipient:
//! Original-Recipient when it gave ORCPT, Final-Recipient, Action, Status, Remote-MTA,
//! Diagnostic-Code, Last-Attempt-Date) and the original header section as
//! `text/rfc822-headers`, or with RET=FULL and a failure the whole message as `message/rfc822`
//! (up to [`RETURNED_MESSAGE_MAX_BYTES`], else the headers). Failures (Action: failed: bounced or
//! expired) are reported unless the recipient's NOTIFY leaves FAILURE out; the first deferral
//! (Action: delayed) and a relay to a next hop that does not offer DSN (Action: relayed, RFC 3461
//! §5.2.2) only when its NOTIFY asks for DELAY or SUCCESS (`crate::dsn_params`).
//!
//! Loop prevention lives in [`should_send`]: never a DSN for the null reverse-path or for a DSN;
//! the DSN itself is sent with the null reverse-path (the driver stores it with `mail_from` "").

use std::fmt::Write as _;

/// What a DSN says happened to one recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bounced or expired: given up.
    Failed,
    /// Deferred, still being tried.
    Delayed,
    /// Accepted by a next hop that does not offer DSN: no delivery report will come from it.
    Relayed,
}

impl Action {
    fn field(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient address as given in RCPT TO.
    pub address: String,
    pub action: Action,
    /// The sender's ORCPT (`addr-type;address`, decoded), for `Original-Recipient`.
    pub original_recipient: Option<String>,
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
    /// Our queue id of the original message (X-Petrel-Queue-ID).
    pub queue_id: &'a str,
    /// The sender's ENVID (decoded), for `Original-Envelope-Id`.
    pub envid: Option<&'a str>,
    /// RET=FULL: a DSN reporting a failure returns the whole message (bounded).
    pub return_full: bool,
    /// When the original message arrived, unix seconds.
    pub arrival_unix_secs: i64,
    /// Now, unix seconds (Date, Last-Attempt-Date).
    pub now_unix_secs: i64,
    /// The recipients reported; at least one.
    pub recipients: &'a [DsnRecipient],
    /// The original message (its header section, or all of it with `return_full`).
    pub original_message: &'a [u8],
}

/// Bytes of the original header section copied into a DSN at most.
pub const ORIGINAL_HEADERS_MAX_BYTES: usize = 64 * 1024;
/// Largest original message a RET=FULL failure DSN returns whole; a larger one gets its
/// header section only (Postfix's `bounce_size_limit` is 50 kB; a DSN is spooled and sent
/// like any message, so this bounds what one failure costs).
pub const RETURNED_MESSAGE_MAX_BYTES: usize = 1 << 20;

/// Whether a failure of this message may produce a DSN: never for the null sender (`""`,
/// RFC 5321 §4.5.5) and never for a DSN we generated.
pub fn should_send(mail_from: &str, is_dsn: bool) -> bool {
    !is_dsn && !mail_from.is_empty()
}

/// Whether a message may be returned whole inside a `message/rfc822` part: text, 7- or 8-bit
/// (no NUL, every CR and LF paired as CRLF). A BINARYMIME original gets its headers only, as
/// no DSN transport could carry it.
fn is_text(message: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in message.iter().enumerate() {
        let next = message.get(i + 1).copied().unwrap_or(0);
        if b == 0 || (b == b'\r' && next != b'\n') || (b == b'\n' && prev != b'\r') {
            return false;
        }
        prev = b;
    }
    true
}

/// Builds the DSN message (CRLF line ends), ready to be spooled with the null sender.
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let failed = input.recipients.iter().any(|r| r.action == Action::Failed);
    let whole = input.return_full
        && failed
        && input.original_message.len() <= RETURNED_MESSAGE_MAX_BYTES
        && is_text(input.original_message);
    let returned = if whole {
        input.original_message
    } else {
        header_section(input.original_message)
    };
    let boundary = boundary_for(input, returned);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if input.recipients.iter().any(|r| r.action == Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Relay Report"
    };
    let date = rfc5322_date(input.now_unix_secs);
    let mut m = String::with_capacity(2048 + returned.len());
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
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
    let (description, content_type) = if whole {
        ("Undelivered Message", "message/rfc822")
    } else {
        ("Message Headers", "text/rfc822-headers")
    };
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: {description}\r\n\
         Content-Type: {content_type}\r\n\r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn human_part(m: &mut String, input: &DsnInput<'_>, boundary: &str) {
    let has = |a: Action| input.recipients.iter().any(|r| r.action == a);
    let what = if has(Action::Failed) {
        "I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients."
    } else if has(Action::Delayed) {
        "Your message could not be delivered yet to one or more recipients.\r\n\
         It will be tried again; you do not need to send it again."
    } else {
        "Your message was handed to the recipients' mail servers, which do\r\n\
         not send delivery notifications: this is the last report you will get."
    };
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is the mail system at host {mta}.\r\n\r\n{what}\r\n\r\n",
        mta = input.reporting_mta
    );
    for r in input.recipients {
        let why = match r.action {
            Action::Failed if r.expired => "delivery time expired",
            Action::Failed => "refused",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
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
         X-Petrel-Queue-ID: {id}\r\n",
        mta = input.reporting_mta,
        id = input.queue_id,
    );
    if let Some(envid) = input.envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(
        m,
        "Arrival-Date: {}\r\n",
        rfc5322_date(input.arrival_unix_secs)
    );
    let last = rfc5322_date(input.now_unix_secs);
    for r in input.recipients {
        let (a, b, c) = r.status;
        m.push_str("\r\n");
        if let Some(orcpt) = &r.original_recipient {
            let (kind, address) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
            let _ = write!(
                m,
                "Original-Recipient: {}; {}\r\n",
                one_line(kind),
                one_line(address)
            );
        }
        let _ = write!(
            m,
            "Final-Recipient: rfc822; {addr}\r\nAction: {action}\r\nStatus: {a}.{b}.{c}\r\n",
            addr = r.address,
            action = r.action.field(),
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

/// A boundary that does not occur in what is returned.
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

    fn sample(recipients: &[DsnRecipient]) -> Vec<u8> {
        build(&DsnInput {
            reporting_mta: "mx.petrel.test",
            original_sender: "alice@sender.example",
            queue_id: "0100000000000001",
            envid: None,
            return_full: false,
            arrival_unix_secs: 1_700_000_000,
            now_unix_secs: 1_700_000_360,
            recipients,
            original_message: b"From: alice@sender.example\r\nSubject: hi\r\n\r\nbody line\r\n",
        })
    }

    fn failed(addr: &str, expired: bool) -> DsnRecipient {
        DsnRecipient {
            address: addr.into(),
            action: Action::Failed,
            original_recipient: None,
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

    fn with(
        recipients: &[DsnRecipient],
        envid: Option<&str>,
        return_full: bool,
        original: &[u8],
    ) -> String {
        let msg = build(&DsnInput {
            reporting_mta: "mx.petrel.test",
            original_sender: "alice@sender.example",
            queue_id: "0100000000000001",
            envid,
            return_full,
            arrival_unix_secs: 1_700_000_000,
            now_unix_secs: 1_700_000_360,
            recipients,
            original_message: original,
        });
        String::from_utf8(msg).expect("ascii")
    }

    const ORIGINAL: &[u8] = b"From: alice@sender.example\r\nSubject: hi\r\n\r\nbody line\r\n";

    #[test]
    fn envid_and_orcpt_are_reported() {
        let mut r = failed("bob@dest.example", false);
        r.original_recipient = Some("rfc822;Bob+Orig@dest.example".into());
        let text = with(
            &[r, failed("carol@dest.example", false)],
            Some("QQ+314"),
            false,
            ORIGINAL,
        );
        let (_, parts) = parse(&text);
        let groups: Vec<&str> = parts[1].1.trim_end().split("\r\n\r\n").collect();
        assert!(groups[0].contains("\r\nOriginal-Envelope-Id: QQ+314\r\n"));
        assert!(groups[1].starts_with(
            "Original-Recipient: rfc822; Bob+Orig@dest.example\r\nFinal-Recipient: rfc822; bob@dest.example"
        ));
        assert!(
            !groups[2].contains("Original-Recipient"),
            "no ORCPT, no field"
        );
        assert!(!sample(&[failed("b@d.example", false)])
            .windows(20)
            .any(|w| w == b"Original-Envelope-Id"));
    }

    #[test]
    fn ret_full_returns_the_message_on_failure_and_headers_otherwise() {
        let text = with(&[failed("bob@dest.example", false)], None, true, ORIGINAL);
        let (_, parts) = parse(&text);
        assert!(parts[2].0.contains("Content-Type: message/rfc822"));
        assert!(parts[2].1.contains("body line"), "the whole message");
        // Past the bound, or for a report without a failure, the headers only.
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        big.resize(RETURNED_MESSAGE_MAX_BYTES + 1, b'a');
        let text = with(&[failed("bob@dest.example", false)], None, true, &big);
        let (_, parts) = parse(&text);
        assert!(parts[2].0.contains("text/rfc822-headers"));
        assert_eq!(parts[2].1.trim_end(), "Subject: big");
        let mut relayed = failed("bob@dest.example", false);
        relayed.action = Action::Relayed;
        let text = with(&[relayed], None, true, ORIGINAL);
        let (top, parts) = parse(&text);
        assert!(parts[2].0.contains("text/rfc822-headers"));
        assert!(!parts[2].1.contains("body line"));
        assert!(top.contains("Subject: Successful Mail Relay Report"));
        assert!(parts[1].1.contains("Action: relayed"));
    }

    #[test]
    fn delayed_reports_say_so() {
        let mut d = failed("bob@dest.example", false);
        d.action = Action::Delayed;
        d.status = (4, 2, 0);
        let text = with(&[d], None, false, ORIGINAL);
        let (top, parts) = parse(&text);
        assert!(top.contains("Subject: Delayed Mail (still being retried)"));
        assert!(parts[0].1.contains("<bob@dest.example>: delayed: "));
        assert!(parts[1].1.contains("Action: delayed\r\nStatus: 4.2.0"));
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

    #[test]
    fn a_binary_original_is_returned_as_headers_only() {
        let rcpts = [failed("bob@dest.example", false)];
        let build_with = |original: &[u8]| {
            String::from_utf8_lossy(&build(&DsnInput {
                reporting_mta: "mx.petrel.test",
                original_sender: "alice@sender.example",
                queue_id: "0100000000000001",
                envid: None,
                return_full: true,
                arrival_unix_secs: 1_700_000_000,
                now_unix_secs: 1_700_000_360,
                recipients: &rcpts,
                original_message: original,
            }))
            .into_owned()
        };
        let text = build_with(b"Subject: t\r\n\r\nline caf\xc3\xa9\r\n");
        assert!(text.contains("line caf"), "8-bit text is returned whole");
        let binary = build_with(b"Subject: t\r\n\r\nbare\nLF and \0 NUL\r\n");
        assert!(!binary.contains("NUL"), "binary: headers only");
        assert!(binary.contains("Subject: t"));
        assert!(is_text(b"a\r\nb\r\n") && !is_text(b"a\rb") && !is_text(b"a\nb"));
    }
}
