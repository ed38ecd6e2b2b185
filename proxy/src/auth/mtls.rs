//! Identity from a verified TLS client certificate.
//!
//! Like Kafka's `ssl.principal.mapping.rules`, an ordered list of rules maps
//! the certificate to a principal name: the first rule whose pattern matches
//! wins. A rule reads either the subject distinguished name, written as
//! RFC 2253 text the way Java (and so Kafka) writes it
//! (`CN=billing,OU=Payments,O=Acme,C=US`), or one kind of subject alternative
//! name (DNS, email, URI). The pattern must match the whole text; the name is
//! built from its capture groups (`$1`, `${name}`), optionally lower- or
//! upper-cased. The `default` rule takes the whole subject DN. With no rules
//! at all, `default` applies; when rules exist and none matches, the client
//! is refused rather than given a guessed name.
//!
//! The TLS layer verifies the certificate chain; this module only reads the
//! leaf certificate it is given.

use regex::Regex;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use x509_parser::asn1_rs::ToDer;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use super::principal::{AuthMethod, Identity, PrincipalType};

/// mTLS identity settings of a listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// Mapping rules, tried in order.
    #[serde(default)]
    pub rules: Vec<MtlsRule>,
}

/// Which part of the certificate a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchSource {
    /// The subject DN as RFC 2253 text.
    Subject,
    /// Each DNS subject alternative name, in certificate order.
    SanDns,
    /// Each email (rfc822Name) subject alternative name.
    SanEmail,
    /// Each URI subject alternative name (e.g. SPIFFE IDs).
    SanUri,
    /// Kafka's `DEFAULT`: the whole subject DN, no pattern.
    Default,
}

/// Letter case applied to the mapped name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Case {
    /// As matched.
    #[default]
    Keep,
    /// Lower-cased (Kafka's `/L`).
    Lower,
    /// Upper-cased (Kafka's `/U`).
    Upper,
}

/// One mapping rule as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsRule {
    /// What to match against.
    #[serde(rename = "match")]
    pub source: MatchSource,
    /// Regular expression that must match the whole text (not for `default`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Name template with capture references (`$1`, `${1}`); `$0` by default.
    #[serde(default)]
    pub name: Option<String>,
    /// Case conversion of the name.
    #[serde(default)]
    pub case: Case,
    /// Principal type given to matching clients.
    #[serde(default)]
    pub principal_type: PrincipalType,
    /// Groups given to matching clients; templates like `name`.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A rule list that cannot be used, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct MtlsConfigError {
    /// The configuration key, relative to the mTLS block (`rules[1].pattern`).
    pub key: String,
    /// Why.
    pub message: String,
}

/// Why a certificate could not be mapped to an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MtlsError {
    /// The certificate is not parseable X.509 DER.
    #[error("client certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// No rule matched; the subject is given for the operator's log.
    #[error("no mTLS principal mapping rule matches client certificate `{0}`")]
    NoRuleMatched(String),
}

struct CompiledRule {
    source: MatchSource,
    regex: Option<Regex>,
    name: String,
    case: Case,
    principal_type: PrincipalType,
    groups: Vec<String>,
}

/// Compiled mapping rules.
pub struct MtlsMapper {
    rules: Vec<CompiledRule>,
}

impl std::fmt::Debug for MtlsMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsMapper")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// What the rules can read from a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// Subject DN, RFC 2253.
    pub subject: String,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// Email SANs.
    pub emails: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
}

