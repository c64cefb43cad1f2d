//! Messages per second per core through the pure SMTP core: a whole pipelined transaction
//! (EHLO, MAIL, RCPT, DATA of 1 KiB, QUIT) through a fresh Session, and `prepare_message` on a
//! 1 KiB message. Run: `cargo bench -p petrel-smtp --bench smtp_parse`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use petrel_smtp::{
    prepare_message, DataVerdict, Event, Limits, PeerInfo, ServerConfig, Session, TraceInfo,
    Verdict,
};
use std::sync::Arc;

/// A 1 KiB message: a few headers and 16 lines of 60 characters.
fn message_1k() -> Vec<u8> {
    let mut message = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n\
        Subject: benchmark\r\nMessage-ID: <1@example.org>\r\nDate: Mon, 23 Nov 2026 15:58:39 +0000\r\n\r\n"
        .to_vec();
    while message.len() < 1024 - 62 {
        message.extend_from_slice(&[b'x'; 60]);
        message.extend_from_slice(b"\r\n");
    }
    message
}

fn transaction(c: &mut Criterion) {
    let config = Arc::new(ServerConfig {
        hostname: "mx.bench".into(),
        limits: Limits::default(),
        starttls_available: true,
        auth_without_tls: false,
        auth_enabled: false,
        tls_required: false,
        auth_required: false,
    });
    let peer = PeerInfo {
        addr: ([127, 0, 0, 1], 40_000).into(),
        tls: false,
    };
    let mut script = b"EHLO client.bench\r\nMAIL FROM:<alice@example.org> SIZE=1024\r\n\
        RCPT TO:<bob@example.net>\r\nDATA\r\n"
        .to_vec();
    script.extend_from_slice(&message_1k());
    script.extend_from_slice(b".\r\nQUIT\r\n");

    let mut group = c.benchmark_group("smtp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("session_transaction_1k", |b| {
        b.iter(|| {
            let mut session = Session::new(config.clone(), peer);
            session.feed(black_box(&script));
            let mut bytes = 0;
            while let Some(event) = session.next_event() {
                match event {
                    Event::Mail { .. } => session.mail_verdict(Verdict::Accept),
                    Event::Rcpt { .. } => session.rcpt_verdict(Verdict::Accept),
                    Event::Message(txn) => {
                        bytes += txn.data.len();
                        session.data_verdict(DataVerdict::Accept {
                            queue_id: "Q1".into(),
                        });
                    }
                    _ => {}
                }
            }
            let n = session.output().len();
            session.consume_output(n);
            assert!(session.is_closed());
            bytes
        })
    });

    let message = message_1k();
    let trace = TraceInfo {
        hostname: "mx.bench",
        helo: "client.bench",
        peer: ([127, 0, 0, 1], 40_000).into(),
        tls: Some("TLSv1.3 TLS_AES_128_GCM_SHA256"),
        authenticated_as: None,
        queue_id: "0123456789ABCDEF",
        recipient: Some("bob@example.net"),
        now_unix_secs: 1_795_449_519,
        submission: false,
    };
    group.bench_function("prepare_message_1k", |b| {
        b.iter(|| prepare_message(black_box(&message), &trace).map(|m| m.len()))
    });
    group.finish();
}

criterion_group!(benches, transaction);
criterion_main!(benches);
