//! Commands a person runs against the stack, streamed back to them: `tug exec` (a command
//! inside a running instance, whatever its driver) and `tug run` (a one-off instance with a
//! service's configuration, removed when it ends). Their output has the instance's secret
//! values masked, as its log has.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tug_logs::{LineSplitter, Stream};
use tug_proto::spec::{CommandSpec, Kind, RunRequest, Value};

use crate::driver::{self, ExecEvent, Source};
use crate::{Error, Supervisor, instance, ports};

/// Output chunks in flight between the command and whoever reads it.
const BUFFERED: usize = 64;

impl Supervisor {
    /// `tug exec TARGET -- CMD`: runs `command` inside `target` (an instance, or a service:
    /// its first instance that is up).
    pub fn exec(&self, target: &str, command: Vec<String>) -> Result<mpsc::Receiver<ExecEvent>, Error> {
        if command.is_empty() {
            return Err(Error::BadRequest("say which command to run".into()));
        }
        let (exec, secrets) = {
            let table = self.inner.lock();
            let named = table.instances.get(target);
            let known = named.is_some() || table.services.contains_key(target);
            let row = named.or_else(|| {
                table
                    .instances
                    .values()
                    .find(|i| i.status.service == target && i.status.state.is_up() && i.exec.is_some())
            });
            match row.and_then(|r| r.exec.clone()) {
                Some(exec) => exec,
                None if known => {
                    return Err(Error::Conflict(format!("`{target}` has no running instance to run a command in")));
                }
                None => return Err(Error::NotFound(format!("no service or instance named `{target}`"))),
            }
        };
        let (raw, events) = mpsc::channel(BUFFERED);
        let (masked, out) = mpsc::channel(BUFFERED);
        tokio::spawn(async move { exec.stream(command, raw).await });
        tokio::spawn(mask(events, masked, secrets));
        Ok(out)
    }

    /// `tug run SERVICE [-- CMD]`: a one-off instance of `request.service`, with its command
    /// (or the one given), streamed; no router sends it traffic, and it is removed when it
    /// ends, or stopped when whoever asked goes away.
    pub fn run_one_off(&self, request: RunRequest) -> Result<mpsc::Receiver<ExecEvent>, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        self.refuse_if_shutting_down()?;
        let RunRequest { project, engine, service, command } = request;
        crate::validate_service(&service)?;
        let mut spec = service;
        if !command.is_empty() {
            spec.command = Some(CommandSpec::Argv(command.into_iter().map(Value::plain).collect()));
        }
        let name = format!("{}-run-{}", spec.name, NEXT.fetch_add(1, Ordering::Relaxed));
        let inner = self.inner.clone();
        let (port, dependencies) = {
            let mut table = inner.lock();
            if table.project.is_empty() {
                table.project = project;
            }
            if table.engine.is_none() {
                table.engine = engine;
            }
            let port = match spec.kind {
                Kind::Service if spec.port.is_some() || spec.container.is_some() => {
                    ports::allocate(&mut table.ports, &inner.config.host, inner.config.port_range)
                }
                _ => None,
            };
            let dependencies = spec
                .depends_on
                .iter()
                .filter_map(|(d, _)| Some((d.clone(), table.specs.get(d).and_then(|s| s.port)?)))
                .collect::<Vec<_>>();
            (port, dependencies)
        };
        let (events, out) = mpsc::channel(BUFFERED);
        tokio::spawn(async move {
            let ended = one_off(&inner, &spec, &name, port, dependencies, &events).await;
            if let Some(port) = port {
                inner.lock().ports.remove(&port);
            }
            let _ = events
                .send(match ended {
                    Ok(code) => ExecEvent::Exit(code),
                    Err(e) => ExecEvent::Failed(format!("{name}: {e}")),
                })
                .await;
        });
        Ok(out)
    }
}

