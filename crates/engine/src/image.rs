//! Images: inspect, pull, build, remove.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::Error;
use crate::context::{self, CONTEXT_LIMIT};
use crate::engine::{Engine, next_chunk};
use crate::transport::{Call, JsonStream, Lines, ReqBody, Tail, image_segment, stream_error};

/// How many lines of build output a build error keeps.
const TAIL_LINES: usize = 20;

/// What [`Engine::inspect_image`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image id, `sha256:…`.
    pub id: String,
    /// `name:tag` references that point at it.
    pub repo_tags: Vec<String>,
    /// `name@sha256:…` references (images that came from a registry).
    pub repo_digests: Vec<String>,
    /// The user it runs as ("" for root).
    pub user: String,
    /// Its working directory ("" for `/`).
    pub working_dir: String,
    /// `ENTRYPOINT`, when set.
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`, when set.
    pub cmd: Option<Vec<String>>,
    /// `EXPOSE`d ports, as `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
}

/// A build: the context directory, and what to pass to the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// The context directory (its `.dockerignore` is honoured).
    pub context: PathBuf,
    /// The Dockerfile's path inside the context; `Dockerfile` when `None`.
    pub dockerfile: Option<String>,
    /// `--build-arg`s.
    pub args: Vec<(String, String)>,
    /// The stage to build (`--target`).
    pub target: Option<String>,
    /// The tag to give the image (`name:tag`).
    pub tag: String,
    /// Labels to add to the image.
    pub labels: Vec<(String, String)>,
}

/// `POST /build` of `request`, its archive (the context, `dockerfile` inside it) read from `body`.
fn build_call(request: &BuildRequest, dockerfile: &str, body: mpsc::Receiver<io::Result<Bytes>>) -> Call {
    let mut call = Call::post("/build")
        .query("t", &request.tag)
        .query("dockerfile", dockerfile)
        .query("rm", "1")
        .query("forcerm", "1");
    if !request.args.is_empty() {
        call = call.query("buildargs", object(&request.args).to_string());
    }
    if let Some(target) = &request.target {
        call = call.query("target", target);
    }
    if !request.labels.is_empty() {
        call = call.query("labels", object(&request.labels).to_string());
    }
    call.body = ReqBody::Channel(body);
    call.content_type = Some("application/x-tar");
    call
}

/// Writes `request`'s build context as the archive [`Engine::build`] would send (its
/// `.dockerignore` honoured), for a build on another host's engine ([`Engine::build_archive`]);
/// answers the Dockerfile's path inside it.
pub fn write_context(request: &BuildRequest, out: impl io::Write) -> Result<String, Error> {
    let dockerfile = context::dockerfile_path(&request.context, request.dockerfile.as_deref())?;
    context::plan(&request.context, &dockerfile, CONTEXT_LIMIT)?.write(out)?;
    Ok(dockerfile)
}

impl BuildRequest {
    /// A build of `context`'s `Dockerfile`, tagged `tag`, with no arguments.
    pub fn new(context: impl Into<PathBuf>, tag: impl Into<String>) -> BuildRequest {
        BuildRequest {
            context: context.into(),
            dockerfile: None,
            args: Vec::new(),
            target: None,
            tag: tag.into(),
            labels: Vec::new(),
        }
    }
}

/// Splits a reference into what `POST /images/create` takes: `fromImage` and `tag`, the tag
/// being a digest for `name@sha256:…` and `latest` when none is given. A `:` before the last `/`
/// belongs to a registry host's port (`localhost:5000/app` has no tag). `None` for an empty
/// reference.
pub(crate) fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let reference = reference.trim();
    if reference.is_empty() {
        return None;
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    };
    if name.is_empty() {
        return None;
    }
    Some((name, digest.or(tag).filter(|t| !t.is_empty()).unwrap_or("latest")))
}

impl Engine {
    /// `GET /images/{reference}/json`: the image, `None` when the engine does not have it.
    pub async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Raw {
            id: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            #[serde(default)]
            repo_digests: Option<Vec<String>>,
            #[serde(default)]
            config: Option<Config>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Config {
            #[serde(default)]
            user: Option<String>,
            #[serde(default)]
            working_dir: Option<String>,
            #[serde(default)]
            entrypoint: Option<Vec<String>>,
            #[serde(default)]
            cmd: Option<Vec<String>>,
            #[serde(default)]
            exposed_ports: Option<BTreeMap<String, Value>>,
        }

        let reply = self.fetch(Call::get(format!("/images/{}/json", image_segment(reference)))).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let raw: Raw = reply.json()?;
        let config = raw.config.unwrap_or_default();
        Ok(Some(ImageInfo {
            id: raw.id,
            repo_tags: raw.repo_tags.unwrap_or_default(),
            repo_digests: raw.repo_digests.unwrap_or_default(),
            user: config.user.unwrap_or_default(),
            working_dir: config.working_dir.unwrap_or_default(),
            entrypoint: config.entrypoint,
            cmd: config.cmd,
            exposed_ports: config.exposed_ports.unwrap_or_default().into_keys().collect(),
        }))
    }

