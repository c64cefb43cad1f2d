use super::*;

/// RFC 7489 appendix C's shape, with the fields a Google report fills in.
const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>google.com</org_name>
    <email>noreply-dmarc-support@google.com</email>
    <report_id>1234567890123456789</report_id>
    <date_range><begin>1764892800</begin><end>1764979199</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>shop.example</domain><adkim>r</adkim><aspf>r</aspf><p>none</p><sp>none</sp><pct>100</pct>
  </policy_published>
  <record>
    <row>
      <source_ip>192.0.2.10</source_ip><count>12</count>
      <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>fail</spf></policy_evaluated>
    </row>
    <identifiers><header_from>shop.example</header_from></identifiers>
    <auth_results>
      <dkim><domain>shop.example</domain><selector>petrel1</selector><result>pass</result></dkim>
      <spf><domain>b.example</domain><result>softfail</result></spf>
    </auth_results>
  </record>
</feedback>
"#;

#[test]
fn reads_the_rfc_shape() {
    let r = parse_aggregate_xml(REPORT.as_bytes()).unwrap();
    assert_eq!(r.org_name, "google.com");
    assert_eq!(r.report_id, "1234567890123456789");
    assert_eq!((r.date_begin, r.date_end), (1764892800, 1764979199));
    assert_eq!(r.policy.domain, "shop.example");
    assert_eq!(r.policy.p.as_deref(), Some("none"));
    assert_eq!(r.policy.pct, Some(100));
    assert_eq!(r.records.len(), 1);
    let rec = &r.records[0];
    assert_eq!(rec.source_ip, "192.0.2.10".parse::<IpAddr>().unwrap());
    assert_eq!(rec.count, 12);
    assert_eq!(rec.disposition, Disposition::None);
    assert_eq!(
        (rec.dkim, rec.spf),
        (Some(AlignedResult::Pass), Some(AlignedResult::Fail))
    );
    assert_eq!(
        rec.dkim_results[0].selector_or_scope.as_deref(),
        Some("petrel1")
    );
    assert_eq!(rec.spf_results[0].result, "softfail");
}

#[test]
fn namespaces_entities_and_cdata() {
    let xml = REPORT
        .replace(
            "<feedback>",
            r#"<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">"#,
        )
        .replace("<org_name>google.com", "<org_name>A &amp; B &#x43;o.")
        .replace(
            "<report_id>1234567890123456789",
            "<report_id><![CDATA[id-1]]>",
        );
    let r = parse_aggregate_xml(xml.as_bytes()).unwrap();
    assert_eq!(r.org_name, "A & B Co.");
    assert_eq!(r.report_id, "id-1");
    let prefixed = REPORT
        .replace("<feedback>", r#"<d:feedback xmlns:d="urn:x">"#)
        .replace("</feedback>", "</d:feedback>");
    assert_eq!(
        parse_aggregate_xml(prefixed.as_bytes())
            .unwrap()
            .records
            .len(),
        1
    );
}

#[test]
fn refuses_malformed_reports() {
    let cases: [(String, DmarcError); 6] = [
        (
            REPORT.replace("<org_name>google.com</org_name>", ""),
            DmarcError::MissingField("org_name"),
        ),
        (
            REPORT.replace("192.0.2.10", "not-an-ip"),
            DmarcError::BadValue { field: "source_ip" },
        ),
        (
            REPORT.replace("<disposition>none", "<disposition>maybe"),
            DmarcError::BadValue {
                field: "disposition",
            },
        ),
        (
            REPORT.replace("<begin>1764892800", "<begin>yesterday"),
            DmarcError::BadValue {
                field: "date_range/begin",
            },
        ),
        ("<html><body/></html>".into(), DmarcError::NotAFeedback),
        (String::new(), DmarcError::NotAFeedback),
    ];
    for (xml, expected) in cases {
        assert_eq!(parse_aggregate_xml(xml.as_bytes()).unwrap_err(), expected);
    }
    assert!(matches!(
        parse_aggregate_xml(b"<feedback><report_metadata></feedback>"),
        Err(DmarcError::Xml(_))
    ));
}

#[test]
fn bounds_depth_values_and_records() {
    let deep = format!(
        "<feedback>{}{}</feedback>",
        "<x>".repeat(XML_DEPTH_MAX),
        "</x>".repeat(XML_DEPTH_MAX)
    );
    assert_eq!(
        parse_aggregate_xml(deep.as_bytes()).unwrap_err(),
        DmarcError::TooDeep { max: XML_DEPTH_MAX }
    );
    let long = REPORT.replace(
        "google.com</org_name>",
        &format!("{}</org_name>", "g".repeat(VALUE_BYTES_MAX + 1)),
    );
    assert_eq!(
        parse_aggregate_xml(long.as_bytes()).unwrap_err(),
        DmarcError::MissingField("org_name")
    );
    let record = "<record><row><source_ip>192.0.2.1</source_ip><count>1</count>\
                  <policy_evaluated><disposition>none</disposition></policy_evaluated></row>\
                  <identifiers><header_from>a</header_from></identifiers></record>";
    let many = REPORT.replace(
        "</feedback>",
        &format!("{}</feedback>", record.repeat(DMARC_RECORDS_MAX)),
    );
    assert_eq!(
        parse_aggregate_xml(many.as_bytes()).unwrap_err(),
        DmarcError::TooManyRecords {
            max: DMARC_RECORDS_MAX
        }
    );
}

#[test]
fn summary_by_source_and_disposition() {
    let a = parse_aggregate_xml(REPORT.as_bytes()).unwrap();
    let b = parse_aggregate_xml(
        REPORT
            .replace(
                "<dkim>pass</dkim><spf>fail</spf>",
                "<dkim>fail</dkim><spf>fail</spf>",
            )
            .replace("<count>12</count>", "<count>5</count>")
            .as_bytes(),
    )
    .unwrap();
    let c = parse_aggregate_xml(
        REPORT
            .replace("<disposition>none", "<disposition>reject")
            .replace("192.0.2.10", "2001:db8::1")
            .as_bytes(),
    )
    .unwrap();
    assert!(a.records[0].dmarc_pass() && !b.records[0].dmarc_pass());
    let rows = summarise(a.records.iter().chain(&b.records).chain(&c.records));
    let ip4: IpAddr = "192.0.2.10".parse().unwrap();
    let ip6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        rows,
        vec![
            SourceSummary {
                source_ip: ip4,
                disposition: Disposition::None,
                pass: 12,
                fail: 5
            },
            SourceSummary {
                source_ip: ip6,
                disposition: Disposition::Reject,
                pass: 12,
                fail: 0
            },
        ]
    );
}
