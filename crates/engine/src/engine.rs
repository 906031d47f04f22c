//! The client: one connection per request, timeouts, and the mapping of answers to errors.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::transport::{Call, ERROR_LIMIT, JSON_LIMIT, ReqBody, error_message, read_bounded};
use crate::{Endpoint, Error};

/// The Docker Engine API version every request is made with (`/v1.41/...`, Docker Engine 20.10).
pub const API_VERSION: &str = "1.41";

/// How long an ordinary request may take unless [`Engine::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one engine. Cheap to clone; each request opens its own connection, so clones can
/// be used from many tasks at once.
#[derive(Debug, Clone)]
pub struct Engine {
    endpoint: Arc<Endpoint>,
    timeout: Duration,
}

/// What [`Engine::version`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// "Docker Engine" or "Podman Engine".
    pub product: String,
    /// The engine's own version ("20.10.24", "4.9.3").
    pub version: String,
    /// The newest API version it speaks ("1.41").
    pub api_version: String,
    /// The oldest API version it accepts, when it says.
    pub min_api_version: Option<String>,
}

impl Version {
    /// Whether this is Podman's compatible service rather than Docker.
    pub fn is_podman(&self) -> bool {
        self.product.starts_with("Podman")
    }
}

/// An answer read whole (bounded).
pub(crate) struct Reply {
    pub(crate) request: String,
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Protocol { request: self.request.clone(), message: format!("bad JSON: {e}") })
    }

    /// The engine's explanation, for an error.
    pub(crate) fn message(&self) -> String {
        error_message(self.status, &self.body)
    }

    /// The answer as an [`Error::Api`].
    pub(crate) fn into_error(self) -> Error {
        let message = self.message();
        Error::Api { request: self.request, status: self.status.as_u16(), message }
    }

    /// `Ok(())` for a success, else the [`Error::Api`].
    pub(crate) fn ok(self) -> Result<(), Error> {
        if self.is_success() { Ok(()) } else { Err(self.into_error()) }
    }
}

