//! Bad configuration ends with one clear line — what is wrong and how to fix it — and never a
//! panic; `--help` documents every flag; `migrate` is idempotent.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::testing::TestDatabase;
use support::run;

fn assert_clear_failure(stderr: &str, needles: &[&str]) {
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    // clap's usage errors put the problem on the first line; ours end the output.
    let first = stderr.lines().next().unwrap_or_default();
    let last = stderr.lines().last().unwrap_or_default();
    for needle in needles {
        assert!(first.contains(needle) || last.contains(needle), "`{needle}` should be said on one line: {stderr}");
    }
}

#[test]
fn unreachable_database() {
    let (status, _, stderr) = run(&["--database-url", "postgres://app:hunter2@127.0.0.1:1/flatrender"], &[]);
    assert_eq!(status.code(), Some(1));
    assert_clear_failure(
        &stderr,
        &["cannot reach PostgreSQL at postgres://app:***@127.0.0.1:1/flatrender", "start PostgreSQL"],
    );
    assert!(!stderr.contains("hunter2"), "the password is never printed: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn malformed_values_and_unknown_targets() {
    for (args, needle) in [
        (vec!["--grpc-addr", "nonsense"], "invalid value 'nonsense' for '--grpc-addr"),
        (vec!["--target", "billing"], "invalid value 'billing' for '--target"),
        (vec!["--shutdown-timeout", "soon"], "is not a duration"),
    ] {
        let (status, _, stderr) = run(&args, &[]);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_clear_failure(&stderr, &[needle]);
    }
}

#[test]
fn a_database_url_that_is_not_postgres_is_refused_without_echoing_it() {
    let (status, _, stderr) = run(&["--database-url", "mysql://app:hunter2@db/x"], &[]);
    assert_eq!(status.code(), Some(1));
    assert_clear_failure(&stderr, &["must look like postgres://user:password@host:5432/flatrender"]);
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn a_public_url_that_is_not_http_is_refused_before_anything_starts() {
    for (url, why) in [("ftp://files.example.com", "is not http or https"), ("files.example.com", "is not a URL")] {
        // The database is unreachable: the URL is checked first.
        let (status, _, stderr) =
            run(&["--public-url", url, "--database-url", "postgres://app@127.0.0.1:1/flatrender"], &[]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert_clear_failure(&stderr, &[&format!("--public-url {url:?} {why}"), "FLATRENDER_PUBLIC_URL"]);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn help_never_prints_secrets_from_the_environment() {
    let (status, stdout, _) = run(
        &["--help"],
        &[
            ("FLATRENDER_DATABASE_URL", "postgres://app:hunter2@db/x"),
            ("FLATRENDER_RENDER_DATABASE_URL", "postgres://r:hunter3@db/x"),
        ],
    );
    assert!(status.success());
    assert!(!stdout.contains("hunter2") && !stdout.contains("hunter3"), "{stdout}");
}

#[tokio::test]
async fn address_in_use_and_unmigrated_database() {
    let db = TestDatabase::empty().await;
    let url = db.url().expose().to_owned();
    let (status, _, stderr) = run(&["--database-url", &url], &[]);
    assert_eq!(status.code(), Some(1));
    assert_clear_failure(&stderr, &["not migrated", "flatrender migrate"]);

    let (status, stdout, _) = run(&["migrate", "--database-url", &url], &[]);
    assert!(status.success());
    let files = flatrender_kit::migrate::embedded().len();
    assert!(stdout.contains(&format!("{files} applied now, 0 already present")), "{stdout}");
    let (status, stdout, _) = run(&["migrate", "--database-url", &url], &[]);
    assert!(status.success());
    assert!(stdout.contains(&format!("0 applied now, {files} already present")), "{stdout}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = std::env::temp_dir().join(format!("flatrender-cfg-{}", std::process::id()));
    let (status, _, stderr) =
        run(&["--database-url", &url, "--grpc-addr", &addr, "--data-dir", data.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(1));
    assert_clear_failure(&stderr, &[&format!("cannot listen on {addr}"), "choose another --grpc-addr"]);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let (status, stdout, _) = run(&["--help"], &[]);
    assert!(status.success());
    for flag in [
        "--target",
        "--grpc-addr",
        "--metrics-addr",
        "--database-url",
        "--data-dir",
        "--log-format",
        "--migrate",
        "--shutdown-timeout",
        "--jwks-file",
        "--upstream",
        "--public-url",
        "FLATRENDER_DATABASE_URL",
        "FLATRENDER_GRPC_ADDR",
        "FLATRENDER_OTLP_ENDPOINT",
        "migrate",
    ] {
        assert!(stdout.contains(flag), "--help mentions {flag}:\n{stdout}");
    }
}
