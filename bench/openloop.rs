//! Open-loop load generator for the benchmark: GETs at a fixed rate over a fixed number of
//! keep-alive HTTP/1.1 connections, printing latency percentiles.
//!
//! Each request has a due time (`rate` per second, spread evenly over the connections). Its
//! latency counts from when it was due if its connection was still busy then (a slow answer
//! delays the next requests, and that wait is the server's), else from when it was sent. So
//! the numbers are the server's latency at that load, not the length of a closed loop's queue.
//!
//! ```text
//! openloop URL RATE CONNECTIONS SECONDS [HEADER...]
//! ```
//! Prints one line: `<requests/s achieved> <p50 ms> <p99 ms> <max ms> <errors>`. A server that
//! cannot keep up achieves less than RATE, and its late answers show in the percentiles. An
//! answer other than 200, or a broken connection, is an error: counted, not timed; a broken
//! connection is opened again and the run goes on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one run asks for.
struct Load {
    host: String,
    path: String,
    headers: Vec<String>,
    rate: f64,
    connections: usize,
    seconds: f64,
}

/// What one connection measured: latencies in microseconds, and failed requests.
#[derive(Default)]
struct Tally {
    latencies: Vec<u32>,
    errors: u64,
}

fn main() -> Result<(), String> {
    let load = parse_args(std::env::args().skip(1).collect())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (tally, elapsed) = runtime.block_on(run(&load))?;
    println!("{}", summary(tally, elapsed));
    Ok(())
}

fn parse_args(args: Vec<String>) -> Result<Load, String> {
    let usage = "usage: openloop URL RATE CONNECTIONS SECONDS [HEADER...]";
    if args.len() < 4 {
        return Err(usage.into());
    }
    let rest = args[0].strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h.to_string(), format!("/{p}")))
        .unwrap_or((rest.to_string(), "/".into()));
    let number = |i: usize| {
        args[i]
            .parse::<f64>()
            .map_err(|_| format!("{usage}: {} is not a number", args[i]))
    };
    let load = Load {
        host,
        path,
        headers: args[4..].to_vec(),
        rate: number(1)?,
        connections: number(2)? as usize,
        seconds: number(3)?,
    };
    if load.rate <= 0.0 || load.connections == 0 || load.seconds <= 0.0 {
        return Err(format!(
            "{usage}: RATE, CONNECTIONS and SECONDS must be positive"
        ));
    }
    Ok(load)
}

async fn run(load: &Load) -> Result<(Tally, Duration), String> {
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", load.path, load.host);
    for h in &load.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(load.seconds);
    let interval = Duration::from_secs_f64(load.connections as f64 / load.rate);
    let mut tasks = Vec::new();
    for k in 0..load.connections {
        let stream = connect(&load.host)
            .await
            .map_err(|e| format!("connect {}: {e}", load.host))?;
        let first = start + Duration::from_secs_f64(k as f64 / load.rate);
        tasks.push(tokio::spawn(connection(
            load.host.clone(),
            stream,
            request.clone().into_bytes(),
            first,
            interval,
            end,
        )));
    }
    let mut tally = Tally::default();
    for t in tasks {
        let part = t.await.map_err(|e| e.to_string())?;
        tally.latencies.extend(part.latencies);
        tally.errors += part.errors;
    }
    Ok((tally, Instant::now().max(end) - start))
}

async fn connect(host: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends the request on one connection at each due time until `end`.
async fn connection(
    host: String,
    stream: TcpStream,
    request: Vec<u8>,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut stream = Some(stream);
    let mut due = first;
    let mut free_at = first;
    while due < end {
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        let from = if free_at > due { due } else { sent };
        let answer = match stream.as_mut() {
            Some(s) => exchange(s, &request, &mut buf).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        free_at = Instant::now();
        match answer {
            Ok(true) => tally
                .latencies
                .push((free_at - from).as_micros().min(u32::MAX as u128) as u32),
            Ok(false) => tally.errors += 1,
            Err(_) => {
                tally.errors += 1;
                stream = connect(&host).await.ok();
            }
        }
        due += interval;
    }
    tally
}

/// One request and its response: true if the answer was 200, false for another status; an
/// error if the connection broke.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    stream.write_all(request).await?;
    read_response(stream, buf).await
}

/// Reads one response with a Content-Length body; true if its status was 200.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let closed = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    buf.clear();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if read_more(stream, buf).await? == 0 {
            return Err(closed());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let ok = head.starts_with("http/1.1 200");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        if read_more(stream, buf).await? == 0 {
            return Err(closed());
        }
    }
    Ok(ok)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn summary(mut tally: Tally, elapsed: Duration) -> String {
    tally.latencies.sort_unstable();
    let n = tally.latencies.len();
    let at = |q: f64| {
        if n == 0 {
            0.0
        } else {
            tally.latencies[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0
        }
    };
    format!(
        "{:.0} {:.3} {:.3} {:.3} {}",
        n as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
        at(1.0),
        tally.errors
    )
}
