//! Database URLs as anyone may type them: keyword/value strings, passwords in
//! every position and spelling, arbitrary text. Properties over generated input.

use std::path::Path;

use interview_store::connection::mask_password;
use interview_store::{Backend, Category, DatabaseUrl, Error, Store, StoreConfig};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use proptest::prelude::*;

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A password of printable characters, URL and libpq delimiters and non-ASCII among them.
fn password() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/?#@:&=%'\\\\ é€😀;+.*-]{1,16}"
}

/// A keyword/value string value, single-quoted as libpq reads it.
fn quoted(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Every way a password can be written into a connection string: `{pw}` is
/// where it goes; `{port}` the port.
const FORMS: &[&str] = &[
    "postgres://app:{pw-enc}@127.0.0.1:{port}/interview",
    "postgresql://app:{pw-enc}@127.0.0.1:{port}/interview?sslmode=disable&connect_timeout=2",
    "postgres://app@127.0.0.1:{port}/interview?password={pw-enc}",
    "postgres://app@127.0.0.1:{port}/interview?sslmode=disable&password={pw-enc}&sslpassword={pw-enc}",
    "host=127.0.0.1 port={port} user=app password={pw-quoted} dbname=interview",
    "host=127.0.0.1 port={port} password = {pw-quoted} sslpassword={pw-quoted} dbname=interview",
    "host=127.0.0.1 port={port} application_name=see://here password={pw-quoted} dbname=interview",
    // libpq multi-host forms (failover): one password for every host.
    "postgres://app:{pw-enc}@127.0.0.1:{port},localhost:{port}/interview?target_session_attrs=read-write",
    "postgres://app@127.0.0.1:{port},localhost:{port}/interview?password={pw-enc}&connect_timeout=2",
    "host=127.0.0.1,localhost port={port},{port} user=app password={pw-quoted} dbname=interview target_session_attrs=read-write",
];

fn fill(form: &str, pw: &str, port: u16) -> String {
    form.replace(
        "{pw-enc}",
        &utf8_percent_encode(pw, NON_ALPHANUMERIC).to_string(),
    )
    .replace("{pw-quoted}", &quoted(pw))
    .replace("{port}", &port.to_string())
}

/// The forms a password may take in text: as typed, percent-encoded, quoted.
fn spellings(pw: &str) -> [String; 3] {
    [
        pw.to_string(),
        utf8_percent_encode(pw, NON_ALPHANUMERIC).to_string(),
        quoted(pw),
    ]
}

/// Fails if any spelling of `pw` is in `text`.
fn assert_hidden(text: &str, pw: &str) -> Result<(), TestCaseError> {
    for s in spellings(pw) {
        prop_assert!(!text.contains(&s), "{s:?} survives in {text:?}");
    }
    Ok(())
}

/// Whether the masked form the string should have holds no spelling of `pw`:
/// a password that is part of it, like `*` or `=`, proves nothing.
fn skeleton_hides(form: &str, pw: &str, port: u16) -> bool {
    let skeleton = form
        .replace("{pw-enc}", "***")
        .replace("{pw-quoted}", "***")
        .replace("{port}", &port.to_string());
    spellings(pw).iter().all(|s| !skeleton.contains(s.as_str()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_password_survives_masking(pw in password(), form in 0..FORMS.len(), port in 1u16..65535) {
        let form = FORMS[form];
        prop_assume!(skeleton_hides(form, &pw, port));
        let s = fill(form, &pw, port);
        let url = DatabaseUrl::postgres(&s).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(url.backend(), Backend::Postgres);
        assert_hidden(&url.masked(), &pw)?;
        assert_hidden(&url.to_string(), &pw)?;
        assert_hidden(&format!("{url:?}"), &pw)?;
        assert_hidden(&mask_password(&s), &pw)?;
    }

    /// Typed straight into the user-info part, unencoded: `/ ? # @ :` and all.
    #[test]
    fn a_raw_user_info_password_is_masked_whole(pw in password(), db in "[a-z]{1,8}") {
        let s = format!("postgres://app:{pw}@db.internal:5432/{db}?sslmode=require");
        prop_assume!(!format!("postgres://app:***@db.internal:5432/{db}?sslmode=require").contains(&pw));
        let masked = mask_password(&s);
        prop_assert!(!masked.contains(&pw), "{} in {}", pw, masked);
        prop_assert!(masked.starts_with("postgres://app:***@"), "{}", masked);
    }

    /// A multi-host URL typed by hand: the raw password is masked whatever host list follows.
    #[test]
    fn a_raw_password_before_a_host_list_is_masked(pw in password()) {
        let s = format!("postgres://app:{pw}@db1:5432,db2:5433/interview?target_session_attrs=read-write");
        prop_assume!(!"postgres://app:***@db1:5432,db2:5433/interview?target_session_attrs=read-write".contains(&pw));
        let masked = mask_password(&s);
        prop_assert!(!masked.contains(&pw), "{} in {}", pw, masked);
        prop_assert!(masked.starts_with("postgres://app:***@"), "{}", masked);
    }

    /// libpq's own error text passes through masking too.
    #[test]
    // A leading `Ω` keeps the password out of libpq's own words (a password
    // `u` is masked in "Connection ref***sed" too, which proves nothing).
    fn no_password_survives_a_failed_connect(pw in password().prop_map(|p| format!("Ω{p}")), form in 0..FORMS.len()) {
        let form = FORMS[form];
        let port = closed_port();
        prop_assume!(skeleton_hides(form, &pw, port));
        let url = DatabaseUrl::postgres(&fill(form, &pw, port)).unwrap();
        let err = match url.establish() {
            Err(e) => e,
            Ok(_) => return Err(TestCaseError::fail("connected to a closed port")),
        };
        prop_assert!(matches!(err, Error::Connect { .. }), "{}", err);
        assert_hidden(&err.to_string(), &pw)?;
        assert_hidden(&format!("{err:?}"), &pw)?;
    }

    /// No input makes parsing or masking panic.
    #[test]
    fn any_text_parses_or_is_refused_without_panicking(
        s in prop_oneof![
            any::<String>(),
            "(postgres(ql)?://|sqlite:|sqlite://|SQLITE:/|host=|[a-zé]{0,3}=|)[a-zA-Z:/?#@&=%' \\\\éü€😀]{0,24}",
        ]
    ) {
        for parsed in [s.parse::<DatabaseUrl>(), DatabaseUrl::postgres(&s)] {
            match parsed {
                Ok(url) => {
                    let _ = (url.masked(), url.to_string(), format!("{url:?}"));
                }
                Err(e) => {
                    let _ = (e.to_string(), format!("{e:?}"));
                }
            }
        }
        let _ = mask_password(&s);
    }
}

#[test]
fn a_multibyte_character_at_a_prefix_boundary_does_not_panic() {
    for s in ["sqlite:/é", "sqlite:é", "postgres:/€x", "sqlit€://x"] {
        let _ = s.parse::<DatabaseUrl>().map(|u| u.masked());
    }
    assert_eq!(
        "sqlite:/é"
            .parse::<DatabaseUrl>()
            .unwrap()
            .connection_string(),
        "/é"
    );
}

#[test]
fn keyword_value_strings_are_postgres_and_never_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = format!(
        "host=127.0.0.1 port={} user=app password='hunter 2' dbname=interview",
        closed_port()
    );
    let url: DatabaseUrl = s.parse().unwrap();
    assert_eq!(url.backend(), Backend::Postgres);
    assert!(url.masked().contains("password=***"), "{url}");
    let err = Store::open(url, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("hunter"), "{err}");
    assert!(!Path::new(&s).exists(), "no file named after the string");

    // A keyword libpq does not know, or a malformed string, is refused, not taken for a file.
    for bad in ["hots=db dbname=x", "host=db oops", "host=db password='open"] {
        let err = bad.parse::<DatabaseUrl>().unwrap_err();
        assert_eq!(err.category(), Category::Input, "{bad}: {err}");
        assert!(!err.to_string().contains("open"), "{err}");
    }
    // Such a file name is still reachable.
    let odd = dir.path().join("a=b.db");
    let url: DatabaseUrl = format!("sqlite://{}", odd.display()).parse().unwrap();
    assert_eq!(url.backend(), Backend::Sqlite);
}

/// Both hosts of a multi-host URL down: libpq's error names each attempt, none
/// with the password; the store's URL asks for a read-write session.
#[test]
fn a_multi_host_url_fails_naming_every_host_and_no_password() {
    let (a, b) = (closed_port(), closed_port());
    for s in [
        format!("postgres://app:hunter2@127.0.0.1:{a},127.0.0.1:{b}/interview"),
        format!("host=127.0.0.1,127.0.0.1 port={a},{b} user=app password=hunter2 dbname=interview"),
    ] {
        let url: DatabaseUrl = s.parse().unwrap();
        assert!(url.is_multi_host(), "{url}");
        let err = Store::open(url, StoreConfig::default()).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, Error::Connect { .. }), "{text}");
        assert_eq!(err.category(), Category::Unavailable, "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        for port in [a, b] {
            assert!(text.contains(&format!("port {port} failed")), "{text}");
        }
        assert!(text.contains("target_session_attrs=read-write"), "{text}");
    }
}

