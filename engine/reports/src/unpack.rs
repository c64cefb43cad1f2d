//! Unpacking a DMARC aggregate attachment: gzip, zip (stored or deflate) or plain XML, with
//! bounds that stop a decompression bomb before its output is allocated.
//!
//! Every decompressor is read through `Read::take(cap + 1)`, where the cap is the smaller of
//! [`DMARC_XML_BYTES_MAX`] and the compressed size times [`DMARC_COMPRESSION_RATIO_MAX`] (but at
//! least [`DMARC_RATIO_FLOOR_BYTES`]); reading one byte past the cap is the refusal. So a 10 KiB
//! gzip that inflates to 10 GiB costs at most the cap in memory and the time to inflate the cap.
//!
//! Zip archives are checked before the `zip` crate reads them: the end-of-central-directory
//! records may declare at most [`ZIP_ENTRIES_MAX`] entries, and Zip64 is refused (a report zip is
//! a few KiB with one file), because the crate sizes its entry table from the declared count.
//! A four-byte Zip64 signature can also occur by chance inside compressed data; such a zip is
//! refused too (about one in 10^4 for a 100 KiB report), which errs on the safe side.

use std::io::{Cursor, Read};

use zip::CompressionMethod;

use crate::limits::{
    DMARC_COMPRESSED_BYTES_MAX, DMARC_COMPRESSION_RATIO_MAX, DMARC_RATIO_FLOOR_BYTES,
    DMARC_XML_BYTES_MAX, ZIP_ENTRIES_MAX,
};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZIP_LOCAL_MAGIC: &[u8] = b"PK\x03\x04";
const ZIP_EOCD_MAGIC: &[u8] = b"PK\x05\x06";
const ZIP64_EOCD_MAGIC: &[u8] = b"PK\x06\x06";
const ZIP64_LOCATOR_MAGIC: &[u8] = b"PK\x06\x07";
/// Offset of "total entries in the central directory" in an EOCD record.
const EOCD_TOTAL_ENTRIES_OFFSET: usize = 10;

/// How an attachment was packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Gzip,
    Zip,
    Xml,
}

/// Why an attachment could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("attachment of {bytes} bytes is over the {max} accepted")]
    CompressedTooLarge { bytes: usize, max: usize },
    #[error("decompressed report is over {max} bytes")]
    DecompressedTooLarge { max: usize },
    #[error("decompressed report is over {max} times its compressed size")]
    RatioTooHigh { max: usize },
    #[error("zip declares {entries} entries; at most {max} are accepted")]
    TooManyEntries { entries: usize, max: usize },
    #[error("zip64 archives are not accepted")]
    Zip64,
    #[error("zip entry compressed with {0}; only stored and deflate are accepted")]
    UnsupportedMethod(String),
    #[error("the zip holds no file")]
    EmptyZip,
    #[error("corrupt {0} data")]
    Corrupt(&'static str),
    #[error("neither gzip, zip nor XML")]
    UnknownPacking,
}

/// Recognises the packing by its magic bytes (an XML report starts with `<`, after an optional
/// byte-order mark and whitespace).
pub fn sniff(bytes: &[u8]) -> Option<Packing> {
    if bytes.starts_with(GZIP_MAGIC) {
        return Some(Packing::Gzip);
    }
    if bytes.starts_with(ZIP_LOCAL_MAGIC) {
        return Some(Packing::Zip);
    }
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let first = text.iter().find(|b| !b.is_ascii_whitespace())?;
    (*first == b'<').then_some(Packing::Xml)
}

/// Unpacks an attachment to its XML bytes, within the bounds of the module docs.
pub fn unpack(bytes: &[u8]) -> Result<Vec<u8>, UnpackError> {
    if bytes.len() > DMARC_COMPRESSED_BYTES_MAX {
        return Err(UnpackError::CompressedTooLarge {
            bytes: bytes.len(),
            max: DMARC_COMPRESSED_BYTES_MAX,
        });
    }
    match sniff(bytes).ok_or(UnpackError::UnknownPacking)? {
        Packing::Gzip => read_capped(flate2::read::GzDecoder::new(bytes), bytes.len(), "gzip"),
        Packing::Zip => unzip(bytes),
        Packing::Xml => {
            if bytes.len() > DMARC_XML_BYTES_MAX {
                return Err(UnpackError::DecompressedTooLarge {
                    max: DMARC_XML_BYTES_MAX,
                });
            }
            Ok(bytes.to_vec())
        }
    }
}

/// The first file of a zip (directories skipped), stored or deflated.
fn unzip(bytes: &[u8]) -> Result<Vec<u8>, UnpackError> {
    check_zip_directory(bytes)?;
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|_| UnpackError::Corrupt("zip"))?;
    if archive.len() > ZIP_ENTRIES_MAX {
        return Err(UnpackError::TooManyEntries {
            entries: archive.len(),
            max: ZIP_ENTRIES_MAX,
        });
    }
    for i in 0..archive.len() {
        let file = archive
            .by_index(i)
            .map_err(|_| UnpackError::Corrupt("zip"))?;
        if file.is_dir() {
            continue;
        }
        match file.compression() {
            CompressionMethod::Stored | CompressionMethod::Deflated => {}
            other => return Err(UnpackError::UnsupportedMethod(format!("{other:?}"))),
        }
        if file.size() > DMARC_XML_BYTES_MAX as u64 {
            return Err(UnpackError::DecompressedTooLarge {
                max: DMARC_XML_BYTES_MAX,
            });
        }
        // The declared compressed size is the attacker's word; the archive's length is not.
        let compressed = usize::try_from(file.compressed_size())
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        return read_capped(file, compressed, "zip");
    }
    Err(UnpackError::EmptyZip)
}

/// Refuses Zip64 and any end-of-central-directory record declaring too many entries.
fn check_zip_directory(bytes: &[u8]) -> Result<(), UnpackError> {
    if find_all(bytes, ZIP64_EOCD_MAGIC).next().is_some()
        || find_all(bytes, ZIP64_LOCATOR_MAGIC).next().is_some()
    {
        return Err(UnpackError::Zip64);
    }
    for at in find_all(bytes, ZIP_EOCD_MAGIC) {
        let field = bytes.get(at + EOCD_TOTAL_ENTRIES_OFFSET..at + EOCD_TOTAL_ENTRIES_OFFSET + 2);
        if let Some(&[lo, hi]) = field {
            let entries = usize::from(u16::from_le_bytes([lo, hi]));
            if entries > ZIP_ENTRIES_MAX {
                return Err(UnpackError::TooManyEntries {
                    entries,
                    max: ZIP_ENTRIES_MAX,
                });
            }
        }
    }
    Ok(())
}

fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// Reads a decompressor to its end, refusing output past the cap for `compressed_bytes`.
fn read_capped(
    reader: impl Read,
    compressed_bytes: usize,
    format: &'static str,
) -> Result<Vec<u8>, UnpackError> {
    let by_ratio = compressed_bytes
        .saturating_mul(DMARC_COMPRESSION_RATIO_MAX)
        .max(DMARC_RATIO_FLOOR_BYTES);
    let cap = by_ratio.min(DMARC_XML_BYTES_MAX);
    let mut out = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| UnpackError::Corrupt(format))?;
    if out.len() > cap {
        return Err(if by_ratio < DMARC_XML_BYTES_MAX {
            UnpackError::RatioTooHigh {
                max: DMARC_COMPRESSION_RATIO_MAX,
            }
        } else {
            UnpackError::DecompressedTooLarge {
                max: DMARC_XML_BYTES_MAX,
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