impl Engine {
    /// A client for the engine at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Engine {
        Engine { endpoint: Arc::new(endpoint), timeout: DEFAULT_TIMEOUT }
    }

    /// The same client with another timeout for ordinary requests (30 s by default). Requests
    /// that can rightly take long (wait, attach and exec streams, build, pull) have none: bound
    /// them with `tokio::time::timeout` where that makes sense.
    pub fn with_timeout(mut self, timeout: Duration) -> Engine {
        self.timeout = timeout;
        self
    }

    /// The timeout of ordinary requests.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where this client connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET /info`'s `DockerRootDir`: where the engine keeps images, containers and volumes
    /// (Podman's compatible `/info` carries it too: its store's graph root, checked on 4.3).
    pub async fn data_root(&self) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default, rename = "DockerRootDir")]
            root: Option<String>,
        }
        let reply = self.fetch(Call::get("/info")).await?;
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        Ok(reply.json::<Raw>()?.root.filter(|r| !r.is_empty()))
    }

    /// `GET /version` (unversioned, so an engine too old for 1.41 still answers): the product
    /// ("Docker Engine" or "Podman Engine", from the components), its version and API version.
    /// An engine that cannot be reached is [`Error::Unreachable`], naming the socket.
    pub async fn version(&self) -> Result<Version, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Raw {
            #[serde(default)]
            platform: Option<Platform>,
            #[serde(default)]
            components: Option<Vec<Component>>,
            #[serde(default)]
            version: String,
            #[serde(default)]
            api_version: String,
            #[serde(default, rename = "MinAPIVersion")]
            min_api_version: Option<String>,
        }
        #[derive(Deserialize)]
        struct Platform {
            #[serde(default, rename = "Name")]
            name: String,
        }
        #[derive(Deserialize)]
        struct Component {
            #[serde(default, rename = "Name")]
            name: String,
        }

        let mut call = Call::get("/version");
        call.unversioned = true;
        let reply = self.fetch(call).await?;
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let raw: Raw = reply.json()?;
        let components = raw.components.unwrap_or_default();
        let platform = raw.platform.map(|p| p.name).unwrap_or_default();
        let product = if let Some(podman) = components.iter().find(|c| c.name.starts_with("Podman")) {
            podman.name.clone()
        } else if platform.starts_with("Docker") {
            // "Docker Engine - Community"; Debian's build leaves it empty.
            "Docker Engine".to_string()
        } else if platform.to_ascii_lowercase().contains("podman") {
            "Podman Engine".to_string()
        } else {
            "Docker Engine".to_string()
        };
        Ok(Version {
            product,
            version: raw.version,
            api_version: raw.api_version,
            min_api_version: raw.min_api_version.filter(|v| !v.is_empty()),
        })
    }

    /// Sends a request and returns the response head; the body is left to the caller.
    pub(crate) async fn send(&self, call: Call) -> Result<(String, Response<Incoming>), Error> {
        let request = call.describe();
        let socket = &self.endpoint.socket;
        let stream = UnixStream::connect(socket).await.map_err(|source| Error::Unreachable {
            socket: socket.clone(),
            origin: self.endpoint.origin,
            source,
        })?;
        let connection_error = |source| Error::Connection { request: request.clone(), socket: socket.clone(), source };
        let (mut sender, connection) =
            http1::handshake::<_, ReqBody>(TokioIo::new(stream)).await.map_err(connection_error)?;
        // The connection runs beside the request; with upgrades so attach and exec can take the
        // stream over. It ends when the exchange does.
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });

        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(call.target())
            .header(HOST, "docker")
            .header(USER_AGENT, concat!("tug-engine/", env!("CARGO_PKG_VERSION")));
        if let Some(content_type) = call.content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if call.upgrade {
            builder = builder.header(CONNECTION, "Upgrade").header(UPGRADE, "tcp");
        }
        let http_request = builder.body(call.body).map_err(|e| Error::Protocol {
            request: request.clone(),
            message: format!("cannot form the request: {e}"),
        })?;
        let response = sender.send_request(http_request).await.map_err(connection_error)?;
        Ok((request, response))
    }

    /// Sends a request and reads the whole answer (bounded), within the client's timeout.
    pub(crate) async fn fetch(&self, call: Call) -> Result<Reply, Error> {
        self.fetch_within(call, Some(self.timeout)).await
    }

    /// [`Engine::fetch`] with a chosen timeout, `None` for none (wait).
    pub(crate) async fn fetch_within(&self, call: Call, timeout: Option<Duration>) -> Result<Reply, Error> {
        let request = call.describe();
        let exchange = async {
            let (request, mut response) = self.send(call).await?;
            let status = response.status();
            let limit = if status.is_success() { JSON_LIMIT } else { ERROR_LIMIT };
            let body = read_bounded(response.body_mut(), limit, &request)
                .await
                .map_err(|message| Error::Protocol { request: request.clone(), message })?;
            Ok(Reply { request, status, body })
        };
        match timeout {
            None => exchange.await,
            Some(after) => tokio::time::timeout(after, exchange)
                .await
                .unwrap_or_else(|_| Err(Error::Timeout { request, socket: self.endpoint.socket.clone(), after })),
        }
    }

    /// Reads an error answer whose head is already in (a streaming request that failed).
    pub(crate) async fn error_reply(&self, request: String, mut response: Response<Incoming>) -> Reply {
        let status = response.status();
        let body =
            match tokio::time::timeout(self.timeout, read_bounded(response.body_mut(), ERROR_LIMIT, &request)).await {
                Ok(Ok(body)) => body,
                // An unreadable error body still leaves the status to report.
                _ => Vec::new(),
            };
        Reply { request, status, body }
    }

    /// The error for a timeout of a streaming request.
    pub(crate) fn timeout_error(&self, request: String, after: Duration) -> Error {
        Error::Timeout { request, socket: self.endpoint.socket.clone(), after }
    }

    /// The error for a broken response stream.
    pub(crate) fn body_error(&self, request: &str, e: hyper::Error) -> Error {
        Error::Connection { request: request.to_string(), socket: self.endpoint.socket.clone(), source: e }
    }
}

