//! The message body receiver for DATA (dot-stuffed, ends at CRLF.CRLF) and BDAT (length-framed).
//!
//! Strict CRLF is the defence against SMTP smuggling (2023): a line ends only at CR LF, the only
//! end of DATA is CR LF "." CR LF, and a bare CR or bare LF anywhere poisons the message so it is
//! rejected at its real end. Bytes are scanned with `memchr2` between line boundaries, so the
//! per-byte state machine only runs at the start and the end of each line.

use memchr::memchr2;

/// Why a received message is refused by the protocol checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
    /// A text line longer than `text_line_max_bytes` (CRLF included).
    LineTooLong,
    /// More than `message_size_max_bytes` after unstuffing.
    TooBig,
}

impl BodyError {
    /// The full reply line for this refusal.
    pub(crate) fn reply(self) -> &'static str {
        match self {
            BodyError::BareLineEnding => {
                "550 5.6.0 Message rejected: bare CR or LF found, lines must end with CRLF\r\n"
            }
            BodyError::LineTooLong => "552 5.5.6 Message rejected: text line too long\r\n",
            BodyError::TooBig => "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        }
    }
}

/// Where we are in the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineState {
    /// At the start of a line (after CR LF, or at the start of the body).
    Start,
    /// A line that began with "." (DATA only; the dot is not stored).
    Dot,
    /// ".\r" at the start of a line: LF now ends the message.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line: LF now ends the line, anything else is a bare CR.
    MidCr,
}

/// Accumulates one message. The buffer keeps its capacity across rejected transactions; an
/// accepted message moves it out with [`BodyReceiver::take`].
#[derive(Debug)]
pub(crate) struct BodyReceiver {
    /// The message so far, unstuffed, CRLF line ends; `data.len() <= size_max_bytes`.
    data: Vec<u8>,
    state: LineState,
    /// Bytes of the current line seen so far as transmitted (leading dot included), CRLF
    /// excluded; may exceed `text_line_max_bytes` once `error` is set.
    line_len: usize,
    /// The first refusal; once set, nothing more is stored but input is still consumed.
    error: Option<BodyError>,
    /// DATA framing (dot-stuffing and the CRLF.CRLF end); false for BDAT.
    dots: bool,
    /// BODY=BINARYMIME over BDAT: no line checks, only the size limit.
    binary: bool,
    /// Longest text line, CRLF included.
    text_line_max_bytes: usize,
    /// Largest message.
    size_max_bytes: usize,
    /// Octets received in BDAT chunks for this message (before any refusal).
    chunked_bytes: u64,
}

impl BodyReceiver {
    pub(crate) fn new(text_line_max_bytes: usize, size_max_bytes: usize) -> Self {
        BodyReceiver {
            data: Vec::new(),
            state: LineState::Start,
            line_len: 0,
            error: None,
            dots: true,
            binary: false,
            text_line_max_bytes,
            size_max_bytes,
            chunked_bytes: 0,
        }
    }

    /// Starts a new message. `reserve_bytes` (from MAIL SIZE= or a default) is bounded by the
    /// size limit so a lying client cannot make us allocate more than one message's worth.
    pub(crate) fn start(&mut self, dots: bool, binary: bool, reserve_bytes: usize) {
        self.reset();
        self.dots = dots;
        self.binary = binary;
        self.data.reserve(reserve_bytes.min(self.size_max_bytes));
    }

    /// Forgets the current message, keeping the buffer's capacity.
    pub(crate) fn reset(&mut self) {
        self.data.clear();
        self.state = LineState::Start;
        self.line_len = 0;
        self.error = None;
        self.chunked_bytes = 0;
    }

    pub(crate) fn error(&self) -> Option<BodyError> {
        self.error
    }

    pub(crate) fn chunked_bytes(&self) -> u64 {
        self.chunked_bytes
    }

