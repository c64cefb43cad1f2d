//! Decompression bombs are refused without allocating their output: the peak resident memory
//! of this process (Linux `VmHWM`) grows by far less than the bomb would inflate to.
//!
//! This is its own test binary with one test, so no other test allocates in the same process
//! while the peak is measured. The bombs are built by streaming zeros into the compressor in
//! small chunks, so building them does not raise the peak either.

use std::io::Write;

use petrel_reports::limits::{DMARC_COMPRESSION_RATIO_MAX, DMARC_XML_BYTES_MAX};
use petrel_reports::unpack::{unpack, UnpackError};

/// What each bomb would inflate to.
const BOMB_BYTES: usize = 48 * 1024 * 1024;
/// The most the peak may grow while a bomb is refused: the ratio cap of a bomb this size
/// (about 50 KiB compressed, so 5 MiB at 100:1) plus allocator slack.
const PEAK_GROWTH_BYTES_MAX: usize = 8 * 1024 * 1024;
const CHUNK_BYTES: usize = 64 * 1024;
const _: () = assert!(
    PEAK_GROWTH_BYTES_MAX < DMARC_XML_BYTES_MAX,
    "the bound must be tighter than the output cap, or the test proves nothing about streaming"
);

/// Peak resident set size of this process, in bytes.
fn peak_rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

fn stream_zeros(mut w: impl Write, bytes: usize) {
    let chunk = [0u8; CHUNK_BYTES];
    for _ in 0..bytes / CHUNK_BYTES {
        w.write_all(&chunk).unwrap();
    }
}

#[test]
fn bombs_are_refused_without_allocating_their_output() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    stream_zeros(&mut gz, BOMB_BYTES);
    let gzip_bomb = gz.finish().unwrap();

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    zip.start_file("report.xml", options).unwrap();
    // Under the declared-size cap, so the refusal comes from the bounded reader, not the
    // directory: 9 MiB of zeros.
    stream_zeros(&mut zip, 9 * 1024 * 1024);
    let zip_bomb = zip.finish().unwrap().into_inner();

    let before = peak_rss_bytes();
    assert_eq!(
        unpack(&gzip_bomb),
        Err(UnpackError::RatioTooHigh {
            max: DMARC_COMPRESSION_RATIO_MAX
        })
    );
    assert_eq!(
        unpack(&zip_bomb),
        Err(UnpackError::RatioTooHigh {
            max: DMARC_COMPRESSION_RATIO_MAX
        })
    );
    let growth = peak_rss_bytes().saturating_sub(before);
    println!("peak RSS grew by {growth} bytes refusing bombs of {BOMB_BYTES} and 9 MiB");
    assert!(
        growth < PEAK_GROWTH_BYTES_MAX,
        "peak grew by {growth} bytes refusing bombs of {BOMB_BYTES}"
    );
}
