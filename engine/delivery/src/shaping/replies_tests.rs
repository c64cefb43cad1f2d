//! The shipped throttle rules against real provider replies. Each reply is quoted from a public
//! source (named beside it; most are also rows of `engine/bounce/testdata/bounce-corpus.tsv`),
//! with the addresses replaced by documentation ones, and parsed as the delivery shard sees it
//! (`petrel_bounce::Reply`).

use super::*;

/// (provider the site matched, reply line, expected rule, kind, scope, duration in minutes).
type Case = (
    Option<&'static str>,
    &'static str,
    &'static str,
    ThrottleKind,
    ThrottleScope,
    u64,
);

const SUSPEND: ThrottleKind = ThrottleKind::Suspend;
const NARROW_1: ThrottleKind = ThrottleKind::Narrow { connections_max: 1 };
const NARROW_2: ThrottleKind = ThrottleKind::Narrow { connections_max: 2 };
const SITE: ThrottleScope = ThrottleScope::Site;
const TENANT: ThrottleScope = ThrottleScope::Tenant;

const CASES: &[Case] = &[
    // sisimai set-of-emails lhost-postfix-74.
    (
        Some("yahoo"),
        "421 4.7.0 [TSS04] Messages from 192.0.2.192 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.verizonmedia.com/error-codes",
        "yahoo-tss04", SUSPEND, SITE, 120,
    ),
    // The same text from a host not matched as Yahoo falls to the global rule.
    (
        None,
        "421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "ip-temporarily-deferred", SUSPEND, SITE, 90,
    ),
    // KumoMTA community shaping.toml, Yahoo [TS01].
    (
        Some("yahoo"),
        "421 4.7.0 [TS01] Messages from 192.0.2.7 temporarily deferred due to user complaints - 4.16.55.1; see https://help.yahoo.com/kb/postmaster/SLN3434.html",
        "ip-temporarily-deferred", SUSPEND, SITE, 90,
    ),
    // tamingdns.com Yahoo bounce decoder, [TSS02].
    (
        Some("yahoo"),
        "421 4.7.0 [TSS02] Messages from 198.51.100.1 temporarily deferred due to user complaints or because the IP/domain is in the unverified category. Please make sure that your email is RFC-5321 compliant. ec=ax9 [16]",
        "yahoo-tss02", NARROW_1, SITE, 30,
    ),
    // sisimai Rhost/YahooInc.pm.
    (
        Some("yahoo"),
        "553 5.7.2 [TSS09] All messages from 192.0.2.25 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        "ip-permanently-deferred", SUSPEND, SITE, 90,
    ),
    // sisimai set-of-emails rhost-microsoft-05.
    (
        Some("office365"),
        "451 4.7.650 The mail server [192.0.2.25] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S3113) [5NY1SSJFSTZJRJBG.eurprd02.prod.outlook.com 2024-05-09T23:34:45.000Z GLXTWVLGZHZNHVXY]",
        "rate-limited-ip-reputation", SUSPEND, SITE, 90,
    ),
    // ActiveCampaign smtp-field-manual 451.json (Outlook).
    (
        Some("outlook"),
        "451 4.7.651 The mail server [198.51.100.9] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S3114) [x.prod.outlook.com]",
        "rate-limited-ip-reputation", SUSPEND, SITE, 90,
    ),
    // sisimai go-sisimai rhost/for-microsoft.go.
    (
        Some("outlook"),
        "451 4.7.652 The mail server [192.0.2.251] has exceeded the maximum number of connections. (S3115) [Name=Protocol Filter Agent][AGT=PFA][MxId=11BA9B3FA168ABBF]",
        "max-connections-exceeded", NARROW_1, SITE, 60,
    ),
    // ActiveCampaign smtp-field-manual 550.json (Outlook).
    (
        Some("outlook"),
        "550 5.7.1 Unfortunately, messages from [198.51.100.9] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        "ip-on-block-list", SUSPEND, SITE, 90,
    ),
    // KumoMTA's default automation ("Server busy. Please try again later from").
    (
        Some("outlook"),
        "451 4.7.500 Server busy. Please try again later from [192.0.2.44]. (S77719) [x.prod.protection.outlook.com]",
        "server-busy", SUSPEND, SITE, 30,
    ),
    // ActiveCampaign smtp-field-manual 421.json (Google).
    (
        Some("google"),
        "421 4.7.28 [192.0.2.3] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. - gsmtp",
        "gmail-ip-rate-limited", SUSPEND, SITE, 30,
    ),
    // mailop archive msg20199 (continuation prefixes joined).
    (
        Some("google"),
        "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail. To protect our users from spam, mail has been temporarily rate limited. Please visit to review our Bulk Email Senders Guidelines. m17si295017vso.199 - gsmtp",
        "gmail-ip-rate-limited", SUSPEND, SITE, 30,
    ),
    // Gmail's DKIM-domain variant, as reported on Email Geeks (suped.com summary).
    (
        Some("google"),
        "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your DKIM domain [example.com 15]. To protect our users from spam, mail sent from your domain has been temporarily rate limited. - gsmtp",
        "gmail-domain-rate-limited", SUSPEND, TENANT, 30,
    ),
    // sisimai Rhost/Google.pm.
    (
        Some("google"),
        "421 4.7.0 This message is suspicious due to the very low reputation of the sending IP address/domain. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. For more information, go to Why has Gmail blocked my messages?. https://support.google.com/mail/answer/188131",
        "gmail-ip-reputation", SUSPEND, SITE, 60,
    ),
    // ActiveCampaign smtp-field-manual 421.json (Google).
    (
        Some("google"),
        "421 4.7.0 [192.0.2.3] Our system has detected that this message is suspicious due to the very low reputation of the sending domain. To best protect our users from spam, the message has been blocked. Please visit https://support.google.com/mail/answer/188131 for more information. - gsmtp",
        "gmail-domain-reputation", SUSPEND, TENANT, 60,
    ),
    // sisimai Rhost/Google.pm.
    (
        Some("google"),
        "421 4.7.0 Try again later, closing connection. This usually indicates a Denial of Service (DoS) for the SMTP relay at the HELO stage.",
        "421-try-again-later", NARROW_2, SITE, 10,
    ),
    // sisimai Rhost/Apple.pm.
    (
        Some("apple"),
        "421 4.7.1 Messages to someone@icloud.com deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137",
        "apple-excessive-volume", SUSPEND, SITE, 15,
    ),
    // ActiveCampaign smtp-field-manual 451.json (Apple).
    (
        Some("apple"),
        "451 4.7.1 Service unavailable - try again later",
        "apple-deferred", SUSPEND, SITE, 15,
    ),
    // sisimai Rhost/FrancePTT.pm.
    (
        Some("orange"),
        "421 mwinf5c79 ME Trop de connexions, veuillez verifier votre configuration.",
        "orange-too-many-connections", NARROW_1, SITE, 60,
    ),
    // sisimai set-of-emails rhost-tencent-01 and -02.
    (
        Some("qq"),
        "550 Ip frequency limited [V2VkIEFwciAgMyAxNjozNjo1OSBKU1QgMjAxOQo=/RkNGMjlFQTVEQ0E Blocked IP 192.0.2.22]. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000725",
        "qq-frequency-limited", SUSPEND, SITE, 60,
    ),
    (
        Some("qq"),
        "550 Connection frequency limited [Q1YzZ3kxdnRYYnpkbVZ0MAo+QTMzMTMzRjUxNzQ4Cg/MTI3MTY2MDge= Blocked IP 192.0.2.22]. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000722",
        "qq-frequency-limited", SUSPEND, SITE, 60,
    ),
    // sisimai Rhost/GoDaddy.pm.
    (
        None,
        "421 Connection refused, too many sessions from This IP. Lower the number of concurrent sessions. IB007",
        "too-many-connections", NARROW_2, SITE, 10,
    ),
    (
        None,
        "421 Server temporarily unavailable. Try again later. IB101",
        "421-try-again-later", NARROW_2, SITE, 10,
    ),
    // Postfix's smtpd (anvil connection count), and Exim's smtp_accept_max_per_host.
    (
        None,
        "421 4.7.0 mx.example.net Error: too many connections from 192.0.2.1",
        "too-many-connections", NARROW_2, SITE, 10,
    ),
    (
        None,
        "421 Too many concurrent SMTP connections from this IP address; please try again later.",
        "too-many-connections", NARROW_2, SITE, 10,
    ),
];

