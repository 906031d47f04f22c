//! Commands a person runs against the stack, streamed back to them: `tug exec` (a command
//! inside a running instance, whatever its driver) and `tug run` (a one-off instance with a
//! service's configuration, removed when it ends). Their output has the instance's secret
//! values masked, as its log has.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tug_logs::Stream;
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
        let RunRequest { project, engine, service, command, .. } = request;
        crate::validate_service(&service)?;
        let mut spec = service;
        if !command.is_empty() {
            spec.command = Some(CommandSpec::Argv(command.into_iter().map(Value::plain).collect()));
        }
        let name = format!("{}-run-{}", spec.name, NEXT.fetch_add(1, Ordering::Relaxed));
        let inner = self.inner.clone();
        // Through `update`: the engine is recorded in state.json, where whoever cleans up after
        // a killed daemon finds it.
        let (port, dependencies) = inner.update(|table| {
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
        });
        let (events, out) = mpsc::channel(BUFFERED);
        // Counted, so `down` waits for it (it stops it) before the daemon ends.
        inner.one_offs.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let ended = one_off(&inner, &spec, &name, port, dependencies, &events).await;
            inner.one_offs.fetch_sub(1, Ordering::SeqCst);
            inner.update(|_| {});
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
    // Stopped when whoever asked goes away, and when the stack shuts down.
    let mut changes = inner.changes.subscribe();
    let shutdown = async {
        while !inner.lock().shutting_down {
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    let exit = tokio::select! {
        exit = running.exited() => Some(exit),
        _ = events.closed() => running.stop(spec.stop_signal, grace).await,
        _ = shutdown => running.stop(spec.stop_signal, grace).await,
    };
    for pump in pumps {
        let abort = pump.abort_handle();
        if tokio::time::timeout(Duration::from_millis(500), pump).await.is_err() {
            abort.abort();
        }
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

/// Masks secret values in a stream of bytes, exactly: the output is the input byte for byte
/// (a dump, an archive, CRLF text) but for the secrets, even one cut across two chunks, which
/// is why the last `longest - 1` bytes are held back until more arrives or the stream ends.
struct Masker {
    secrets: Arc<Vec<Vec<u8>>>,
    held: Vec<u8>,
}

impl Masker {
    fn keep(&self) -> usize {
        self.secrets.iter().map(Vec::len).max().unwrap_or(0).saturating_sub(1)
    }

    /// What may go out now.
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        self.held.extend_from_slice(chunk);
        if let Some(masked) = instance::redact(&self.held, &self.secrets) {
            self.held = masked;
        }
        let out = self.held.len().saturating_sub(self.keep());
        self.held.drain(..out).collect()
    }

    /// What is left, at the end.
    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Passes events on with the instance's secret values masked (see [`Masker`]). Ends when
/// either side does: a reader that went away makes the command's channel close too, which
/// stops a local command.
async fn mask(mut events: mpsc::Receiver<ExecEvent>, out: mpsc::Sender<ExecEvent>, secrets: Arc<Vec<Vec<u8>>>) {
    let mut maskers = [Masker { secrets: secrets.clone(), held: Vec::new() }, Masker { secrets, held: Vec::new() }];
    let index = |stream: Stream| if stream == Stream::Out { 0 } else { 1 };
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = out.closed() => return,
        };
        let forward = match event {
            Some(ExecEvent::Output(stream, chunk)) => {
                let bytes = maskers[index(stream)].push(&chunk);
                if bytes.is_empty() {
                    continue;
                }
                ExecEvent::Output(stream, bytes)
            }
            // The end (an exit, a failure, or the output's end): what was held back goes first.
            ended => {
                for (stream, masker) in [Stream::Out, Stream::Err].into_iter().zip(maskers.iter_mut()) {
                    let rest = masker.finish();
                    if !rest.is_empty() && out.send(ExecEvent::Output(stream, rest)).await.is_err() {
                        return;
                    }
                }
                match ended {
                    Some(ended) => ended,
                    None => return,
                }
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

    async fn masked(chunks: &[&[u8]], secrets: &[&[u8]]) -> Vec<ExecEvent> {
        let (tx, rx) = mpsc::channel(8);
        let (out, mut masked) = mpsc::channel(8);
        let secrets = Arc::new(secrets.iter().map(|s| s.to_vec()).collect());
        let task = tokio::spawn(mask(rx, out, secrets));
        for chunk in chunks {
            tx.send(ExecEvent::Output(Stream::Out, chunk.to_vec())).await.unwrap();
        }
        tx.send(ExecEvent::Exit(3)).await.unwrap();
        drop(tx);
        task.await.unwrap();
        let mut seen = Vec::new();
        while let Some(event) = masked.recv().await {
            seen.push(event);
        }
        seen
    }

    fn bytes(events: &[ExecEvent]) -> Vec<u8> {
        events.iter().flat_map(|e| if let ExecEvent::Output(_, b) = e { b.clone() } else { Vec::new() }).collect()
    }

    #[tokio::test]
    async fn output_is_masked_even_across_chunks_and_otherwise_byte_for_byte() {
        let seen = masked(&[b"token=hunter2", b"hunter2\r\nok\n", b"\x00\xffpartial"], &[b"hunter2hunter2"]).await;
        assert_eq!(bytes(&seen), b"token=********\r\nok\n\x00\xffpartial");
        assert_eq!(seen.last(), Some(&ExecEvent::Exit(3)));
        // Nothing to mask: the chunks go as they come.
        let seen = masked(&[b"a\r\n", b"b"], &[]).await;
        assert_eq!(
            seen[..2],
            [ExecEvent::Output(Stream::Out, b"a\r\n".to_vec()), ExecEvent::Output(Stream::Out, b"b".to_vec())]
        );
    }

    #[tokio::test]
    async fn what_is_held_back_goes_out_when_the_output_ends_without_an_exit() {
        let (tx, rx) = mpsc::channel(8);
        let (out, mut masked) = mpsc::channel(8);
        let task = tokio::spawn(mask(rx, out, Arc::new(vec![b"a-long-secret-value".to_vec()])));
        tx.send(ExecEvent::Output(Stream::Out, b"short\n".to_vec())).await.unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(masked.recv().await, Some(ExecEvent::Output(Stream::Out, b"short\n".to_vec())));
    }

    #[tokio::test]
    async fn a_reader_gone_ends_the_masking_so_the_command_is_stopped() {
        let (tx, rx) = mpsc::channel::<ExecEvent>(8);
        let (out, masked) = mpsc::channel(8);
        let task = tokio::spawn(mask(rx, out, Arc::new(Vec::new())));
        drop(masked);
        task.await.unwrap();
        assert!(tx.is_closed(), "the command's side sees nobody listening");
    }
}