impl MtlsMapper {
    /// Compiles and checks the rules.
    pub fn new(cfg: &MtlsConfig) -> Result<Self, MtlsConfigError> {
        let mut rules = Vec::with_capacity(cfg.rules.len().max(1));
        for (i, r) in cfg.rules.iter().enumerate() {
            let err = |field: &str, message: String| MtlsConfigError {
                key: format!("rules[{i}].{field}"),
                message,
            };
            let regex = match (r.source, &r.pattern) {
                (MatchSource::Default, Some(_)) => {
                    return Err(err(
                        "pattern",
                        "a `default` rule takes the whole subject and has no pattern".into(),
                    ))
                }
                (MatchSource::Default, None) => None,
                (_, None) => return Err(err("pattern", "required for this rule".into())),
                (_, Some(p)) => Some(
                    // Anchored: like Kafka, the pattern must match the whole text.
                    Regex::new(&format!("^(?:{p})$"))
                        .map_err(|e| err("pattern", format!("invalid regular expression: {e}")))?,
                ),
            };
            if r.source == MatchSource::Default && r.name.is_some() {
                return Err(err(
                    "name",
                    "a `default` rule always uses the whole subject".into(),
                ));
            }
            let name = r.name.clone().unwrap_or_else(|| "$0".into());
            if let Some(re) = &regex {
                for (field, template) in std::iter::once(("name".to_string(), &name)).chain(
                    r.groups
                        .iter()
                        .enumerate()
                        .map(|(g, t)| (format!("groups[{g}]"), t)),
                ) {
                    check_template(re, template).map_err(|m| err(&field, m))?;
                }
            }
            rules.push(CompiledRule {
                source: r.source,
                regex,
                name,
                case: r.case,
                principal_type: r.principal_type,
                groups: r.groups.clone(),
            });
        }
        if rules.is_empty() {
            rules.push(CompiledRule {
                source: MatchSource::Default,
                regex: None,
                name: "$0".into(),
                case: Case::Keep,
                principal_type: PrincipalType::User,
                groups: Vec::new(),
            });
        }
        Ok(Self { rules })
    }

    /// Maps a DER certificate to an identity.
    pub fn map(&self, cert: &CertificateDer<'_>) -> Result<Identity, MtlsError> {
        self.map_names(&cert_names(cert)?)
    }

    /// Maps already extracted names to an identity.
    pub fn map_names(&self, names: &CertNames) -> Result<Identity, MtlsError> {
        for rule in &self.rules {
            let candidates: &[String] = match rule.source {
                MatchSource::Subject | MatchSource::Default => std::slice::from_ref(&names.subject),
                MatchSource::SanDns => &names.dns,
                MatchSource::SanEmail => &names.emails,
                MatchSource::SanUri => &names.uris,
            };
            for text in candidates {
                let (name, groups) = match &rule.regex {
                    None => (text.clone(), rule.groups.clone()),
                    Some(re) => {
                        let Some(caps) = re.captures(text) else {
                            continue;
                        };
                        let expand = |t: &str| {
                            let mut out = String::new();
                            caps.expand(t, &mut out);
                            out
                        };
                        let groups = rule
                            .groups
                            .iter()
                            .map(|g| expand(g))
                            .filter(|g| !g.is_empty())
                            .collect();
                        (expand(&rule.name), groups)
                    }
                };
                // An empty name would be a principal nobody can write policy
                // for; try the next candidate or rule instead.
                if name.is_empty() {
                    continue;
                }
                let name = match rule.case {
                    Case::Keep => name,
                    Case::Lower => name.to_lowercase(),
                    Case::Upper => name.to_uppercase(),
                };
                return Ok(Identity {
                    principal_type: rule.principal_type,
                    name,
                    groups,
                    method: AuthMethod::Mtls,
                });
            }
        }
        Err(MtlsError::NoRuleMatched(names.subject.clone()))
    }
}

/// Rejects templates naming a capture group the pattern does not have.
fn check_template(re: &Regex, template: &str) -> Result<(), String> {
    let names: Vec<&str> = re.capture_names().flatten().collect();
    let count = re.captures_len();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let (reference, after) = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(end) => (&r[..end], &r[end + 1..]),
                None => return Err("unclosed `${`".into()),
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let ok = match reference.parse::<usize>() {
            Ok(n) => n < count,
            Err(_) => names.contains(&reference),
        };
        if !ok {
            return Err(format!(
                "`${reference}` is not a capture group of the pattern (write `${{1}}x` to put text right after `$1`)"
            ));
        }
        rest = after;
    }
    Ok(())
}