/// Replies that must not throttle a site: they are about one recipient or one message.
const UNTHROTTLED: &[(Option<&str>, &str)] = &[
    // sisimai Rhost/Google.pm: a per-message quota, not the sender's rate.
    (
        Some("google"),
        "421 4.7.28 Gmail has detected this message exceeded its quota for sending messages with the same Message-ID:. To best protect our users, the message has been temporarily rejected.",
    ),
    (
        Some("google"),
        "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
    ),
    // ActiveCampaign smtp-field-manual 554.json (Outlook): one recipient's hourly limit.
    (
        Some("outlook"),
        "554 5.2.122 The recipient has exceeded their limit for the number of messages they can receive per hour.",
    ),
    // sisimai lhost-postfix-63.
    (
        None,
        "552 5.2.2 <neko@nyaaan.example.org> Quota exceeded (mailbox for user is full)",
    ),
    // A 451 "try again later" is a transient failure, not a request to slow down.
    (
        None,
        "451 4.3.0 This message could not be delivered due to a recipient error. Please try again later.",
    ),
];

#[test]
fn real_replies_get_the_expected_action() {
    let s = Shaping::shipped();
    assert!(CASES.len() >= 15);
    for (provider, line, rule, kind, scope, minutes) in CASES {
        let id = provider.map(|p| s.provider_named(p).expect("a shipped provider"));
        let reply = petrel_bounce::Reply::parse(line).expect("a reply line");
        let got = s
            .throttle_reply(id, &reply)
            .unwrap_or_else(|| panic!("no rule for {line}"));
        assert_eq!(s.rule_name(got.rule), *rule, "{line}");
        assert_eq!(
            (got.kind, got.scope, got.duration_ms),
            (*kind, *scope, minutes * 60_000),
            "{line}"
        );
        // The string form of the enhanced code decides the same.
        let enhanced = reply.enhanced.map(|(c, s, d)| format!("{c}.{s}.{d}"));
        let by_str = s.throttle(id, reply.code, enhanced.as_deref(), reply.text);
        assert_eq!(by_str, Some(got), "{line}");
    }
}

#[test]
fn replies_about_one_recipient_or_message_throttle_nothing() {
    let s = Shaping::shipped();
    for (provider, line) in UNTHROTTLED {
        let id = provider.map(|p| s.provider_named(p).expect("a shipped provider"));
        let reply = petrel_bounce::Reply::parse(line).expect("a reply line");
        assert_eq!(s.throttle_reply(id, &reply), None, "{line}");
    }
}
