use std::io::Write;

use super::*;

const XML: &[u8] = b"<?xml version=\"1.0\"?><feedback><report_metadata/></feedback>";

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(crate) fn zip_of(files: &[(&str, &[u8])], method: CompressionMethod) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in files {
        w.start_file(*name, options).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn sniffs_and_unpacks_each_packing() {
    assert_eq!(sniff(XML), Some(Packing::Xml));
    assert_eq!(sniff(b"\xef\xbb\xbf\n <feedback/>"), Some(Packing::Xml));
    assert_eq!(sniff(b"hello"), None);
    assert_eq!(sniff(b""), None);
    assert_eq!(unpack(XML).unwrap(), XML);
    let gz = gzip(XML);
    assert_eq!(sniff(&gz), Some(Packing::Gzip));
    assert_eq!(unpack(&gz).unwrap(), XML);
    for method in [CompressionMethod::Deflated, CompressionMethod::Stored] {
        let z = zip_of(&[("report.xml", XML)], method);
        assert_eq!(sniff(&z), Some(Packing::Zip));
        assert_eq!(unpack(&z).unwrap(), XML);
    }
    assert_eq!(unpack(b"hello"), Err(UnpackError::UnknownPacking));
}

#[test]
fn a_gzip_bomb_is_refused_by_ratio() {
    // 20 MiB of zeros deflate to about 20 KiB: a ratio near 1000.
    let bomb = gzip(&vec![0u8; 20 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    assert_eq!(
        unpack(&bomb),
        Err(UnpackError::RatioTooHigh {
            max: DMARC_COMPRESSION_RATIO_MAX
        })
    );
}

#[test]
fn a_zip_bomb_is_refused() {
    // Declares its true size (over the cap): refused from the directory.
    let big = zip_of(
        &[("report.xml", &vec![b'a'; DMARC_XML_BYTES_MAX + 1])],
        CompressionMethod::Deflated,
    );
    assert_eq!(
        unpack(&big),
        Err(UnpackError::DecompressedTooLarge {
            max: DMARC_XML_BYTES_MAX
        })
    );
    // Under the size cap but a ratio near 1000: refused while inflating.
    let dense = zip_of(
        &[("report.xml", &vec![0u8; 8 * 1024 * 1024])],
        CompressionMethod::Deflated,
    );
    assert_eq!(
        unpack(&dense),
        Err(UnpackError::RatioTooHigh {
            max: DMARC_COMPRESSION_RATIO_MAX
        })
    );
    // Many entries (the classic 42.zip shape is nested many-entry archives).
    let files: Vec<(String, Vec<u8>)> = (0..ZIP_ENTRIES_MAX + 1)
        .map(|i| (format!("r{i}.xml"), XML.to_vec()))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    assert_eq!(
        unpack(&zip_of(&refs, CompressionMethod::Deflated)),
        Err(UnpackError::TooManyEntries {
            entries: ZIP_ENTRIES_MAX + 1,
            max: ZIP_ENTRIES_MAX
        })
    );
}

#[test]
fn the_cap_applies_to_any_reader() {
    let plenty = vec![b'x'; DMARC_XML_BYTES_MAX + 1];
    assert_eq!(
        read_capped(&plenty[..], DMARC_COMPRESSED_BYTES_MAX, "test"),
        Err(UnpackError::DecompressedTooLarge {
            max: DMARC_XML_BYTES_MAX
        })
    );
    let floor = vec![b'x'; DMARC_RATIO_FLOOR_BYTES];
    assert_eq!(
        read_capped(&floor[..], 1, "test").unwrap().len(),
        floor.len()
    );
    let over_floor = vec![b'x'; DMARC_RATIO_FLOOR_BYTES + 1];
    assert!(matches!(
        read_capped(&over_floor[..], 1, "test"),
        Err(UnpackError::RatioTooHigh { .. })
    ));
}

#[test]
fn corrupt_and_odd_archives() {
    let gz = gzip(XML);
    assert_eq!(
        unpack(&gz[..gz.len() / 2]),
        Err(UnpackError::Corrupt("gzip"))
    );
    let z = zip_of(&[("report.xml", XML)], CompressionMethod::Deflated);
    assert_eq!(unpack(&z[..z.len() - 10]), Err(UnpackError::Corrupt("zip")));
    let mut z64 = z.clone();
    z64.extend_from_slice(ZIP64_LOCATOR_MAGIC);
    assert_eq!(unpack(&z64), Err(UnpackError::Zip64));
    let empty = zip_of(&[], CompressionMethod::Deflated);
    // An empty archive has no local header, so it is not even sniffed as a zip.
    assert_eq!(unpack(&empty), Err(UnpackError::UnknownPacking));
    let huge = vec![0x1f; DMARC_COMPRESSED_BYTES_MAX + 1];
    assert!(matches!(
        unpack(&huge),
        Err(UnpackError::CompressedTooLarge { .. })
    ));
}
