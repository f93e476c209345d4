//! Pools reach PostgreSQL over TLS when the URL asks for it (`sslmode=require`, or
//! `verify-full` with the server's CA), and refuse a server their CA did not sign.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use flatrender_kit::config::DatabaseUrl;
use flatrender_kit::db::{self, PoolSettings};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres.sh");

/// A private cluster with TLS switched on, stopped and removed when dropped.
struct TlsCluster {
    dir: PathBuf,
    port: u16,
    ca: PathBuf,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).arg("cluster-stop").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.ca.parent().unwrap());
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A test CA (ca.pem) and a server certificate for `127.0.0.1` it signed (cert.pem, key.pem).
fn certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=flatrender test CA"])
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
        ]));
    run(Command::new("openssl")
        .args(["req"])
        .args(ec)
        .args(["-subj", "/CN=127.0.0.1", "-keyout", &path("key.pem")])
        .args(["-out", &path("server.csr")]));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").args(["x509", "-req", "-days", "2", "-in", &path("server.csr")]).args([
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("cert.pem"),
    ]));
}

async fn start() -> TlsCluster {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("flatrender-pg-tls-{port}"));
    run(Command::new(SCRIPT).arg("cluster-start").arg(&dir).arg(port.to_string()));
    let certs = std::env::temp_dir().join(format!("flatrender-tls-{port}"));
    certificates(&certs);
    // The server reads its key as the cluster's owner, which must be the only one able to.
    let owner = std::fs::metadata(&dir).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    for (from, to) in [("cert.pem", "server.crt"), ("key.pem", "server.key")] {
        let target = dir.join(to);
        std::fs::copy(certs.join(from), &target).unwrap();
        std::os::unix::fs::chown(&target, Some(owner), None).unwrap();
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let admin: DatabaseUrl = format!("postgres://postgres@127.0.0.1:{port}/postgres").parse().unwrap();
    let pool = sqlx::PgPool::connect(admin.expose()).await.unwrap();
    sqlx::query("ALTER SYSTEM SET ssl = on").execute(&pool).await.unwrap();
    sqlx::query("SELECT pg_reload_conf()").execute(&pool).await.unwrap();
    pool.close().await;
    TlsCluster { dir, port, ca: certs.join("ca.pem") }
}

async fn uses_tls(url: &str) -> Result<bool, String> {
    let settings = PoolSettings {
        url: url.parse().unwrap(),
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(10),
    };
    let pool = db::owner_pool(&settings).await.map_err(|e| e.to_string())?;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
    pool.close().await;
    Ok(ssl)
}

#[tokio::test]
async fn tls_is_used_when_asked_and_the_server_is_verified() {
    let pg = start().await;
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    // The reload applies on new connections; wait (bounded) until TLS is offered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while uses_tls(&format!("{base}?sslmode=require")).await != Ok(true) {
        assert!(std::time::Instant::now() < deadline, "the server never offered TLS");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ca = pg.ca.display();
    assert_eq!(uses_tls(&format!("{base}?sslmode=verify-full&sslrootcert={ca}")).await, Ok(true));
    assert_eq!(uses_tls(&format!("{base}?sslmode=disable")).await, Ok(false));

    // A CA that did not sign the server's certificate is refused.
    let other = pg.ca.parent().unwrap().join("other");
    certificates(&other);
    let refused = uses_tls(&format!("{base}?sslmode=verify-full&sslrootcert={}", other.join("ca.pem").display())).await;
    assert!(refused.is_err(), "{refused:?}");
}