async fn one_off(
    inner: &Arc<crate::Inner>,
    spec: &tug_proto::spec::ServiceSpec,
    name: &str,
    port: Option<u16>,
    dependencies: Vec<(String, u16)>,
    events: &mpsc::Sender<ExecEvent>,
) -> Result<i32, String> {
    let instance = driver::Instance { inner, spec, name, replica: 0, port, dependencies, cgroup: None };
    let prepared = driver::prepare(instance).await?;
    let secrets = Arc::new(instance::masked_values(
        prepared
            .env
            .iter()
            .filter(|(k, _)| spec.environment.iter().any(|(name, v)| name == k && v.sensitive))
            .map(|(_, v)| v.clone()),
    ));
    let mut running = driver::start(prepared.launch).await?;
    let (raw, chunks) = mpsc::channel(BUFFERED);
    let pumps: Vec<_> = running
        .take_output()
        .into_iter()
        .map(|(stream, source)| tokio::spawn(forward(source, stream, raw.clone())))
        .collect();
    drop(raw);
    let masking = tokio::spawn(mask(chunks, events.clone(), secrets));
    let grace = Duration::from_millis(spec.stop_grace_ms);
    let exit = tokio::select! {
        exit = running.exited() => Some(exit),
        _ = events.closed() => running.stop(spec.stop_signal, grace).await,
    };
    for pump in pumps {
        let _ = tokio::time::timeout(Duration::from_millis(500), pump).await;
    }
    let _ = masking.await;
    running.finish(name).await;
    exit.map(|e| e.code()).ok_or_else(|| "its exit status was lost".into())
}

/// One stream of a run's output, as events.
async fn forward(source: Source, stream: Stream, events: mpsc::Sender<ExecEvent>) {
    match source {
        Source::Pipe(pipe) => driver::forward_pipe(pipe, stream, events).await,
        Source::Engine(mut output) => {
            while let Ok(Some((kind, chunk))) = output.next().await {
                let stream = match kind {
                    tug_engine::StreamKind::Stdout => Stream::Out,
                    tug_engine::StreamKind::Stderr => Stream::Err,
                };
                if events.send(ExecEvent::Output(stream, chunk)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Passes events on with the instance's secret values masked, line by line (a line cut across
/// two chunks is masked whole).
async fn mask(mut events: mpsc::Receiver<ExecEvent>, out: mpsc::Sender<ExecEvent>, secrets: Arc<Vec<Vec<u8>>>) {
    let mut splitters = [LineSplitter::new(64 * 1024), LineSplitter::new(64 * 1024)];
    let index = |stream: Stream| if stream == Stream::Out { 0 } else { 1 };
    let masked = |line: &[u8]| {
        let mut text = instance::redact(line, &secrets).unwrap_or_else(|| line.to_vec());
        text.push(b'\n');
        text
    };
    while let Some(event) = events.recv().await {
        let forward = match event {
            ExecEvent::Output(stream, chunk) => {
                let mut lines = Vec::new();
                splitters[index(stream)].push(&chunk, &mut |line: &[u8]| lines.extend(masked(line)));
                if lines.is_empty() {
                    continue;
                }
                ExecEvent::Output(stream, lines)
            }
            ended => {
                // What is left without a final newline goes first.
                for (stream, splitter) in [Stream::Out, Stream::Err].into_iter().zip(splitters.iter_mut()) {
                    let mut rest = Vec::new();
                    splitter.finish(&mut |line: &[u8]| rest.extend(masked(line)));
                    if !rest.is_empty() && out.send(ExecEvent::Output(stream, rest)).await.is_err() {
                        return;
                    }
                }
                ended
            }
        };
        if out.send(forward).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_masked_line_by_line_even_across_chunks() {
        let (tx, rx) = mpsc::channel(8);
        let (out, mut masked) = mpsc::channel(8);
        let task = tokio::spawn(mask(rx, out, Arc::new(vec![b"hunter2hunter2".to_vec()])));
        tx.send(ExecEvent::Output(Stream::Out, b"token=hunter2".to_vec())).await.unwrap();
        tx.send(ExecEvent::Output(Stream::Out, b"hunter2\nok\npartial".to_vec())).await.unwrap();
        tx.send(ExecEvent::Exit(3)).await.unwrap();
        drop(tx);
        task.await.unwrap();
        let mut seen = Vec::new();
        while let Some(event) = masked.recv().await {
            seen.push(event);
        }
        assert_eq!(
            seen,
            [
                ExecEvent::Output(Stream::Out, b"token=********\nok\n".to_vec()),
                ExecEvent::Output(Stream::Out, b"partial\n".to_vec()),
                ExecEvent::Exit(3),
            ]
        );
    }
}
