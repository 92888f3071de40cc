//! The WASI a policy module gets, denied by default: no preopened directories, no environment
//! or arguments, no sockets or name lookups, an empty stdin; clocks and random allowed;
//! stdout and stderr kept (bounded) for the proxy's debug log; at most [`MAX_RESOURCES`] WASI
//! resources held at once. Waiting never blocks: a clock's deadline is reached at once, so a
//! module that sleeps or waits spends its CPU budget instead of holding a thread; a poll names
//! at most [`MAX_RESOURCES`] pollables (a longer list, built in the module's memory, would be
//! copied into the host's before anything could refuse it).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::component::{Linker, Resource, WasmList};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::host::State;

/// The WASI resources (streams, pollables, ...) one evaluation may hold at once: they live in
/// the host's memory, outside the module's memory cap.
pub const MAX_RESOURCES: usize = 1024;

/// The most random bytes one call may ask for (the host makes them before copying them).
pub const MAX_RANDOM: u64 = 64 << 10;

/// What one evaluation may write to stdout and stderr together; the rest is dropped.
pub const MAX_OUTPUT: usize = 16 << 10;

/// The bytes a module wrote to stdout and stderr, up to [`MAX_OUTPUT`].
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn append(&self, bytes: &[u8]) {
        let mut kept = self.0.lock().expect("output lock");
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("output lock")).into_owned()
    }
}

impl OutputStream for Output {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Output {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The WASI state of one evaluation, made on the module's first WASI call.
#[derive(Default)]
pub struct Wasi {
    made: Option<(WasiCtx, wasmtime::component::ResourceTable)>,
    /// What the module wrote.
    pub output: Output,
}

impl Wasi {
    fn view(&mut self) -> WasiCtxView<'_> {
        let output = self.output.clone();
        let (ctx, table) = self.made.get_or_insert_with(|| {
            let mut b = WasiCtxBuilder::new();
            b.stdout(output.clone())
                .stderr(output)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .max_random_size(MAX_RANDOM)
                .socket_addr_check(|_, _| Box::pin(async { false }));
            let mut table = wasmtime::component::ResourceTable::new();
            table.set_max_capacity(MAX_RESOURCES);
            (b.build(), table)
        });
        WasiCtxView { ctx, table }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.view()
    }
}

/// A pollable that is ready at once.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

fn ready(state: &mut State) -> wasmtime::Result<Resource<DynPollable>> {
    let table = state.ctx().table;
    let ready = table.push(Ready)?;
    wasmtime_wasi::p2::subscribe(table, ready)
}

/// `wasi:io/poll.poll` for at most [`MAX_RESOURCES`] pollables, read from the module's memory
/// one at a time.
fn poll(
    mut store: wasmtime::StoreContextMut<'_, State>,
    list: WasmList<Resource<DynPollable>>,
) -> wasmtime::Result<Vec<u32>> {
    if list.len() == 0 || list.len() > MAX_RESOURCES {
        wasmtime::bail!(
            "poll of {} pollables (at least 1, at most {MAX_RESOURCES})",
            list.len()
        );
    }
    let pollables = list
        .iter(&mut store)?
        .collect::<wasmtime::Result<Vec<_>>>()?;
    let table = store.data_mut().ctx().table;
    wasmtime_wasi::p2::bindings::sync::io::poll::Host::poll(table, pollables)
}

/// Adds WASI (denied by default, as above) to a policy linker. The shadowed functions are
/// named at the WASI version `wasmtime-wasi` defines (guests asking for any 0.2.x get them).
pub fn add_to_linker(linker: &mut Linker<State>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    linker.instance("wasi:io/poll@0.2.12")?.func_wrap(
        "poll",
        |store, (list,): (WasmList<Resource<DynPollable>>,)| Ok((poll(store, list)?,)),
    )?;
    // a clock's deadline is reached at once: a module that sleeps spends no thread's time
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", |mut store, (_,): (u64,)| {
        Ok((ready(store.data_mut())?,))
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (_,): (u64,)| {
        Ok((ready(store.data_mut())?,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}