#[test]
fn postgres_only_settings_refuse_everything_else_without_repeating_it() {
    for s in [
        "interview.db",
        "sqlite://interview.db",
        "mysql://app:hunter2@db/x",
        "",
    ] {
        let err = DatabaseUrl::postgres(s).unwrap_err();
        assert_eq!(err.category(), Category::Input, "{s}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    assert!(!Path::new("interview.db").exists());
}

#[cfg(feature = "server")]
#[test]
fn the_server_refuses_a_postgres_setting_that_is_not_postgres() {
    use interview_store::server::ServerConfig;
    let config = |url: &str| {
        let url = url.to_string();
        ServerConfig::from_lookup(move |k| (k == "INTERVIEW_POSTGRES_URL").then(|| url.clone()))
    };
    let err = config("interview.db").unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "INTERVIEW_POSTGRES_URL",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not a PostgreSQL URL"), "{err}");
    let ok = config("host=db user=app password=hunter2 dbname=interview").unwrap();
    assert!(!format!("{ok:?}").contains("hunter2"), "{ok:?}");
}

#[test]
fn an_existing_sqlite_url_never_creates_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let err = Store::open(
        DatabaseUrl::existing_sqlite(&path).unwrap(),
        StoreConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoSuchFile { .. }), "{err}");
    assert_eq!(err.category(), Category::Unavailable);
    assert_eq!(
        err.to_string(),
        format!("no such SQLite file: {}", path.display())
    );
    assert!(!path.exists());

    // Once it exists it opens, whatever characters its name holds.
    let odd = dir.path().join("odd ?#%.db");
    Store::connect(odd.to_str().unwrap(), StoreConfig::default())
        .unwrap()
        .migrate()
        .unwrap();
    let store = Store::open(
        DatabaseUrl::existing_sqlite(&odd).unwrap(),
        StoreConfig::default(),
    )
    .unwrap();
    assert_eq!(store.counts().unwrap().sessions, 0);
}

/// Warnings logged by this test binary (the only logger it installs).
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            WARNINGS.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

#[test]
fn a_service_creating_its_database_says_where_at_warn() {
    let _ = log::set_logger(&Capture).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let store = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    store.migrate().unwrap();
    let absolute = std::fs::canonicalize(&path).unwrap().display().to_string();
    let said = |w: &Vec<String>| w.iter().filter(|m| m.contains(&absolute)).count();
    assert_eq!(
        said(&WARNINGS.lock().unwrap()),
        1,
        "{:?}",
        WARNINGS.lock().unwrap()
    );
    drop(store);
    // Opening it again creates nothing and says nothing.
    Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    assert_eq!(said(&WARNINGS.lock().unwrap()), 1);
}