    /// `POST /images/create?fromImage=…&tag=…`: pulls an image. The engine's messages are read to
    /// the end; an error among them (or a refusal) is [`Error::Pull`] with its text. No timeout:
    /// a pull can rightly take long.
    pub async fn pull(&self, reference: &str) -> Result<(), Error> {
        let pull_error = |message: String| Error::Pull { image: reference.to_string(), message };
        let (name, tag) = split_reference(reference).ok_or_else(|| pull_error("the reference is empty".to_string()))?;
        let call = Call::post("/images/create").query("fromImage", name).query("tag", tag);
        let (request, mut response) = self.send(call).await?;
        if !response.status().is_success() {
            return Err(pull_error(self.error_reply(request, response).await.message()));
        }
        let mut messages = JsonStream::default();
        while let Some(chunk) = next_chunk(self, &request, response.body_mut()).await? {
            let values =
                messages.push(&chunk).map_err(|message| Error::Protocol { request: request.clone(), message })?;
            if let Some(message) = values.iter().find_map(stream_error) {
                return Err(pull_error(message));
            }
        }
        messages.finish().map_err(|message| Error::Protocol { request, message })
    }

    /// Builds an image through `POST /build` from a tar of the context, streamed as it is read.
    /// `progress` gets each line of the build's output. Returns the image id (`sha256:…`). A
    /// failed build is [`Error::Build`] with the engine's message and the output's last lines; a
    /// context that cannot be sent is [`Error::Context`]. No timeout: builds can rightly take long.
    pub async fn build(
        &self,
        request: &BuildRequest,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, Error> {
        let dockerfile = context::dockerfile_path(&request.context, request.dockerfile.as_deref())?;
        let plan = {
            let (root, dockerfile) = (request.context.clone(), dockerfile.clone());
            tokio::task::spawn_blocking(move || context::plan(&root, &dockerfile, CONTEXT_LIMIT)).await.map_err(
                |e| Error::Io { what: "walking the build context".to_string(), source: io::Error::other(e) },
            )??
        };

        self.build_streamed(request, &dockerfile, progress, move |tx| plan.stream(tx)).await
    }

    /// [`Engine::build`] from an archive [`write_context`] made, elsewhere: `request.context` is
    /// not read, and `request.dockerfile` is the Dockerfile's path inside the archive.
    pub async fn build_archive(
        &self,
        request: &BuildRequest,
        archive: &Path,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, Error> {
        let dockerfile = request.dockerfile.clone().unwrap_or_else(|| "Dockerfile".to_string());
        let read_error = |e: io::Error| Error::Context { path: archive.to_path_buf(), message: e.to_string() };
        let mut file = std::fs::File::open(archive).map_err(read_error)?;
        let path = archive.to_path_buf();
        let send_file = move |tx: mpsc::Sender<io::Result<Bytes>>| {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match io::Read::read(&mut file, &mut chunk) {
                    Ok(0) => return Ok(()),
                    // The request ended: its own error says why.
                    Ok(n) if tx.blocking_send(Ok(Bytes::copy_from_slice(&chunk[..n]))).is_err() => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(Error::Context { path, message: e.to_string() }),
                }
            }
        };
        self.build_streamed(request, &dockerfile, progress, send_file).await
    }

    /// `POST /build` with the archive `write` sends, from a blocking thread, into the channel
    /// the request body reads. A failure there is kept here before the body is ended with an
    /// error, so when the request fails because of it, the error reported is the one that
    /// names the file.
    async fn build_streamed(
        &self,
        request: &BuildRequest,
        dockerfile: &str,
        progress: &mut (dyn FnMut(&str) + Send),
        write: impl FnOnce(mpsc::Sender<io::Result<Bytes>>) -> Result<(), Error> + Send + 'static,
    ) -> Result<String, Error> {
        let (tx, rx) = mpsc::channel(8);
        let failure: Arc<Mutex<Option<Error>>> = Arc::default();
        let failure_slot = Arc::clone(&failure);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write(tx.clone()) {
                *failure_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                let _ = tx.blocking_send(Err(io::Error::other("the build context could not be read")));
            }
        });
        let result = self.run_build(build_call(request, dockerfile, rx), &request.tag, progress).await;
        match failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => result,
        }
    }

    async fn run_build(&self, call: Call, tag: &str, progress: &mut (dyn FnMut(&str) + Send)) -> Result<String, Error> {
        let build_error =
            |message: String, output_tail: Vec<String>| Error::Build { image: tag.to_string(), message, output_tail };
        let (request, mut response) = self.send(call).await?;
        if !response.status().is_success() {
            return Err(build_error(self.error_reply(request, response).await.message(), Vec::new()));
        }
        let protocol = |message: String| Error::Protocol { request: request.clone(), message };
        let mut messages = JsonStream::default();
        let mut lines = Lines::default();
        let mut tail = Tail::new(TAIL_LINES);
        let mut id = None;
        let mut failed = None;
        let mut report = |text: Vec<String>, tail: &mut Tail| {
            for line in text {
                tail.push(&line);
                progress(&line);
            }
        };
        'read: while let Some(chunk) = next_chunk(self, &request, response.body_mut()).await? {
            for message in messages.push(&chunk).map_err(protocol)? {
                if let Some(error) = stream_error(&message) {
                    failed = Some(error);
                    break 'read;
                }
                let mut text = Vec::new();
                if let Some(stream) = message.get("stream").and_then(Value::as_str) {
                    lines.push(&strip_stderr_color(stream), &mut text);
                } else if let Some(status) = message.get("status").and_then(Value::as_str)
                    && message.get("progress").is_none()
                {
                    // Pulling a base image: its steps, without the progress bars.
                    let line = match message.get("id").and_then(Value::as_str) {
                        Some(layer) => format!("{layer}: {status}"),
                        None => status.to_string(),
                    };
                    lines.push(&line, &mut text);
                    lines.push("\n", &mut text);
                }
                report(text, &mut tail);
                if let Some(image) = message.pointer("/aux/ID").and_then(Value::as_str) {
                    id = Some(image.to_string());
                }
            }
        }
        let mut text = Vec::new();
        lines.finish(&mut text);
        report(text, &mut tail);
        if let Some(message) = failed {
            return Err(build_error(message, tail.into_vec()));
        }
        messages.finish().map_err(protocol)?;
        if let Some(id) = id {
            return Ok(id);
        }
        // An engine that does not report the id: the tag points at what was built.
        match self.inspect_image(tag).await? {
            Some(image) => Ok(image.id),
            None => Err(protocol(format!("the build ended without an error, but there is no image {tag}"))),
        }
    }

    /// `DELETE /images/{reference}`: removes a tag, and the image once no tag is left. An absent
    /// image is fine; one a container uses is [`Error::Conflict`] unless `force`.
    pub async fn remove_image(&self, reference: &str, force: bool) -> Result<(), Error> {
        let call = Call::delete(format!("/images/{}", image_segment(reference))).query("force", flag(force));
        let reply = self.fetch(call).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(()),
            StatusCode::CONFLICT => {
                Err(Error::Conflict { what: format!("image {reference}"), message: reply.message() })
            }
            _ => reply.ok(),
        }
    }
}

