//! TLS to Postgres with libpq's sslmodes, against a cluster serving a
//! certificate signed by a throwaway CA (made with openssl for the test).

use std::path::Path;
use std::process::Command;

use pipeline::cluster::EphemeralCluster;
use pipeline::postgres::Target;
use schemas::config::TargetConfig;

use crate::support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for `localhost` signed by it, and an unrelated CA.
fn certificates(dir: &Path) {
    for ca in ["ca", "other_ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-subj",
                &format!("/CN=floe test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

async fn ssl_in_use(url: &str) -> Result<bool, String> {
    let target =
        Target::resolve(&TargetConfig::default().with_url(url)).map_err(|e| e.to_string())?;
    let session = target
        .connect("floe/tls-test", &schemas::config::LoadConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let row = session
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_server_with_a_self_signed_ca() {
    let cluster = tokio::task::spawn_blocking(EphemeralCluster::start)
        .await
        .unwrap()
        .expect("a cluster of its own");
    cluster.stop_when_process_exits().unwrap();
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    // The server's key and certificate go where the server user can read them.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data = cluster.data_dir();
    let owner = std::fs::metadata(data).unwrap();
    for f in ["server.crt", "server.key"] {
        let to = data.join(f);
        std::fs::copy(certs.path().join(f), &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let admin = connect(&cluster.url()).await;
    for sql in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let port = cluster.port();
    let ca = certs.path().join("ca.crt");
    let other = certs.path().join("other_ca.crt");
    let url = |host: &str, mode: &str, root: &Path| {
        format!(
            "postgres://postgres@{host}:{port}/postgres?sslmode={mode}&sslrootcert={}",
            root.display()
        )
    };
    assert_eq!(
        ssl_in_use(&url("127.0.0.1", "disable", &ca)).await,
        Ok(false)
    );
    assert_eq!(ssl_in_use(&url("127.0.0.1", "prefer", &ca)).await, Ok(true));
    assert_eq!(
        ssl_in_use(&url("127.0.0.1", "require", &other)).await,
        Ok(true),
        "require does not verify"
    );
    assert_eq!(
        ssl_in_use(&url("127.0.0.1", "verify-ca", &ca)).await,
        Ok(true),
        "verify-ca ignores the name"
    );
    let e = ssl_in_use(&url("127.0.0.1", "verify-ca", &other))
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer") || e.contains("issuer"), "{e}");
    let e = ssl_in_use(&url("127.0.0.1", "verify-full", &ca))
        .await
        .unwrap_err();
    assert!(e.contains("NotValidForName") || e.contains("name"), "{e}");
    assert_eq!(
        ssl_in_use(&url("localhost", "verify-full", &ca)).await,
        Ok(true)
    );
    // prefer against a server without TLS (the shared test cluster) falls back to plain.
    let plain = format!("{}?sslmode=prefer", cluster_url_without_tls());
    assert_eq!(ssl_in_use(&plain).await, Ok(false));

    // And a whole refresh over verify-full.
    let config = shipped_config();
    let r = run(
        &config,
        "transformers",
        &url("localhost", "verify-full", &ca),
        Some(grid_dir()),
    )
    .await;
    assert_success(&r);
    assert_eq!(r.final_count, Some(GRID_ROWS));
}

fn cluster_url_without_tls() -> String {
    crate::support::cluster().url()
}
