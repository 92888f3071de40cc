//! A fault-injecting front between the proxy and a real upstream registry: it forwards every
//! request to the registry and, for paths matching a rule, injects one fault.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One fault.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status (with `Retry-After` when given), without asking the registry.
    Status(u16, Option<u32>),
    /// Close the connection without an answer.
    Reset,
    /// Forward the headers and half the body, then reset the connection.
    CutBody,
    /// Forward the headers and half the body, then stall for a minute.
    Stall,
    /// Forward, but announce another `Docker-Content-Digest`.
    WrongDigestHeader,
    /// Forward, with every byte of the body flipped (same length).
    CorruptBody,
    /// Wait this long, then forward unchanged (a slow upstream).
    Delay(Duration),
}

#[derive(Default)]
struct State {
    rules: Vec<(String, String, Fault)>,
    injected: usize,
}

/// A running front on a loopback port.
pub struct Front {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl Front {
    /// Starts a front forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Front {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let (st, up) = (state.clone(), upstream.trim_end_matches('/').to_string());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, up, client) = (st.clone(), up.clone(), client.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, up, client) = (st.clone(), up.clone(), client.clone());
                        async move { forward(&st, &up, &client, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Front {
            addr,
            state,
            _runtime: runtime,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects `fault` into `method` requests whose path contains `needle`.
    pub fn fault(&self, method: &str, needle: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .rules
            .push((method.to_string(), needle.to_string(), fault));
    }

    /// Removes every fault: the upstream recovers.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// How many faults were injected.
    pub fn injected(&self) -> usize {
        self.state.lock().unwrap().injected
    }
}

fn full(status: u16, bytes: impl Into<Bytes>) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .body(
            Full::new(bytes.into())
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .unwrap()
}

async fn forward(
    state: &Mutex<State>,
    upstream: &str,
    client: &reqwest::Client,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<BoxBody>, std::io::Error> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let fault = {
        let mut s = state.lock().unwrap();
        let f = s
            .rules
            .iter()
            .find(|(m, n, _)| m == req.method().as_str() && path.contains(n.as_str()))
            .map(|(_, _, f)| f.clone());
        if f.is_some() {
            s.injected += 1;
        }
        f
    };
    match &fault {
        Some(Fault::Status(code, retry)) => {
            let mut r = full(
                *code,
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected"}]}"#,
            );
            if let Some(secs) = retry {
                r.headers_mut().insert("retry-after", (*secs).into());
            }
            return Ok(r);
        }
        Some(Fault::Reset) => return Err(std::io::Error::other("injected reset")),
        Some(Fault::Delay(wait)) => tokio::time::sleep(*wait).await,
        _ => {}
    }
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let mut out = client.request(method, format!("{upstream}{path}"));
    for (k, v) in req.headers() {
        if k != "host" {
            out = out.header(k.as_str(), v.as_bytes());
        }
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let resp = out.body(body).send().await.map_err(std::io::Error::other)?;
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        let value =
            if k == "docker-content-digest" && matches!(fault, Some(Fault::WrongDigestHeader)) {
                "sha256:0000000000000000000000000000000000000000000000000000000000000000".as_bytes()
            } else {
                v.as_bytes()
            };
        builder = builder.header(k.as_str(), value);
    }
    let body: BoxBody = match fault {
        Some(Fault::CutBody) | Some(Fault::Stall) => {
            let stall = matches!(fault, Some(Fault::Stall));
            let bytes = resp.bytes().await.map_err(std::io::Error::other)?;
            let half = bytes.slice(..bytes.len() / 2);
            let tail = futures_util::stream::once(async move {
                if stall {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Err::<Frame<Bytes>, _>(std::io::Error::other("injected cut"))
            });
            BodyExt::boxed(StreamBody::new(
                futures_util::stream::once(async move { Ok(Frame::data(half)) }).chain(tail),
            ))
        }
        Some(Fault::CorruptBody) => {
            let bytes: Vec<u8> = resp
                .bytes()
                .await
                .map_err(std::io::Error::other)?
                .iter()
                .map(|b| !b)
                .collect();
            Full::new(Bytes::from(bytes))
                .map_err(|never: Infallible| match never {})
                .boxed()
        }
        _ => BodyExt::boxed(StreamBody::new(
            resp.bytes_stream()
                .map(|r| r.map(Frame::data).map_err(std::io::Error::other)),
        )),
    };
    Ok(builder.body(body).unwrap())
}
