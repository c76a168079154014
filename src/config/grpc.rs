//! `[grpc]`: the gRPC API's transports and limits.
//!
//! gRPC is opt-in: it is served only when `listen` (TCP) and/or `unix_socket` is set. The
//! suggested TCP address is `127.0.0.1:8903` (8900 is the container endpoint; 8901/8902 are
//! reserved for the emulators). Like every listener, TCP binds loopback unless
//! `allow_non_loopback = true`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Section;

/// The suggested gRPC TCP address (not a default: gRPC is opt-in).
pub const SUGGESTED_GRPC_LISTEN: &str = "127.0.0.1:8903";
const DEFAULT_SOCKET_MODE: u32 = 0o660;
const DEFAULT_MAX_MESSAGE_BYTES: u64 = 64 * 1024;
const DEFAULT_MAX_WATCHERS: u64 = 1024;

/// The gRPC API.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// TCP address, if gRPC is served over TCP. Loopback unless `allow_non_loopback`.
    pub listen: Option<SocketAddr>,
    /// Whether a non-loopback `listen` was explicitly allowed.
    pub allow_non_loopback: bool,
    /// Unix domain socket path, if gRPC is served on one (absolute).
    pub unix_socket: Option<PathBuf>,
    /// File mode of the socket (connecting needs write permission), default `0660`.
    pub unix_socket_mode: u32,
    /// When set, only peers with these user ids (SO_PEERCRED) may use the socket.
    pub allowed_uids: Option<Vec<u32>>,
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// Open `WatchCredentials` streams, at most; beyond it RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// File holding the Admin service's bearer token; the Admin service is off without it.
    pub admin_token_file: Option<PathBuf>,
}

impl GrpcConfig {
    /// Whether any transport is configured.
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.unix_socket.is_some()
    }
}

pub(super) fn build_grpc(s: &Section<'_>) -> Option<GrpcConfig> {
    let allow_non_loopback = s.bool_or("allow_non_loopback", false);
    let listen = listen(s, allow_non_loopback);
    let unix_socket = s.opt_str("unix_socket").map(PathBuf::from);
    let socket_ok = match &unix_socket {
        Some(p) if !p.is_absolute() => {
            s.error("unix_socket", "must be an absolute path");
            false
        }
        _ => true,
    };
    let unix_socket_mode = unix_socket_mode(s);
    let allowed_uids = allowed_uids(s, unix_socket.is_some());
    let max_message_bytes = s.u64_in(
        "max_message_bytes",
        DEFAULT_MAX_MESSAGE_BYTES,
        1024,
        4 * 1024 * 1024,
    );
    let max_watchers = s.u64_in("max_watchers", DEFAULT_MAX_WATCHERS, 1, 1 << 20);
    let admin_token_file = s.opt_str("admin_token_file").map(PathBuf::from);
    if admin_token_file.as_ref().is_some_and(|p| !p.is_absolute()) {
        s.error("admin_token_file", "must be an absolute path");
    }
    if !socket_ok {
        return None;
    }
    Some(GrpcConfig {
        listen: listen?,
        allow_non_loopback,
        unix_socket,
        unix_socket_mode,
        allowed_uids,
        max_message_bytes: usize::try_from(max_message_bytes).ok()?,
        max_watchers: usize::try_from(max_watchers).ok()?,
        admin_token_file,
    })
}

/// `listen`: `Some(None)` when absent (no TCP), `None` when unusable (the error reported).
fn listen(s: &Section<'_>, allow_non_loopback: bool) -> Option<Option<SocketAddr>> {
    if s.has("listen") {
        s.socket_addr_or("listen", SUGGESTED_GRPC_LISTEN, allow_non_loopback)
            .map(Some)
    } else {
        Some(None)
    }
}

