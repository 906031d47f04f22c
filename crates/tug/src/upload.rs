//! Uploads: files a remote `tug --host` sends before a deploy (a source's bundle), streamed to
//! the state folder's `uploads/` and named by their SHA-256.
//!
//! An upload is authenticated before its body is read: its path names the digest the
//! signature covers, and the body is checked against that digest as it arrives, so no
//! unsigned client makes the daemon write a byte. One upload at a time; its length is
//! declared and capped, and so are all uploads kept together; a body slower than 1 MiB/s
//! (past the first 30 s) is dropped; a refused one leaves nothing. The deploy that names an
//! upload removes it; one that no deploy named is removed by the next upload after an hour.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::daemon::{App, Body, error, json};

/// The state folder's folder of uploads (the CLI writes its bundles there too, before sending).
pub const UPLOADS: &str = "uploads";
/// The largest upload: a source's cap (4 GiB) and the bundle's framing.
const MAX_UPLOAD: u64 = (4 << 30) + (64 << 20);
/// The most all kept uploads may take together (several services' sources for one deploy).
const MAX_KEPT: u64 = 16 << 30;
/// The least throughput an upload keeps, past [`GRACE`].
const MIN_RATE: u64 = 1 << 20;
const GRACE: Duration = Duration::from_secs(30);
/// An upload no deploy named within this long is removed (by the next upload).
const STALE: Duration = Duration::from_secs(3600);

/// A SHA-256 as a path names it: 64 lowercase hex digits.
pub fn valid_digest(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The uploads folder of `state_dir`, made (private: an upload may hold files only their
/// owner may read) if need be. The CLI writes what it sends there too.
pub fn folder(state_dir: &Path) -> Result<PathBuf, String> {
    let folder = state_dir.join(UPLOADS);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&folder)
        .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    Ok(folder)
}

/// Where the upload with `digest` is kept.
pub fn path_of(state_dir: &Path, digest: &str) -> PathBuf {
    state_dir.join(UPLOADS).join(digest)
}

/// `PUT /v1/uploads/<digest>`: authenticated by `header` against `digest`, then streamed to
/// disk and kept only if the body has that digest. Answers whether the request was signed
/// (its connection is then a client's, never closed to make room).
pub(crate) async fn receive(
    app: &App,
    request: Request<Incoming>,
    header: Option<&str>,
    target: &str,
    digest: &str,
) -> (Response<Body>, bool) {
    // The signature first: nothing about the request is answered to a client without the key.
    if let Err(e) = app.verify_digest(header, "PUT", target, digest) {
        return (error(StatusCode::UNAUTHORIZED, e.to_string()), false);
    }
    (receive_signed(app, request, digest).await, true)
}

async fn receive_signed(app: &App, request: Request<Incoming>, digest: &str) -> Response<Body> {
    if !valid_digest(digest) {
        return error(StatusCode::BAD_REQUEST, "an upload's path names its SHA-256: 64 lowercase hex digits");
    }
    let Some(declared) = hyper::body::Body::size_hint(request.body()).exact() else {
        return error(StatusCode::LENGTH_REQUIRED, "an upload needs a Content-Length");
    };
    if declared > MAX_UPLOAD {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("an upload is at most {} GiB", MAX_UPLOAD >> 30));
    }
    // The client's body waits meanwhile: shorter than its 30 s write timeout, then a 503 it
    // retries.
    let Ok(_one_at_a_time) = tokio::time::timeout(Duration::from_secs(20), app.uploads.lock()).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "another upload is being received: retry");
    };
    let folder = match folder(&app.supervisor.config().state_dir) {
        Ok(folder) => folder,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    // The same upload sent again replaces itself: it does not count twice.
    let again = std::fs::metadata(path_of(&app.supervisor.config().state_dir, digest)).map_or(0, |m| m.len());
    let kept = remove_stale(&folder).saturating_sub(again);
    if kept + declared > MAX_KEPT {
        return error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the daemon already keeps {} GiB of uploads no deploy has used yet", kept >> 30),
        );
    }
    let tmp = folder.join(format!(".tmp-{digest}"));
    let limit = GRACE + Duration::from_secs(declared / MIN_RATE);
    let written = match tokio::time::timeout(limit, write(request.into_body(), &tmp, declared)).await {
        Ok(written) => written,
        Err(_) => Err((StatusCode::REQUEST_TIMEOUT, format!("the upload did not arrive within {} s", limit.as_secs()))),
    };
    let checked = written.and_then(|sha| {
        if sha == digest {
            Ok(())
        } else {
            Err((StatusCode::BAD_REQUEST, "the upload's content does not have the SHA-256 its path names".into()))
        }
    });
    let kept = checked.and_then(|()| {
        std::fs::rename(&tmp, path_of(&app.supervisor.config().state_dir, digest))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot keep the upload: {e}")))
    });
    match kept {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "bytes": declared })),
        Err((status, why)) => {
            let _ = std::fs::remove_file(&tmp);
            error(status, why)
        }
    }
}

/// Streams `body` into a new private file at `to`; answers the SHA-256 of what was written.
async fn write(mut body: Incoming, to: &Path, declared: u64) -> Result<String, (StatusCode, String)> {
    let failed = |e: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the upload: {e}"));
    let _ = std::fs::remove_file(to);
    // Plain writes: a chunk goes to the page cache in microseconds; only the final sync waits
    // for the disk, and it runs off the runtime's threads.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to).map_err(failed)?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (StatusCode::BAD_REQUEST, format!("the upload could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if received > declared {
            return Err((StatusCode::BAD_REQUEST, "the upload is longer than its Content-Length".into()));
        }
        hasher.update(&data);
        file.write_all(&data).map_err(failed)?;
    }
    if received != declared {
        return Err((StatusCode::BAD_REQUEST, format!("the upload ended after {received} of {declared} bytes")));
    }
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|e| failed(std::io::Error::other(e)))?
        .map_err(failed)?;
    Ok(tug_proto::auth::hex(&hasher.finalize()))
}

/// Removes uploads (and partial ones) older than [`STALE`]; answers the bytes the others take.
fn remove_stale(folder: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(folder) else { return 0 };
    let now = SystemTime::now();
    let mut kept = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta.modified().is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE));
        if old {
            let _ = std::fs::remove_file(entry.path());
        } else {
            kept += meta.len();
        }
    }
    kept
}

/// `GET /v1/sources?service=NAME&digest=HEX`: whether this host has that copy of a service's
/// source, so a remote client sends it only once.
pub(crate) fn has_source(state_dir: &Path, target: &str) -> Response<Body> {
    let service = crate::daemon::query_text(target, "service").unwrap_or_default();
    let digest = crate::daemon::query_text(target, "digest").unwrap_or_default();
    if !tug_supervisor::is_service_name(service) || !crate::source::is_digest(digest) {
        return error(StatusCode::BAD_REQUEST, "GET /v1/sources?service=NAME&digest=HEX (16 hex digits)");
    }
    let present = crate::source::existing(service, digest, state_dir).is_some();
    json(StatusCode::OK, &serde_json::json!({ "present": present }))
}