/// Docker's classic builder wraps each write of a step's stderr in red (`ESC[91m` … `ESC[0m`);
/// the lines are reported without that, so logs and error tails stay plain text.
fn strip_stderr_color(text: &str) -> String {
    text.replace("\u{1b}[91m", "").replace("\u{1b}[0m", "")
}

/// `[(k, v)]` as a JSON object (build args, labels).
pub(crate) fn object(pairs: &[(String, String)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

pub(crate) fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag() {
        let cases = [
            ("busybox", Some(("busybox", "latest"))),
            ("busybox:1.36", Some(("busybox", "1.36"))),
            ("library/busybox:1", Some(("library/busybox", "1"))),
            ("localhost:5000/app", Some(("localhost:5000/app", "latest"))),
            ("localhost:5000/team/app:v2", Some(("localhost:5000/team/app", "v2"))),
            ("app@sha256:abcd", Some(("app", "sha256:abcd"))),
            ("localhost:5000/app:v1@sha256:abcd", Some(("localhost:5000/app", "sha256:abcd"))),
            ("app:", Some(("app", "latest"))),
            ("", None),
            (":tag", None),
        ];
        for (reference, expected) in cases {
            assert_eq!(split_reference(reference), expected, "{reference}");
        }
    }

    #[test]
    fn build_output_loses_the_stderr_colour() {
        assert_eq!(strip_stderr_color("\u{1b}[91mto-stderr\n\u{1b}[0m"), "to-stderr\n");
        assert_eq!(strip_stderr_color("plain \u{1b}[1mbold"), "plain \u{1b}[1mbold");
    }

    #[test]
    fn pairs_become_json_objects() {
        let pairs = vec![("A".to_string(), "1".to_string()), ("quote".to_string(), "a\"b".to_string())];
        assert_eq!(object(&pairs).to_string(), r#"{"A":"1","quote":"a\"b"}"#);
    }
}