    /// Moves the message out (the next message allocates afresh).
    pub(crate) fn take(&mut self) -> Vec<u8> {
        let data = std::mem::take(&mut self.data);
        self.reset();
        data
    }

    /// Marks the message as refused (e.g. a BDAT chunk that would exceed the size limit).
    pub(crate) fn fail(&mut self, error: BodyError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    /// DATA: consumes `buf` up to and including the terminating CRLF.CRLF.
    /// Returns (bytes consumed, message complete).
    pub(crate) fn feed_data(&mut self, buf: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < buf.len() {
            let byte = buf[i];
            match self.state {
                LineState::Start => {
                    if self.dots && byte == b'.' {
                        self.state = LineState::Dot;
                        self.line_len = 1;
                        i += 1;
                    } else {
                        self.state = LineState::Mid;
                    }
                }
                LineState::Dot => {
                    if byte == b'\r' {
                        self.state = LineState::DotCr;
                        i += 1;
                    } else {
                        // The stuffed dot is dropped; the rest of the line is data.
                        self.state = LineState::Mid;
                    }
                }
                LineState::DotCr => {
                    if byte == b'\n' {
                        self.state = LineState::Start;
                        self.line_len = 0;
                        return (i + 1, true);
                    }
                    // ".\r" then not LF: a bare CR; re-read this byte inside the line.
                    self.fail(BodyError::BareLineEnding);
                    self.state = LineState::Mid;
                }
                LineState::Mid => i += self.scan(&buf[i..]),
                LineState::MidCr => {
                    if byte == b'\n' {
                        self.end_line();
                        i += 1;
                    } else {
                        self.fail(BodyError::BareLineEnding);
                        self.state = LineState::Mid;
                    }
                }
            }
        }
        (i, false)
    }

    /// BDAT: consumes all of `buf`, which is part of a chunk.
    pub(crate) fn feed_chunk(&mut self, buf: &[u8]) {
        self.chunked_bytes = self.chunked_bytes.saturating_add(buf.len() as u64);
        if self.binary {
            self.push(buf);
        } else {
            // With `dots == false` the DATA machine never ends a message, so all is consumed.
            let (used, _) = self.feed_data(buf);
            debug_assert_eq!(used, buf.len(), "BDAT framing consumes every byte");
        }
    }

    /// BDAT LAST: the message must not end inside a CR LF pair; a last line without CRLF gets one.
    pub(crate) fn finish_chunked(&mut self) {
        if self.binary {
            return;
        }
        match self.state {
            LineState::MidCr | LineState::DotCr => self.fail(BodyError::BareLineEnding),
            LineState::Mid | LineState::Dot if self.line_len > 0 => self.end_line(),
            _ => {}
        }
    }

    /// Inside a line: stores bytes up to the next CR or LF. Returns bytes consumed (>= 1).
    fn scan(&mut self, rest: &[u8]) -> usize {
        match memchr2(b'\r', b'\n', rest) {
            Some(k) => {
                self.append(&rest[..k]);
                if rest[k] == b'\r' {
                    self.state = LineState::MidCr;
                } else {
                    // A bare LF is not a line end: the next byte is not at a line start, so
                    // "\n.\n" and "\n.\r\n" can never end the message.
                    self.fail(BodyError::BareLineEnding);
                }
                k + 1
            }
            None => {
                self.append(rest);
                rest.len()
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        self.line_len = self.line_len.saturating_add(bytes.len());
        if self.line_len.saturating_add(2) > self.text_line_max_bytes {
            self.fail(BodyError::LineTooLong);
        }
        self.push(bytes);
    }

    fn end_line(&mut self) {
        self.push(b"\r\n");
        self.line_len = 0;
        self.state = LineState::Start;
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() || bytes.is_empty() {
            return;
        }
        if self.data.len().saturating_add(bytes.len()) > self.size_max_bytes {
            self.fail(BodyError::TooBig);
            return;
        }
        self.data.extend_from_slice(bytes);
    }
}
