use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Frame;

use super::*;

/// A body of the given frames, as a client's chunks arrive.
struct Frames(VecDeque<Bytes>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn frames(text: &[u8], size: usize) -> Frames {
    Frames(text.chunks(size).map(Bytes::copy_from_slice).collect())
}

async fn lines(body: Frames) -> (Vec<Line>, usize) {
    let mut r = LineReader::new(body);
    let mut out = Vec::new();
    let mut buffer_max = 0;
    while let Some(l) = r.next_line().await.expect("line") {
        buffer_max = buffer_max.max(r.pending_capacity());
        out.push(l);
    }
    (out, buffer_max)
}

#[tokio::test]
async fn lines_split_across_frames_of_any_size() {
    let text = b"a,b\r\nline two\n\nlast without newline";
    for size in [1, 2, 3, 7, 100] {
        let (got, _) = lines(frames(text, size)).await;
        assert_eq!(
            got,
            vec![
                Line::Text("a,b".into()),
                Line::Text("line two".into()),
                Line::Text(String::new()),
                Line::Text("last without newline".into()),
            ],
            "frames of {size}"
        );
    }
}

#[tokio::test]
async fn an_overlong_line_is_one_error_and_memory_stays_bounded() {
    // 8 MiB on one line between two good ones, in frames of 64 KiB: the reader never holds
    // more than a line's maximum of it.
    let mut text = b"first\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 8 << 20));
    text.extend_from_slice(b"\nthird\n\xff\xfe\n");
    text.extend(std::iter::repeat_n(b'y', IMPORT_LINE_MAX_BYTES + 1));
    let (got, buffer_max) = lines(frames(&text, 64 << 10)).await;
    assert_eq!(
        got,
        vec![
            Line::Text("first".into()),
            Line::TooLong,
            Line::Text("third".into()),
            Line::NotUtf8,
            Line::TooLong,
        ]
    );
    assert!(buffer_max <= 2 * IMPORT_LINE_MAX_BYTES, "{buffer_max}");
    // Exactly the maximum is fine.
    let exact = "z".repeat(IMPORT_LINE_MAX_BYTES);
    let (got, _) = lines(frames(exact.as_bytes(), 10)).await;
    assert_eq!(got, vec![Line::Text(exact)]);
}

#[test]
fn csv_headers_name_their_columns_in_any_order() {
    let c = csv_header("\u{feff}Reason,ADDRESS").expect("header");
    assert_eq!(
        (c.count, c.address, c.reason, c.expires_at),
        (2, 1, Some(0), None)
    );
    assert!(csv_header("reason,expires_at").is_err(), "no address");
    assert!(csv_header("address,colour").is_err(), "unknown column");
    let c = csv_header(CSV_HEADER).expect("the export's header imports");
    let row = csv_row(&c, "\"A@X.com\",complaint,,2026-01-01T00:00:00Z,ev_1").expect("row");
    assert_eq!(row.0, "A@X.com");
    assert_eq!(row.1.as_deref(), Some("complaint"));
    assert!(row.2.is_none());
    assert!(csv_row(&c, "a@x.com,manual").is_err(), "field count");
}

#[test]
fn entries_check_address_reason_and_expiry() {
    let now = 1_700_000_000_000;
    let ok = entry(
        "ten_a",
        (
            " A@X.com ".into(),
            Some("unsubscribe".into()),
            Some(ExpiresAt::Text("2030-01-01T00:00:00.250Z".into())),
        ),
        now,
    )
    .expect("entry");
    assert_eq!(ok.address, "a@x.com");
    assert_eq!(ok.reason, SuppressionReason::Unsubscribe);
    assert_eq!(ok.expires_unix_ms, Some(1_893_456_000_250));
    let ms = entry(
        "t",
        ("a@x.com".into(), None, Some(ExpiresAt::Ms(now + 5))),
        now,
    )
    .expect("ms expiry");
    assert_eq!(
        (ms.reason, ms.expires_unix_ms),
        (SuppressionReason::Manual, Some(now + 5))
    );
    assert!(entry("t", ("nobody".into(), None, None), now).is_err());
    assert!(entry("t", ("a@x.com".into(), Some("bounce".into()), None), now).is_err());
    let past = Some(ExpiresAt::Ms(now - 1));
    assert!(entry("t", ("a@x.com".into(), None, past), now).is_err());
    let junk = Some(ExpiresAt::Text("next week".into()));
    assert!(entry("t", ("a@x.com".into(), None, junk), now).is_err());
    assert!(json_row(r#"{"address": "a@x.com", "colour": 1}"#).is_err());
    assert!(
        json_row(r#"{"address": "a@x.com", "created_at": "x", "source_event_id": null}"#).is_ok()
    );
}

#[test]
fn export_lines_import_back() {
    let row = SuppressionRow {
        scope: "t".into(),
        address: "a@x.com".into(),
        reason: SuppressionReason::Complaint,
        source_event_id: Some("ev_1".into()),
        created_unix_ms: 1_700_000_000_000,
        updated_unix_ms: 1_700_000_000_000,
        expires_unix_ms: Some(1_893_456_000_250),
    };
    let now = 1_700_000_000_000;
    let mut csv = Vec::new();
    export_line(Format::Csv, row.clone(), &mut csv);
    let line = String::from_utf8(csv).expect("utf8");
    let cols = csv_header(CSV_HEADER).expect("header");
    let back = entry("t", csv_row(&cols, line.trim_end()).expect("row"), now).expect("entry");
    assert_eq!(
        (back.address.as_str(), back.reason, back.expires_unix_ms),
        (
            "a@x.com",
            SuppressionReason::Complaint,
            Some(1_893_456_000_250)
        )
    );
    let mut json = Vec::new();
    export_line(Format::Ndjson, row, &mut json);
    let line = String::from_utf8(json).expect("utf8");
    let back = entry("t", json_row(line.trim_end()).expect("row"), now).expect("entry");
    assert_eq!(back.expires_unix_ms, Some(1_893_456_000_250));
}
