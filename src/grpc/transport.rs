//! The Unix-socket transport: socket creation with a file mode, and the peer-UID allow-list.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{UnixListener, UnixStream};

use super::GrpcStartError;

/// Creates the socket at `path` with `mode`. A stale socket (nothing listening) is replaced; a
/// live one, or any other kind of file, is an error.
pub(super) fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, GrpcStartError> {
    let err = |message: String| GrpcStartError::Socket {
        path: path.to_owned(),
        message,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err("a file that is not a socket exists there".to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(
                "another process is listening on it (is credbroker already running?)".to_owned(),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(format!("cannot set its mode to {mode:o}: {e}")))?;
    Ok(listener)
}

/// Accepted connections, without those whose peer user id is not allowed (closed at once).
pub(super) fn incoming(
    listener: UnixListener,
    allowed_uids: Option<Vec<u32>>,
) -> impl Stream<Item = Result<UnixStream, std::io::Error>> {
    futures_util::stream::unfold((listener, allowed_uids), |(listener, allowed)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Some(uids) = &allowed {
                match stream.peer_cred() {
                    Ok(cred) if uids.contains(&cred.uid()) => {}
                    Ok(cred) => {
                        tracing::warn!(
                            uid = cred.uid(),
                            "gRPC socket connection refused: the peer's user id is not in \
                                 grpc.allowed_uids"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC socket connection refused: no peer credentials");
                        continue;
                    }
                }
            }
            return Some((Ok(stream), (listener, allowed)));
        }
    })
}
