//! The binary, run at trace level, never logs a token, secret key or session token.

use std::time::Duration;

use credbroker_emulators::oidc::{SigningAlg, TokenSpec};

use crate::support::{Binary, Harness, Tweaks, config_toml, request, tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_contain_no_secrets_and_one_audit_line_per_issuance() {
    // Emulators in this process; the broker as the real binary, logging at trace.
    let h = Harness::start().await;
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    std::fs::write(
        &config,
        config_toml(&h.issuer, &h.cognito, &Tweaks::default()),
    )
    .expect("write");

    let mut bin = Binary::spawn(&config, "trace");
    let addr = bin.listen_of("credbroker is serving").await;
    let url = format!("http://{addr}/v1/credentials");

    let alice = h.issuer.token_for("auth0|alice");
    let bob = h.issuer.token_for("auth0|bob");
    let hs = h.issuer.mint(&TokenSpec {
        alg: SigningAlg::Hs256 {
            secret: b"s3cr3t-client-secret".to_vec(),
        },
        ..TokenSpec::for_subject("auth0|mallory")
    });
    let mut secrets = vec![alice.clone(), bob.clone(), hs.clone()];
    for token in [&alice, &alice, &bob, &hs, &alice] {
        let reply = request(&h.http, "GET", &url, &[("authorization", token)]).await;
        if reply.status == 200 {
            let body = reply.json();
            secrets.push(body["SecretAccessKey"].as_str().expect("secret").to_owned());
            secrets.push(body["Token"].as_str().expect("token").to_owned());
        }
    }
    // A token's signature alone must not appear either.
    let signatures: Vec<String> = secrets[..3]
        .iter()
        .filter_map(|t| t.rsplit('.').next().map(str::to_owned))
        .collect();
    secrets.extend(signatures);

    // Graceful stop with SIGTERM.
    bin.signal("TERM");
    let exit = tokio::time::timeout(Duration::from_secs(30), bin.child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    (&mut bin.reader).await.expect("reader");

    let logs = bin.logs();
    assert!(
        logs.contains("DEBUG credbroker::identity: credentials obtained")
            && logs.contains("DEBUG credbroker::server::container: credentials refused"),
        "verbose logging is on:\n{logs}"
    );
    for secret in &secrets {
        assert!(secret.len() >= 20);
        if let Some(line) = logs.lines().find(|l| l.contains(secret.as_str())) {
            let at = line.find(secret.as_str()).unwrap_or(0);
            let safe: String = line
                .replace(secret.as_str(), "<SECRET>")
                .chars()
                .take(400)
                .collect();
            panic!("a secret leaked into the logs at byte {at}: {safe}");
        }
    }
    assert!(!logs.contains("s3cr3t-client-secret"));
    let audit: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("credbroker::audit") && l.contains("credentials issued"))
        .collect();
    assert_eq!(
        audit.len(),
        2,
        "one audit line per issued set (alice, bob):\n{}",
        audit.join("\n")
    );
    assert!(
        audit
            .iter()
            .all(|l| l.contains("subject_hash=") && !l.contains("auth0|"))
    );
    // Who, where and until when: every field an auditor needs, none of the secrets above.
    for field in [
        "surface=\"container\"",
        "provider=test",
        "identity_id=",
        "access_key_id=",
        "expiration=",
    ] {
        assert!(
            audit.iter().all(|l| l.contains(field)),
            "{field} missing:\n{}",
            audit.join("\n")
        );
    }
    h.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_binary_reports_a_panic_without_its_message() {
    // `check-config` prints the configuration; with stdout a pipe nobody reads, that print
    // panics ("failed printing to stdout: Broken pipe"). Rust's default hook would print that
    // message; credbroker's prints only where it happened.
    let dir = tempdir();
    let config = dir.join("credbroker.toml");
    std::fs::write(
        &config,
        "[providers.auth0]\nissuer = \"https://dev-x.us.auth0.com/\"\naudiences = [\"c\"]\n\
         [cognito]\nregion = \"us-east-1\"\n\
         identity_pool_id = \"us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211\"\n",
    )
    .expect("write");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credbroker"))
        .args(["check-config", "--file"])
        .arg(&config)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run credbroker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "a panic: {stderr}");
    assert!(
        stderr.contains("credbroker: internal error: panicked at ")
            && stderr.contains("on thread main"),
        "credbroker's hook reported it: {stderr}"
    );
    assert!(stderr.contains("message withheld"), "{stderr}");
    assert!(
        !stderr.contains("failed printing") && !stderr.contains("Broken pipe"),
        "the panic message is not printed: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