/// The next data chunk of a streamed answer, `None` at its end.
pub(crate) async fn next_chunk(engine: &Engine, request: &str, body: &mut Incoming) -> Result<Option<Bytes>, Error> {
    use http_body_util::BodyExt;
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(engine.body_error(request, e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::JSON_LIMIT;
    use crate::{BuildRequest, ContainerConfig, ExecConfig, Origin};

    /// The daemon runs these on a multi-threaded runtime: every future must be `Send`.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let engine = Engine::new(Endpoint { socket: "/nowhere.sock".into(), origin: Origin::Default });
        let request = BuildRequest::new("/nowhere", "x");
        let mut progress = |_: &str| {};
        send(&engine);
        send(&engine.version());
        send(&engine.build(&request, &mut progress));
        send(&engine.pull("x"));
        send(&engine.create_container("x", &ContainerConfig::new("x")));
        send(&engine.attach("x"));
        send(&engine.wait("x"));
        send(&engine.exec("x", &ExecConfig::new(["true"])));
        send(&engine.list_containers(&[("a", "b")]));
        send(&engine.network_gateway("bridge"));
    }

    /// An engine that answers every connection with `answer` (then closes, unless `hold`),
    /// whatever was asked: for answers a real engine would not give.
    async fn fake(name: &str, answer: Vec<u8>, hold: bool) -> (Engine, Removed) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = std::env::temp_dir().join(format!("tug-engine-fake-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let _ = stream.write_all(&answer).await;
                    if hold {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                });
            }
        });
        (Engine::new(Endpoint { socket: socket.clone(), origin: Origin::Field }), Removed(socket))
    }

    /// Removes the fake's socket file at the end of the test.
    struct Removed(std::path::PathBuf);

    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 0, 0, 0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn bad_json_is_a_protocol_error() {
        let (engine, _socket) =
            fake("json", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"Id\": 1}".to_vec(), false).await;
        let error = engine.inspect_container("x").await.unwrap_err();
        assert!(
            matches!(&error, Error::Protocol { request, .. } if request == "GET /v1.41/containers/x/json"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused_not_read() {
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", JSON_LIMIT + 1).into_bytes();
        let mut answer = answer;
        answer.extend(std::iter::repeat_n(b' ', JSON_LIMIT + 1));
        let (engine, _socket) = fake("big", answer, false).await;
        let error = engine.list_containers(&[]).await.unwrap_err();
        assert!(error.to_string().contains("is over"), "{error}");
    }

    #[tokio::test]
    async fn errors_carry_the_engine_message() {
        let body = r#"{"message":"No such container: x"}"#;
        let answer = format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let (engine, _socket) = fake("message", answer.into_bytes(), false).await;
        let error = engine.list_volumes(&[]).await.unwrap_err();
        assert_eq!(error.to_string(), "GET /v1.41/volumes failed (500): No such container: x");
        assert_eq!(error.status(), Some(500));
    }

    #[tokio::test]
    async fn a_silent_engine_times_out() {
        let (engine, _socket) = fake("silent", Vec::new(), true).await;
        let engine = engine.with_timeout(Duration::from_millis(200));
        let error = engine.version().await.unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
        assert!(error.to_string().contains("GET /version") && error.to_string().contains("200ms"), "{error}");
        let error = engine.attach("x").await.unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn attach_reads_a_stream_that_is_not_upgraded() {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n".to_vec();
        answer.extend(frame(1, b"out"));
        answer.extend(frame(2, b"err"));
        let (engine, _socket) = fake("plain", answer, false).await;
        let mut output = engine.attach("x").await.unwrap();
        assert_eq!(output.collect().await.unwrap(), (b"out".to_vec(), b"err".to_vec()));
    }

    #[tokio::test]
    async fn an_upgraded_stream_with_a_bad_frame_is_a_protocol_error() {
        let mut answer = b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".to_vec();
        answer.extend(frame(1, b"fine"));
        answer.extend(frame(7, b"bad"));
        let (engine, _socket) = fake("frames", answer, false).await;
        let mut output = engine.attach("x").await.unwrap();
        assert_eq!(output.next().await.unwrap(), Some((crate::StreamKind::Stdout, b"fine".to_vec())));
        let error = output.next().await.unwrap_err();
        assert!(error.to_string().contains("unknown stream type 7"), "{error}");
    }

    #[tokio::test]
    async fn a_pull_error_in_the_stream_is_a_pull_error() {
        let body = "{\"status\":\"Pulling\"}\r\n{\"errorDetail\":{\"message\":\"manifest unknown\"},\"error\":\"manifest unknown\"}\r\n";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &body[..5],
            body.len() - 5,
            &body[5..]
        );
        let (engine, _socket) = fake("pull", answer.into_bytes(), false).await;
        let error = engine.pull("app:1").await.unwrap_err();
        assert_eq!(error.to_string(), "pulling app:1 failed: manifest unknown");
    }

    #[tokio::test]
    async fn the_blocking_cleanup_refuses_to_run_inside_a_runtime() {
        let endpoint = Endpoint { socket: "/nowhere.sock".into(), origin: Origin::Default };
        let error = crate::remove_labelled_containers_blocking(&endpoint, ("a", "b"), Duration::from_secs(1));
        assert!(error.unwrap_err().to_string().contains("inside a tokio runtime"));
    }
}
