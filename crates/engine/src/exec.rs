//! Commands run in a running container (`exec`): output, optional stdin, exit code.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;

use crate::Error;
use crate::engine::Engine;
use crate::stream::Output;
use crate::transport::{Call, segment};

/// How often [`ExecSession::exit_code`] asks whether the command has ended.
const POLL: Duration = Duration::from_millis(20);

/// A command to run in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecConfig {
    /// The program and its arguments (no shell unless you ask for one).
    pub cmd: Vec<String>,
    /// Environment variables, added to the container's.
    pub env: Vec<(String, String)>,
    /// `user[:group]`; the container's when `None`.
    pub user: Option<String>,
    /// The container's when `None`.
    pub working_dir: Option<String>,
    /// Give the command a stdin ([`ExecSession::stdin`]); without it the command's stdin is empty.
    pub stdin: bool,
}

impl ExecConfig {
    /// `cmd` with the container's environment, user and directory, and no stdin.
    pub fn new<S: Into<String>>(cmd: impl IntoIterator<Item = S>) -> ExecConfig {
        ExecConfig { cmd: cmd.into_iter().map(Into::into).collect(), ..ExecConfig::default() }
    }
}

/// A running exec: read [`ExecSession::output`] to its end, write to [`ExecSession::stdin`] if
/// asked for (and close it, so the command sees end of file), then [`ExecSession::exit_code`].
#[derive(Debug)]
pub struct ExecSession {
    engine: Engine,
    id: String,
    /// The command's stdout and stderr.
    pub output: Output,
    /// The command's stdin, when [`ExecConfig::stdin`] was set.
    pub stdin: Option<ExecStdin>,
}

/// The write side of an exec's connection: the command's stdin. [`ExecStdin::close`] (or dropping
/// it) shuts the socket's write side down, which the engine passes on as end of file.
#[derive(Debug)]
pub struct ExecStdin {
    write: OwnedWriteHalf,
}

impl ExecStdin {
    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write
            .write_all(data)
            .await
            .map_err(|source| Error::Io { what: "writing to the command's stdin".to_string(), source })
    }

    /// Ends the command's stdin.
    pub async fn close(mut self) -> Result<(), Error> {
        self.write
            .shutdown()
            .await
            .map_err(|source| Error::Io { what: "closing the command's stdin".to_string(), source })
    }
}

impl AsyncWrite for ExecStdin {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

impl ExecSession {
    /// The exec's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The command's exit code. Closes stdin if it is still here, reads (and drops) whatever
    /// output is left, then asks the engine (`GET /exec/{id}/json`) every 20 ms until the command
    /// is no longer running. No timeout: bound it yourself if the command may not end.
    pub async fn exit_code(&mut self) -> Result<i64, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Raw {
            running: bool,
            #[serde(default)]
            exit_code: Option<i64>,
        }
        if let Some(stdin) = self.stdin.take() {
            // Dropping would shut it down too; closing says so if that fails.
            let _ = stdin.close().await;
        }
        while self.output.next().await?.is_some() {}
        loop {
            let reply = self.engine.fetch(Call::get(format!("/exec/{}/json", segment(&self.id)))).await?;
            if reply.status == StatusCode::NOT_FOUND {
                return Err(Error::NotFound { what: format!("exec {}", self.id), message: reply.message() });
            }
            if !reply.is_success() {
                return Err(reply.into_error());
            }
            let raw: Raw = reply.json()?;
            if !raw.running {
                return raw.exit_code.ok_or_else(|| Error::Protocol {
                    request: reply.request,
                    message: "the command has ended but has no exit code".to_string(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Engine {
    /// The host pid of exec `exec_id`'s process while it runs (`GET /exec/{id}/json`): the
    /// engine has no way to stop an exec, so a caller that gives up on one kills it by pid.
    pub async fn exec_pid(&self, exec_id: &str) -> Result<Option<i32>, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Raw {
            running: bool,
            #[serde(default)]
            pid: i64,
        }
        let reply = self.fetch(Call::get(format!("/exec/{}/json", segment(exec_id)))).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let raw: Raw = reply.json()?;
        Ok((raw.running && raw.pid > 0).then(|| i32::try_from(raw.pid).ok()).flatten())
    }

    /// Runs a command in the running container `id`: `POST /containers/{id}/exec`, then
    /// `POST /exec/{exec id}/start`, upgraded to a raw stream like [`Engine::attach`]. A container
    /// that is not running is [`Error::Conflict`]; one that does not exist, [`Error::NotFound`].
    pub async fn exec(&self, id: &str, config: &ExecConfig) -> Result<ExecSession, Error> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let what = format!("container {id}");
        let mut body = json!({
            "AttachStdin": config.stdin,
            "AttachStdout": true,
            "AttachStderr": true,
            "Tty": false,
            "Cmd": config.cmd,
            "Env": config.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        });
        if let Some(user) = &config.user {
            body["User"] = json!(user);
        }
        if let Some(dir) = &config.working_dir {
            body["WorkingDir"] = json!(dir);
        }
        let reply = self.fetch(Call::post(format!("/containers/{}/exec", segment(id))).json(&body)).await?;
        let exec_id = match reply.status {
            StatusCode::NOT_FOUND => return Err(Error::NotFound { what, message: reply.message() }),
            StatusCode::CONFLICT => return Err(Error::Conflict { what, message: reply.message() }),
            status if status.is_success() => reply.json::<Created>()?.id,
            _ => return Err(reply.into_error()),
        };
        let start = Call::post(format!("/exec/{}/start", segment(&exec_id)))
            .json(&json!({"Detach": false, "Tty": false}))
            .upgrade();
        let (output, write) = self.open_stream(start, config.stdin, &format!("exec {exec_id} in {what}")).await?;
        Ok(ExecSession { engine: self.clone(), id: exec_id, output, stdin: write.map(|write| ExecStdin { write }) })
    }
}
