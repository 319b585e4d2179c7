//! PostgreSQL connection strings as libpq reads them, and the masking of their secrets.
//!
//! libpq takes two forms: a URI (`postgres://user:password@host/db?sslmode=require`)
//! and keyword/value pairs (`host=db user=app password='a b' dbname=interview`).
//! Everything here works on arbitrary text without panicking: delimiters are
//! ASCII, so byte offsets found at them are always character boundaries.

use std::ops::Range;

use percent_encoding::percent_decode_str;

/// What replaces a secret in every masked form.
const MASK: &str = "***";

/// Every keyword libpq accepts in a keyword/value string (PostgreSQL 17).
const KEYWORDS: &[&str] = &[
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "max_protocol_version",
    "min_protocol_version",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_issuer",
    "oauth_scope",
    "options",
    "passfile",
    "password",
    "port",
    "replication",
    "require_auth",
    "requirepeer",
    "scram_client_key",
    "scram_server_key",
    "service",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslnegotiation",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
];

/// Whether a parameter carries a secret: `password`, `sslpassword`, OAuth and SCRAM secrets.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("password") || key.ends_with("secret") || key.starts_with("scram_")
}

/// Whether `s` is a libpq URI (`postgres://` or `postgresql://`, any case).
pub(crate) fn is_uri(s: &str) -> bool {
    starts_with_ci(s, "postgres://") || starts_with_ci(s, "postgresql://")
}

/// `s` starts with `prefix`, ignoring ASCII case, without slicing inside a character.
pub(crate) fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Whether `s` opens like a keyword/value string: a word, optional spaces, then `=`.
pub(crate) fn looks_like_pairs(s: &str) -> bool {
    let s = s.trim_start();
    let word = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    word > 0 && s[word..].trim_start().starts_with('=')
}

/// One `keyword=value` of a keyword/value string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pair {
    pub key: String,
    /// The value with quotes and backslash escapes resolved, as libpq hands it on.
    pub value: String,
    /// Where the value stands in the input, quotes included.
    pub span: Range<usize>,
}

/// Why a keyword/value string is not one libpq would accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PairsError {
    /// A word with no `=` after it (its text is not shown: it may be part of a password).
    MissingEquals,
    /// A quoted value with no closing quote.
    Unterminated,
    /// A keyword libpq does not know.
    UnknownKeyword(String),
}

impl std::fmt::Display for PairsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairsError::MissingEquals => f.write_str(
                "malformed keyword/value string: a word without \"=\" (quote values holding spaces: password='a b')",
            ),
            PairsError::Unterminated => {
                f.write_str("malformed keyword/value string: a quoted value is not closed")
            }
            PairsError::UnknownKeyword(k) => write!(
                f,
                "unknown connection keyword {k:?} (a SQLite file whose name holds \"=\" is written sqlite://NAME or ./NAME)"
            ),
        }
    }
}

/// Parses a keyword/value string the way libpq's `conninfo_parse` does.
///
/// Spaces may surround `=`; a value is either single-quoted (`\'` and `\\`
/// escape) or runs to the next space (a backslash escapes the next byte).
pub(crate) fn parse_pairs(s: &str) -> Result<Vec<Pair>, PairsError> {
    let (pairs, error) = scan_pairs(s);
    match error {
        Some(e) => Err(e),
        None => match pairs.iter().find(|p| !KEYWORDS.contains(&p.key.as_str())) {
            Some(p) => Err(PairsError::UnknownKeyword(shown_keyword(&p.key))),
            None => Ok(pairs),
        },
    }
}

/// A keyword for an error message: only its word characters, shortened.
fn shown_keyword(k: &str) -> String {
    k.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(40)
        .collect()
}

