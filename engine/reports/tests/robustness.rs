//! No input panics: every sample of the corpus, truncated at many lengths and mutated many ways
//! (deterministically, with a xorshift generator), goes through every parser. A panic fails the
//! test; the results themselves are not checked (most mutants are refused, some still parse).

use std::io::Write;
use std::path::{Path, PathBuf};

use petrel_bounce::BounceClassifier;
use petrel_reports::*;

/// Truncation points per sample (evenly spaced, plus the last 16 lengths).
const TRUNCATIONS_PER_SAMPLE: usize = 48;
/// Mutants per sample.
const MUTANTS_PER_SAMPLE: usize = 120;
/// Edits per mutant, at most.
const EDITS_PER_MUTANT_MAX: u64 = 8;

/// George Marsaglia's xorshift64: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the grammars involved: line ends, separators, MIME and XML syntax.
const INTERESTING: &[u8] = b"\r\n\t :;-<>=\"'&#/[]!?@.0159\x00\xff\xc3";

fn mutate(input: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut out = input.to_vec();
    let edits = 1 + rng.next() % EDITS_PER_MUTANT_MAX;
    for _ in 0..edits {
        let at = rng.below(out.len() + 1);
        match rng.next() % 6 {
            0 if at < out.len() => out[at] = INTERESTING[rng.below(INTERESTING.len())],
            1 if at < out.len() => out[at] = rng.next() as u8,
            2 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 if at < out.len() => {
                out.remove(at);
            }
            4 => {
                // Repeat a chunk: makes boundaries, fields and elements appear twice.
                let len = rng.below(64).min(out.len().saturating_sub(at));
                let chunk: Vec<u8> = out[at..at + len].to_vec();
                out.splice(at..at, chunk);
            }
            _ => {
                let end = (at + rng.below(32)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

fn samples() -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut out = Vec::new();
    for dir in ["bounces", "arf", "dmarc", "not_reports"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    out
}

/// The XML samples packed as gzip and zip, so the decompressors see mutated input too.
fn packed_samples(xml: &[(PathBuf, Vec<u8>)]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for (path, bytes) in xml {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        out.push((path.with_extension("xml.gz"), gz.finish().unwrap()));
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("report.xml", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(bytes).unwrap();
        out.push((
            path.with_extension("zip"),
            zip.finish().unwrap().into_inner(),
        ));
    }
    out
}

/// Feeds one input to every parser; only a panic can fail this.
fn feed(input: &[u8], classifier: &BounceClassifier, keys: &VerpKeys) {
    let _ = parse_dsn(input, classifier);
    let _ = parse_arf(input);
    let _ = parse_aggregate_mail(input);
    let _ = parse_aggregate_attachment(input);
    let _ = parse_report(input, classifier);
    let _ = unsubscribe::from_mail(keys, None, input);
    let head = String::from_utf8_lossy(&input[..input.len().min(300)]);
    for line in head.lines().take(8) {
        let _ = keys.decode_address(line);
        let _ = keys.decode_token(Purpose::OneClick, line);
    }
}

#[test]
fn truncated_and_mutated_samples_never_panic() {
    let classifier = BounceClassifier::shipped();
    let keys = VerpKeys::new(
        VerpKey::new(1, b"petrel-corpus-test-key-0001").unwrap(),
        vec![],
    )
    .unwrap();
    let mut inputs = samples();
    let xml: Vec<(PathBuf, Vec<u8>)> = inputs
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "xml"))
        .cloned()
        .collect();
    inputs.extend(packed_samples(&xml));
    assert!(inputs.len() >= 45, "{}", inputs.len());
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut fed = 0usize;
    for (_path, bytes) in &inputs {
        let step = (bytes.len() / TRUNCATIONS_PER_SAMPLE).max(1);
        let tail = bytes.len().saturating_sub(16)..bytes.len();
        for len in (0..bytes.len()).step_by(step).chain(tail) {
            feed(&bytes[..len], &classifier, &keys);
            fed += 1;
        }
        for _ in 0..MUTANTS_PER_SAMPLE {
            feed(&mutate(bytes, &mut rng), &classifier, &keys);
            fed += 1;
        }
    }
    assert!(fed > inputs.len() * MUTANTS_PER_SAMPLE);
}

#[test]
fn mutated_tokens_are_refused_without_panicking() {
    let keys = VerpKeys::new(VerpKey::new(3, &[9; 32]).unwrap(), vec![]).unwrap();
    let data = TokenData {
        tenant_id: "ten_0123456789abcdef".into(),
        message_id: 7,
        recipient: RecipientRef::Address("someone@example.org".into()),
    };
    let token = keys.one_click_token(&data).unwrap();
    let mut rng = XorShift(42);
    let mut accepted = 0;
    for _ in 0..2000 {
        let m = mutate(token.as_bytes(), &mut rng);
        let s = String::from_utf8_lossy(&m);
        if let Ok(d) = keys.decode_token(Purpose::OneClick, &s) {
            // Only an edit that changes nothing (or just the case) may pass.
            assert_eq!(d, data);
            assert!(s.eq_ignore_ascii_case(&token), "{s}");
            accepted += 1;
        }
    }
    assert!(accepted < 2000);
}
