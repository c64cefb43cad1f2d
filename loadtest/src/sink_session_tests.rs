//! Tests of the sink's SMTP session (`sink_session.rs`).

use super::*;
use crate::sink::SinkConfig;

fn shared(cfg: SinkConfig) -> SinkShared {
    SinkShared::new(cfg, "127.0.0.1:1".parse().unwrap(), 1, None)
}

/// Feeds `input` and returns the replies written in this pass and the action.
fn feed(s: &mut Session<'_>, input: &[u8]) -> (String, Action) {
    s.inbuf.extend_from_slice(input);
    let a = s.process();
    let out = String::from_utf8(std::mem::take(&mut s.out)).unwrap();
    (out, a)
}

#[test]
fn pipelined_transaction_batches_replies() {
    let sh = shared(SinkConfig {
        keep_messages_max: 1,
        ..SinkConfig::default()
    });
    let mut s = Session::new(&sh, 0, StdRng::seed_from_u64(1), None);
    let (out, a) = feed(
        &mut s,
        b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n",
    );
    assert_eq!(a, Action::NeedInput);
    assert!(
        out.starts_with("250-petrel-sink\r\n250-PIPELINING\r\n"),
        "{out}"
    );
    assert!(
        !out.contains("STARTTLS"),
        "no acceptor, so not offered: {out}"
    );
    assert!(
        out.ends_with("250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 end data with <CRLF>.<CRLF>\r\n"),
        "{out}"
    );
    // Split terminator across reads, dot-stuffed line, then a pipelined QUIT.
    let (out, a) = feed(&mut s, b"X-Petrel-Load-Id: 1-2-3\r\n\r\n..dot\r\n");
    assert_eq!((out.as_str(), a), ("", Action::NeedInput));
    let (out, a) = feed(&mut s, b".\r\nQUIT\r\n");
    assert_eq!(out, "250 2.0.0 ok: queued\r\n221 2.0.0 bye\r\n");
    assert_eq!(a, Action::Close);
    let got = sh.received.lock().unwrap();
    assert_eq!(got[0].data, b"X-Petrel-Load-Id: 1-2-3\r\n\r\n.dot\r\n");
    assert_eq!(got[0].rcpts, vec!["c@example.test".to_string()]);
    assert_eq!(got[0].load_id.map(|i| i.n), Some(2));
    assert_eq!(sh.counters.unique_ids.load(Ordering::Relaxed), 1);
}