/// Every pair found, and the first syntax error; an unterminated value runs
/// to the end, so masking still covers it.
fn scan_pairs(s: &str) -> (Vec<Pair>, Option<PairsError>) {
    let b = s.as_bytes();
    let skip_space = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut pairs = Vec::new();
    let mut i = skip_space(0);
    while i < b.len() {
        let key_start = i;
        while b
            .get(i)
            .is_some_and(|c| *c != b'=' && !c.is_ascii_whitespace())
        {
            i += 1;
        }
        let key = String::from_utf8_lossy(&b[key_start..i]).into_owned();
        i = skip_space(i);
        if b.get(i) != Some(&b'=') {
            return (pairs, Some(PairsError::MissingEquals));
        }
        i = skip_space(i + 1);
        let start = i;
        let mut value = Vec::new();
        let mut error = None;
        if b.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        error = Some(PairsError::Unterminated);
                        break;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if b.get(i + 1).is_some() => {
                        value.extend(b.get(i + 1));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = b.get(i).filter(|c| !c.is_ascii_whitespace()) {
                if let Some(next) = b.get(i + 1).filter(|_| *c == b'\\') {
                    value.push(*next);
                    i += 2;
                } else {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        pairs.push(Pair {
            key,
            value: String::from_utf8_lossy(&value).into_owned(),
            span: start..i,
        });
        if error.is_some() {
            return (pairs, error);
        }
        i = skip_space(i);
    }
    (pairs, None)
}

/// The spans to mask in a URI and the secrets they hold: the user-info
/// password and every secret query parameter.
fn uri_secrets(s: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let Some(scheme_end) = s.find("://") else {
        return spans;
    };
    let rest_start = scheme_end + 3;
    let rest = &s[rest_start..];
    // A password may hold any character, `@`, `/`, `?` and `#` included, when
    // it was not percent-encoded: everything from the first `:` to the last
    // `@` is masked, at worst hiding some of the host as well.
    if let Some(at) = rest.rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            spans.push(rest_start + colon + 1..rest_start + at);
        }
    }
    let mut from = rest_start;
    while let Some(i) = s[from..].find(['?', '&']) {
        let key_start = from + i + 1;
        let end = s[key_start..].find('&').map_or(s.len(), |j| key_start + j);
        if let Some(eq) = s[key_start..end].find('=') {
            let key = percent_decode_str(&s[key_start..key_start + eq]).decode_utf8_lossy();
            if is_secret(&key) {
                spans.push(key_start + eq + 1..end);
            }
        }
        from = end;
        if from >= s.len() {
            break;
        }
    }
    spans
}

/// The spans of secret values in a keyword/value string (unparseable ones included).
fn pairs_secrets(s: &str) -> Vec<Range<usize>> {
    scan_pairs(s)
        .0
        .into_iter()
        .filter(holds_secret)
        .map(|p| p.span)
        .collect()
}

/// A secret keyword, or a value that is itself a connection string with a
/// password in it (libpq may expand a `dbname` so; masked whole, to be safe).
fn holds_secret(p: &Pair) -> bool {
    // The value is shorter than the string it came from, so this recursion ends.
    is_secret(&p.key) || !secret_spans(&p.value).is_empty()
}

/// Whether `s` is read as a URI; keyword/value strings may hold `://` in a value.
fn is_uri_form(s: &str) -> bool {
    s.contains("://") && !looks_like_pairs(s)
}

fn secret_spans(s: &str) -> Vec<Range<usize>> {
    if is_uri_form(s) {
        uri_secrets(s)
    } else {
        pairs_secrets(s)
    }
}

/// `s` with every password replaced by `***`: the only form fit for logs.
///
/// Covers the user-info password of a URI, every `password=` and
/// `sslpassword=` parameter (percent-encoded keys too), and the values of
/// secret keywords in a keyword/value string, quoted or not.
///
/// ```
/// use interview_store::connection::mask_password;
/// assert_eq!(mask_password("postgres://u:p%40ss@h:5432/db?sslmode=require"), "postgres://u:***@h:5432/db?sslmode=require");
/// assert_eq!(mask_password("postgres://h/db?user=u&password=x&sslpassword=y"), "postgres://h/db?user=u&password=***&sslpassword=***");
/// assert_eq!(mask_password("host=db password='a b\\' c' dbname=x"), "host=db password=*** dbname=x");
/// assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
/// ```
pub fn mask_password(s: &str) -> String {
    let mut spans = secret_spans(s);
    spans.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for r in spans {
        if r.end <= at {
            continue;
        }
        let start = r.start.max(at);
        out.push_str(&s[at..start]);
        out.push_str(MASK);
        at = r.end;
    }
    out.push_str(&s[at..]);
    out
}

/// Every form in which a secret of `s` might be echoed: as written, and
/// percent-decoded or unquoted as libpq uses it.
fn secret_forms(s: &str) -> Vec<String> {
    let mut forms = Vec::new();
    if is_uri_form(s) {
        for r in uri_secrets(s) {
            let raw = &s[r];
            forms.push(percent_decode_str(raw).decode_utf8_lossy().into_owned());
            forms.push(raw.to_string());
        }
    } else {
        for p in scan_pairs(s).0.into_iter().filter(holds_secret) {
            let raw = &s[p.span.clone()];
            forms.push(raw.trim_matches('\'').to_string());
            forms.push(raw.to_string());
            if !is_secret(&p.key) {
                forms.extend(secret_forms(&p.value));
            }
            forms.push(p.value);
        }
    }
    forms.retain(|f| !f.is_empty());
    // Longest first, so a secret is not left half-masked by a shorter form inside it.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

/// Removes the secrets of connection string `conn` from `text`, e.g. a driver's
/// error message that might echo them, in every form they may take there.
pub(crate) fn mask_in_text(text: &str, conn: &str) -> String {
    let mut out = mask_password(text);
    for form in secret_forms(conn) {
        out = out.replace(&form, MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_follow_libpq() {
        let p = parse_pairs(r"host = db  password='a b\' c' user=app\ x dbname=").unwrap();
        let kv: Vec<_> = p
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            kv,
            [
                ("host", "db"),
                ("password", "a b' c"),
                ("user", "app x"),
                ("dbname", "")
            ]
        );
        assert_eq!(parse_pairs("host=db oops"), Err(PairsError::MissingEquals));
        assert_eq!(parse_pairs("password='x"), Err(PairsError::Unterminated));
        assert!(matches!(
            parse_pairs("hots=db"),
            Err(PairsError::UnknownKeyword(k)) if k == "hots"
        ));
    }

    #[test]
    fn masks_every_form() {
        assert_eq!(
            mask_password("postgres://u:p/a?s#s@h/db?password=1&x=2&SSLPassword=3&pass%77ord=4"),
            "postgres://u:***@h/db?password=***&x=2&SSLPassword=***&pass%77ord=***"
        );
        assert_eq!(
            mask_password("host=h dbname='postgres://u:pw@h/db' user=u"),
            "host=h dbname=*** user=u"
        );
        assert_eq!(
            mask_in_text("bad pw here", "host=h dbname='user=u password=pw'"),
            "bad *** here"
        );
        assert_eq!(
            mask_password("password = 'unterminated secret"),
            "password = ***"
        );
        assert_eq!(
            mask_in_text("failed for \"p@ss\" and p%40ss", "postgres://u:p%40ss@h/db"),
            "failed for \"***\" and ***"
        );
    }
}