/// Reads the subject (RFC 2253) and SANs of a DER certificate.
pub fn cert_names(cert: &CertificateDer<'_>) -> Result<CertNames, MtlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| MtlsError::BadCertificate(e.to_string()))?;
    let mut names = CertNames {
        subject: rfc2253(parsed.subject()),
        ..CertNames::default()
    };
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| MtlsError::BadCertificate(format!("subject alternative names: {e}")))?;
    if let Some(san) = san {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(d) => names.dns.push((*d).to_string()),
                GeneralName::RFC822Name(e) => names.emails.push((*e).to_string()),
                GeneralName::URI(u) => names.uris.push((*u).to_string()),
                _ => {}
            }
        }
    }
    Ok(names)
}

/// RFC 2253 text of a name, as Java's `X500Principal.getName()` writes it:
/// last RDN first, `,` between RDNs, `+` inside one, short names only for
/// RFC 2253's keywords and dotted OIDs with `#`-hex DER values otherwise.
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| rdn.iter().map(attribute_2253).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn keyword(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn attribute_2253(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type().to_id_string();
    let value = attr.attr_value();
    let text = keyword(&oid).and_then(|_| match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::TeletexString => std::str::from_utf8(value.data).ok().map(str::to_string),
        Tag::BmpString => {
            let units: Vec<u16> = value
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    });
    match (keyword(&oid), text) {
        (Some(k), Some(t)) => format!("{k}={}", escape_2253(&t)),
        _ => {
            let der = value.to_der_vec().unwrap_or_default();
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            format!("{oid}=#{hex}")
        }
    }
}

/// RFC 2253 §2.4 escaping.
fn escape_2253(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BILLING: &[u8] = include_bytes!("testdata/client-billing.der");
    const MULTI: &[u8] = include_bytes!("testdata/client-multi-rdn.der");

    fn mapper(yaml: &str) -> MtlsMapper {
        let cfg: MtlsConfig = serde_yaml_ng::from_str(yaml).expect("yaml");
        MtlsMapper::new(&cfg).expect("rules")
    }

    fn billing() -> CertificateDer<'static> {
        CertificateDer::from(BILLING.to_vec())
    }

    #[test]
    fn reads_subject_and_sans() {
        let n = cert_names(&billing()).expect("names");
        assert_eq!(n.subject, "CN=billing-svc,OU=Payments,O=Acme,C=US");
        assert_eq!(n.dns, ["billing.acme.internal", "billing"]);
        assert_eq!(n.emails, ["ops@acme.example"]);
        assert_eq!(n.uris, ["spiffe://acme.example/ns/pay/sa/billing"]);
    }

    #[test]
    fn rfc2253_multi_valued_escaped_and_unknown_attributes() {
        let n = cert_names(&CertificateDer::from(MULTI.to_vec())).expect("names");
        // emailAddress is not an RFC 2253 keyword: dotted OID and hex DER
        // (IA5String tag 0x16), as Java writes it.
        let email_hex: String = b"j@acme.example"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let expected_tail = ",O=Acme\\, Inc.,DC=com,DC=example";
        assert!(
            n.subject
                .starts_with(&format!("1.2.840.113549.1.9.1=#160e{email_hex},")),
            "{}",
            n.subject
        );
        assert!(n.subject.ends_with(expected_tail), "{}", n.subject);
        assert!(
            n.subject.contains("UID=jsmith+CN=Smith") || n.subject.contains("CN=Smith+UID=jsmith"),
            "{}",
            n.subject
        );
    }

    #[test]
    fn default_is_the_full_dn() {
        let id = mapper("rules: []").map(&billing()).expect("map");
        assert_eq!(id.name, "CN=billing-svc,OU=Payments,O=Acme,C=US");
        assert_eq!(id.method, AuthMethod::Mtls);
        assert_eq!(id.principal_type, PrincipalType::User);
    }

    #[test]
    fn first_matching_rule_wins_with_captures_case_and_groups() {
        let m = mapper(
            r#"
rules:
  - match: subject
    pattern: 'CN=([^,]+),OU=Marketing,.*'
    name: 'marketing-$1'
  - match: subject
    pattern: 'CN=([^,]+),OU=([^,]+),O=Acme,C=US'
    name: '${1}@$2'
    case: upper
    principal_type: service_account
    groups: ['team-$2', 'acme']
  - match: default
"#,
        );
        let id = m.map(&billing()).expect("map");
        assert_eq!(id.name, "BILLING-SVC@PAYMENTS");
        assert_eq!(id.principal_type, PrincipalType::ServiceAccount);
        assert_eq!(id.groups, ["team-Payments", "acme"]);
    }

    #[test]
    fn rule_order_decides() {
        let yaml = |first: &str, second: &str| {
            format!(
                "rules:\n  - {{ match: san_uri, pattern: 'spiffe://acme.example/ns/([^/]+)/sa/(.+)', name: '{first}' }}\n  - {{ match: san_dns, pattern: '([a-z]+)\\.acme\\.internal', name: '{second}' }}\n"
            )
        };
        assert_eq!(
            mapper(&yaml("$2", "$1")).map(&billing()).expect("m").name,
            "billing"
        );
        let swapped = "rules:\n  - { match: san_dns, pattern: '(.+)', name: 'dns:$1' }\n  - { match: san_uri, pattern: '(.+)', name: 'uri:$1' }\n";
        // The first DNS SAN in certificate order is used.
        assert_eq!(
            mapper(swapped).map(&billing()).expect("m").name,
            "dns:billing.acme.internal"
        );
        let email = "rules:\n  - { match: san_email, pattern: '([^@]+)@acme\\.example', case: upper, name: '$1' }\n";
        assert_eq!(mapper(email).map(&billing()).expect("m").name, "OPS");
    }

    #[test]
    fn patterns_must_match_whole_text_and_no_match_is_refused() {
        // Unanchored `billing` would match inside the DN; Kafka requires a full match.
        let m = mapper("rules:\n  - { match: subject, pattern: 'billing', name: x }\n");
        assert_eq!(
            m.map(&billing()),
            Err(MtlsError::NoRuleMatched(
                "CN=billing-svc,OU=Payments,O=Acme,C=US".into()
            ))
        );
        // A rule producing an empty name falls through to the next.
        let m = mapper(
            "rules:\n  - { match: subject, pattern: 'CN=([0-9]*).*', name: '$1' }\n  - { match: default }\n",
        );
        let id = m.map(&billing()).expect("map");
        assert_eq!(id.name, "CN=billing-svc,OU=Payments,O=Acme,C=US");
    }

    #[test]
    fn bad_rules_name_the_key() {
        let err = |yaml: &str| {
            let cfg: MtlsConfig = serde_yaml_ng::from_str(yaml).expect("yaml");
            MtlsMapper::new(&cfg).expect_err("should fail")
        };
        assert_eq!(
            err("rules:\n  - { match: subject, pattern: '(' }\n").key,
            "rules[0].pattern"
        );
        assert_eq!(
            err("rules:\n  - { match: subject }\n").key,
            "rules[0].pattern"
        );
        assert_eq!(
            err("rules:\n  - { match: default }\n  - { match: default, pattern: x }\n").key,
            "rules[1].pattern"
        );
        assert_eq!(
            err("rules:\n  - { match: subject, pattern: '(.*)', name: '$2' }\n").key,
            "rules[0].name"
        );
        assert_eq!(
            err("rules:\n  - { match: subject, pattern: '(.*)', groups: [ok, '$1x'] }\n").key,
            "rules[0].groups[1]"
        );
        assert!(serde_yaml_ng::from_str::<MtlsConfig>(
            "rules:\n  - { match: subject, regex: x }\n"
        )
        .is_err());
    }

    #[test]
    fn garbage_certificate_is_an_error() {
        let m = mapper("rules: []");
        assert!(matches!(
            m.map(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            Err(MtlsError::BadCertificate(_))
        ));
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_2253("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_2253("#x "), "\\#x\\ ");
        assert_eq!(escape_2253(" "), "\\ ");
    }
}
