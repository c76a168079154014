//! `credbroker subscribe`, the real binary, against the broker's real-time endpoint.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;

use crate::realtime::{create, with_realtime, ws_url};
use crate::support::Harness;

/// A running `credbroker subscribe` with its stdout and stderr collected.
struct Subscriber {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = into.lock().expect("lock");
            text.push_str(&line);
            text.push('\n');
        }
    })
}

impl Subscriber {
    fn spawn(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_credbroker"))
            .arg("subscribe")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn credbroker subscribe");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// Waits (bounded) until stderr holds `text` `times` times.
    async fn said(&self, text: &str, times: usize) {
        for _ in 0..3000 {
            if self.stderr().matches(text).count() >= times {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no {text:?} ({times}x) on stderr:\n{}", self.stderr());
    }

    /// Waits for the exit, and for its output to be read to the end.
    async fn exit(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s")
            .expect("wait");
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        }
        status
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

fn args<'a>(url: &'a str, file: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--url", url, "--token-file", file];
    v.extend_from_slice(extra);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_each_event_as_a_json_line() {
    let h = with_realtime("").await;
    let alice = h.issuer.token_for("auth0|alice");
    // A trailing newline, as editors write it.
    let file = h.token_file("alice", &format!("{alice}\n"));
    let file = file.to_string_lossy().into_owned();
    let url = ws_url(&h, "/appsync/realtime");
    let mut sub = Subscriber::spawn(&args(&url, &file, &["--count", "2"]));
    sub.said("subscribed", 1).await;
    assert!(
        sub.stderr()
            .contains("connected (connectionTimeoutMs=300000)")
    );
    let first = create(&h, "/appsync/graphql", &alice, "one").await;
    let second = create(&h, "/appsync/graphql", &alice, "two").await;
    let status = sub.exit().await;
    assert!(status.success(), "{status:?}\n{}", sub.stderr());
    let lines: Vec<serde_json::Value> = sub
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({ "onCreateTodo": first }),
            serde_json::json!({ "onCreateTodo": second })
        ]
    );
    assert!(!sub.stderr().contains(&alice), "the token is never printed");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reports_refusals_reconnects_and_stops_on_ctrl_c() {
    let h = with_realtime("").await;
    let url = ws_url(&h, "/appsync/realtime");

    // A bad token: the upgrade's refusal, exit 1.
    let bad = h.token_file("bad", "not-a-jwt");
    let bad = bad.to_string_lossy().into_owned();
    let mut sub = Subscriber::spawn(&args(&url, &bad, &[]));
    let status = sub.exit().await;
    assert_eq!(status.code(), Some(1));
    assert!(
        sub.stderr()
            .contains("the upgrade was refused: 401 MalformedToken"),
        "{}",
        sub.stderr()
    );

    // --reconnect: an upstream drop (1011) is followed by a new connection that works.
    let alice = h.issuer.token_for("auth0|alice");
    let file = h.token_file("alice", &alice);
    let file = file.to_string_lossy().into_owned();
    let mut sub = Subscriber::spawn(&args(&url, &file, &["--reconnect"]));
    sub.said("subscribed", 1).await;
    h.appsync().faults().drop_realtime();
    sub.said(
        "closed: 1011 AppSync connection lost; reconnecting in 1 s",
        1,
    )
    .await;
    sub.said("subscribed", 2).await;
    let made = create(&h, "/appsync/graphql", &alice, "after the reconnect").await;
    wait_for_stdout(&sub, made["id"].as_str().expect("id")).await;

    // Ctrl-C: stop, close 1000, exit 0.
    sub.signal("INT");
    let status = sub.exit().await;
    assert!(status.success(), "{status:?}\n{}", sub.stderr());
    assert_eq!(h.appsync().stats().realtime_connections, 2);
    settle_open(&h).await;
    h.stop().await;
}

async fn wait_for_stdout(sub: &Subscriber, text: &str) {
    for _ in 0..3000 {
        if sub.stdout().contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {text:?} on stdout:\n{}", sub.stdout());
}

/// Every upstream socket ends once the subscriber is gone.
async fn settle_open(h: &Harness) {
    for _ in 0..500 {
        if h.appsync().stats().realtime_open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sockets still open: {:?}", h.appsync().stats());
}