#[test]
fn bdat_chunks_split_across_reads_and_refusals_consume_the_chunk() {
    let sh = shared(SinkConfig {
        keep_messages_max: 4,
        ..SinkConfig::default()
    });
    let mut s = Session::new(&sh, 0, StdRng::seed_from_u64(1), None);
    let (out, _) = feed(&mut s, b"EHLO x\r\n");
    assert!(out.contains("250-CHUNKING\r\n"), "{out}");
    // Two chunks; the first split over two reads; ".." is content, not stuffing.
    let (out, a) = feed(
        &mut s,
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@example.test>\r\nBDAT 11\r\n..abc",
    );
    assert_eq!(out, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n");
    assert_eq!(a, Action::NeedInput);
    let (out, _) = feed(&mut s, b"\r\n12\r\nBDAT 4 LAST\r\nend\n");
    assert_eq!(out, "250 2.0.0 chunk ok\r\n250 2.0.0 ok: queued\r\n");
    // No recipient: the chunk is read and refused; the session stays in step.
    let (out, _) = feed(
        &mut s,
        b"MAIL FROM:<a@b.test>\r\nBDAT 5 LAST\r\nhelloNOOP\r\n",
    );
    assert_eq!(
        out,
        "250 2.1.0 ok\r\n554 5.5.1 no valid recipients\r\n250 2.0.0 ok\r\n"
    );
    // Bad syntax, and a zero-size LAST chunk ending a one-chunk message.
    let (out, _) = feed(
        &mut s,
        b"BDAT x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<d@example.test>\r\nBDAT 3\r\nabcBDAT 0 LAST\r\n",
    );
    assert_eq!(
        out,
        "501 5.5.4 syntax: BDAT size [LAST]\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n\
         250 2.0.0 chunk ok\r\n250 2.0.0 ok: queued\r\n"
    );
    // A DATA transaction after BDAT ones is unstuffed as usual.
    let (out, _) = feed(
        &mut s,
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<e@example.test>\r\nDATA\r\n..x\r\n.\r\n",
    );
    assert!(out.ends_with("250 2.0.0 ok: queued\r\n"), "{out}");
    let got = sh.received.lock().unwrap();
    assert_eq!(got[0].data, b"..abc\r\n12\r\nend\n");
    assert_eq!(got[1].data, b"abc");
    assert_eq!(got[2].data, b".x\r\n");
    assert_eq!(sh.counters.messages_accepted.load(Ordering::Relaxed), 3);
    // The stats carry the first and the last arrival's wall-clock time.
    let stats = sh.snapshot();
    assert!(stats.first_arrival_unix_us > 0, "{stats:?}");
    assert!(stats.last_arrival_unix_us >= stats.first_arrival_unix_us);
    assert!(stats.last_arrival_unix_us <= crate::report::unix_now_us());
}

#[test]
fn chunking_is_not_offered_when_off() {
    let sh = shared(SinkConfig {
        chunking: false,
        ..SinkConfig::default()
    });
    let mut s = Session::new(&sh, 0, StdRng::seed_from_u64(1), None);
    let (out, _) = feed(&mut s, b"EHLO x\r\nBDAT 1 LAST\r\n");
    assert!(!out.contains("CHUNKING"), "{out}");
    assert!(
        out.ends_with("500 5.5.2 command not recognized\r\n"),
        "{out}"
    );
}

#[test]
fn protocol_errors_get_replies_not_panics() {
    let sh = shared(SinkConfig::default());
    let mut s = Session::new(&sh, 0, StdRng::seed_from_u64(1), None);
    let (out, _) = feed(
        &mut s,
        b"DATA\r\nRCPT TO:<a@b>\r\nBOGUS\r\nAUTH LOGIN\r\nSTARTTLS\r\n\r\n",
    );
    assert_eq!(
        out,
        "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n500 5.5.2 command not recognized\r\n\
         504 5.5.4 mechanism not supported\r\n502 5.5.1 STARTTLS not offered\r\n\
         500 5.5.2 command not recognized\r\n"
    );
    let (out, a) = feed(&mut s, &[b'x'; 5000]);
    assert_eq!(
        (out.as_str(), a),
        ("500 5.5.2 line too long\r\n", Action::Close)
    );
}

#[test]
fn drop_in_data_closes_without_reply() {
    let sh = shared(SinkConfig {
        drop_in_data: 1.0,
        ..SinkConfig::default()
    });
    let mut s = Session::new(&sh, 0, StdRng::seed_from_u64(1), None);
    let (out, _) = feed(
        &mut s,
        b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n",
    );
    assert!(out.ends_with("354 end data with <CRLF>.<CRLF>\r\n"));
    let (out, a) = feed(&mut s, b"Subject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!((out.as_str(), a), ("", Action::Drop));
    assert_eq!(sh.counters.drops_in_data.load(Ordering::Relaxed), 1);
}

#[test]
fn domains_match_subdomains_only_on_label_boundary() {
    assert!(domain_matches(b"example.test", b"example.test"));
    assert!(domain_matches(b"D1.Example.Test", b"example.test"));
    assert!(!domain_matches(b"badexample.test", b"example.test"));
    assert!(!domain_matches(b"test", b"example.test"));
}

#[test]
fn angle_and_unstuff() {
    assert_eq!(angle(b"FROM:<a@b> SIZE=10"), b"a@b");
    assert_eq!(angle(b"TO:a@b"), b"");
    assert_eq!(unstuff(b"a\r\n..b\r\n.c\r\n"), b"a\r\n.b\r\n.c\r\n");
    assert_eq!(trim_eol(b"QUIT\r\n"), b"QUIT");
}