/// `unix_socket_mode`: octal, at most `0777`, never writable by others; else the default
/// (the error reported).
fn unix_socket_mode(s: &Section<'_>) -> u32 {
    let Some(text) = s.opt_str("unix_socket_mode") else {
        return DEFAULT_SOCKET_MODE;
    };
    match u32::from_str_radix(text.trim().trim_start_matches("0o"), 8) {
        Ok(mode) if mode > 0o777 => {
            s.error(
                "unix_socket_mode",
                format!("{text:?} is not a file mode (at most \"0777\")"),
            );
            DEFAULT_SOCKET_MODE
        }
        Ok(mode) if mode & 0o002 != 0 => {
            s.error(
                "unix_socket_mode",
                format!(
                    "{text:?} lets every local user connect and get credentials; drop the \
                     write bit for others (e.g. \"0660\") and grant access by group or \
                     allowed_uids"
                ),
            );
            DEFAULT_SOCKET_MODE
        }
        Ok(mode) => mode,
        Err(_) => {
            s.error(
                "unix_socket_mode",
                format!("{text:?} is not an octal file mode like \"0660\" (write it quoted)"),
            );
            DEFAULT_SOCKET_MODE
        }
    }
}

/// `allowed_uids`: numeric user ids, at least one; only with a Unix socket (`has_socket`).
fn allowed_uids(s: &Section<'_>, has_socket: bool) -> Option<Vec<u32>> {
    let list = s.str_list("allowed_uids")?;
    let mut uids = Vec::new();
    for item in list {
        match item.trim().parse::<u32>() {
            Ok(uid) => uids.push(uid),
            Err(_) => s.error("allowed_uids", format!("{item:?} is not a numeric user id")),
        }
    }
    if uids.is_empty() {
        s.error(
            "allowed_uids",
            "must list at least one user id (omit it to allow every peer that can open \
             the socket)",
        );
    }
    if !has_socket {
        s.error(
            "allowed_uids",
            "applies to the Unix socket only (TCP peers have no user id); set unix_socket too",
        );
    }
    Some(uids)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigErrors};

    const MINIMAL: &str = r#"
        [providers.auth0]
        issuer = "https://dev-x.us.auth0.com/"
        audiences = ["client-1"]

        [cognito]
        region = "us-east-1"
        identity_pool_id = "us-east-1:0f1e2d3c-4b5a-4697-8877-665544332211"
    "#;

    fn errors(grpc: &str) -> String {
        match Config::from_toml(&format!("{MINIMAL}\n[grpc]\n{grpc}")) {
            Ok(_) => String::new(),
            Err(ConfigErrors(e)) => e
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn grpc_is_off_by_default_and_takes_documented_defaults() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert!(!c.grpc.enabled());
        assert_eq!(c.grpc.unix_socket_mode, 0o660);
        assert_eq!(c.grpc.max_message_bytes, 64 * 1024);
        let c = Config::from_toml(&format!(
            "{MINIMAL}\n[grpc]\nlisten = \"127.0.0.1:8903\"\nunix_socket = \"/run/cb.sock\"\n\
             unix_socket_mode = \"0600\"\nallowed_uids = [1000, \"1001\"]\n"
        ))
        .expect("valid");
        assert!(c.grpc.enabled());
        assert_eq!(c.grpc.listen, Some("127.0.0.1:8903".parse().expect("addr")));
        assert_eq!(c.grpc.unix_socket_mode, 0o600);
        assert_eq!(c.grpc.allowed_uids, Some(vec![1000, 1001]));
    }

    #[test]
    fn every_grpc_problem_is_reported_at_once() {
        let all = errors(
            "listen = \"0.0.0.0:8903\"\nunix_socket = \"relative.sock\"\n\
             unix_socket_mode = \"0666\"\nallowed_uids = [\"root\"]\nmax_message_bytes = 10\n\
             admin_token_file = \"token\"\nlisen = 1\n",
        );
        for expected in [
            "grpc.listen: 0.0.0.0:8903 is not a loopback address",
            "grpc.unix_socket: must be an absolute path",
            "grpc.unix_socket_mode: \"0666\" lets every local user connect",
            "grpc.allowed_uids: \"root\" is not a numeric user id",
            "grpc.max_message_bytes: 10 is out of range",
            "grpc.admin_token_file: must be an absolute path",
            "grpc.lisen: unknown setting (did you mean \"listen\"?)",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert!(errors("unix_socket_mode = \"rw\"").contains("not an octal file mode"));
        assert!(errors("unix_socket_mode = \"1777\"").contains("at most \"0777\""));
        assert!(
            errors("listen = \"127.0.0.1:8903\"\nallowed_uids = [1000]")
                .contains("applies to the Unix socket only")
        );
        assert!(errors("listen = \"0.0.0.0:8903\"\nallow_non_loopback = true").is_empty());
    }
}
