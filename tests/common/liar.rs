//! A deliberately lying upstream for fault cases: wrong bytes, truncated bodies, stalls, and a
//! bearer-token challenge. Everything else runs against the real docker-registry.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};

/// How the liar answers for one blob.
#[derive(Clone)]
pub enum Behaviour {
    /// Serve these bytes honestly.
    Good(Vec<u8>),
    /// Answer 503 this many times, then serve these bytes.
    FailFirst(usize, Vec<u8>),
    /// Redirect (307) to this absolute URL.
    Redirect(String),
    /// Serve these other bytes (same length) under the digest.
    Wrong(Vec<u8>),
    /// Announce the full length, send half, close.
    Truncated(Vec<u8>),
    /// Announce the full length, send half, then stall for a minute.
    Stall(Vec<u8>),
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

#[derive(Default)]
struct State {
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Behaviour>,
    hits: HashMap<String, usize>,
    authorizations: Vec<(String, Option<String>)>,
    signatures: Option<(u16, String)>,
    token_required: bool,
    /// The raw JSON of the token endpoint's `expires_in`.
    token_expires_in: Option<String>,
    basic_required: bool,
    tags: HashMap<String, Vec<String>>,
    /// An absolute `Link` for the first tags page, instead of the next page here.
    tags_link: Option<String>,
    /// Referrers indexes by subject digest (the OCI 1.1 referrers API).
    referrers: HashMap<String, String>,
    /// Whether `/v2/` says the atomic signatures extension is offered (it does unless told).
    signatures_hidden: bool,
}

/// A running liar on a loopback port.
pub struct Liar {
    pub addr: String,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl Liar {
    /// Starts the liar.
    pub fn start() -> Liar {
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
        let (st, a) = (state.clone(), addr.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, a) = (st.clone(), a.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, a) = (st.clone(), a.clone());
                        async move { Ok::<_, Infallible>(answer(&st, &a, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Liar {
            addr,
            state,
            _runtime: runtime,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves a manifest for `repo:reference`.
    pub fn manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap();
        s.manifests.insert(
            format!("{repo}:{reference}"),
            (media_type.into(), bytes.to_vec()),
        );
    }

    /// Sets how a blob is answered.
    pub fn blob(&self, digest: &str, behaviour: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.into(), behaviour);
    }

    /// Answers the atomic signatures extension with this status and body.
    pub fn signatures(&self, status: u16, body: &str) {
        self.state.lock().unwrap().signatures = Some((status, body.to_string()));
    }

    /// Serves `tags` for `repo`, a thousand per page with `Link` headers as docker-registry does.
    pub fn tags(&self, repo: &str, tags: Vec<String>) {
        self.state
            .lock()
            .unwrap()
            .tags
            .insert(repo.to_string(), tags);
    }

    /// Answers the tags list's first page with this `Link` (e.g. to another host).
    pub fn tags_link(&self, absolute: &str) {
        self.state.lock().unwrap().tags_link = Some(absolute.to_string());
    }

    /// Serves the OCI 1.1 referrers API: this index for the subject `digest`.
    pub fn referrers(&self, digest: &str, index: &str) {
        self.state
            .lock()
            .unwrap()
            .referrers
            .insert(digest.to_string(), index.to_string());
    }

    /// Whether `/v2/` advertises the atomic signatures extension.
    pub fn offer_signatures(&self, offered: bool) {
        self.state.lock().unwrap().signatures_hidden = !offered;
    }

    /// Requires Basic credentials (any) on every `/v2/<repo>` request.
    pub fn require_basic(&self) {
        self.state.lock().unwrap().basic_required = true;
    }

    /// Makes the token endpoint answer `expires_in` with this raw JSON number.
    pub fn token_expires_in(&self, raw: &str) {
        self.state.lock().unwrap().token_expires_in = Some(raw.to_string());
    }

    /// Requires a bearer token (from `/token`) on every `/v2/<repo>` request.
    pub fn require_token(&self) {
        self.state.lock().unwrap().token_required = true;
    }

    /// The `Authorization` header (if any) of every request for a path containing `needle`.
    pub fn authorizations(&self, needle: &str) -> Vec<Option<String>> {
        let s = self.state.lock().unwrap();
        s.authorizations
            .iter()
            .filter(|(p, _)| p.contains(needle))
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// How many requests for paths containing `needle` were made.
    pub fn hits(&self, needle: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .iter()
            .filter(|(k, _)| k.contains(needle))
            .map(|(_, v)| v)
            .sum()
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

fn answer(
    state: &Mutex<State>,
    addr: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let mut s = state.lock().unwrap();
    *s.hits
        .entry(format!("{} {}", req.method(), path))
        .or_default() += 1;
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("").to_string());
    s.authorizations.push((path.clone(), auth));
    if path == "/token" {
        let expires = s.token_expires_in.clone().unwrap_or_else(|| "300".into());
        return full(
            200,
            format!(r#"{{"token":"good-token","expires_in":{expires}}}"#),
        );
    }
    if path == "/v2/" {
        // it serves the atomic signatures extension, and says so as such registries do
        let mut r = full(200, "{}");
        if !s.signatures_hidden {
            r.headers_mut().insert(
                "x-registry-supports-signatures",
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        return r;
    }
    if path.starts_with("/extensions/v2/") {
        return match &s.signatures {
            Some((status, body)) => full(*status, body.clone()),
            None => full(404, ""),
        };
    }
    if let Some(name) = path.strip_prefix("/objects/") {
        let found = s.blobs.get(name).cloned();
        return match found {
            Some(Behaviour::Good(v)) => full(200, v),
            _ => full(404, ""),
        };
    }
    let authorised = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v == "Bearer good-token");
    if s.token_required && !authorised {
        let mut r = full(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
        );
        let challenge = format!(
            r#"Bearer realm="http://{addr}/token",service="liar",scope="repository:x:pull""#
        );
        r.headers_mut()
            .insert("www-authenticate", challenge.parse().unwrap());
        return r;
    }
    if s.basic_required
        && !req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Basic "))
    {
        let mut r = full(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"sign in"}]}"#,
        );
        r.headers_mut()
            .insert("www-authenticate", "Basic realm=\"liar\"".parse().unwrap());
        return r;
    }
    let rest = path.trim_start_matches("/v2/");
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let Some(all) = s.tags.get(repo) else {
            return full(
                404,
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}"#,
            );
        };
        let query = req.uri().query().unwrap_or("");
        let last = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("last="))
            .unwrap_or("");
        let start = if last.is_empty() {
            0
        } else {
            all.iter()
                .position(|t| t == last)
                .map(|i| i + 1)
                .unwrap_or(all.len())
        };
        let page: Vec<&String> = all[start..].iter().take(1000).collect();
        let mut r = full(
            200,
            serde_json::json!({"name": repo, "tags": page}).to_string(),
        );
        if let (Some(link), 0) = (&s.tags_link, start) {
            r.headers_mut()
                .insert("link", format!("<{link}>; rel=\"next\"").parse().unwrap());
        } else if start + page.len() < all.len() {
            let next = format!(
                "</v2/{repo}/tags/list?last={}&n=1000>; rel=\"next\"",
                page.last().unwrap()
            );
            r.headers_mut().insert("link", next.parse().unwrap());
        }
        return r;
    }
    if let Some((_, digest)) = rest.split_once("/referrers/") {
        return match s.referrers.get(digest) {
            Some(index) => {
                let mut r = full(200, index.clone());
                r.headers_mut().insert(
                    "content-type",
                    "application/vnd.oci.image.index.v1+json".parse().unwrap(),
                );
                r
            }
            None => full(
                404,
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no referrers API here"}]}"#,
            ),
        };
    }
    if let Some((repo, reference)) = rest.split_once("/manifests/") {
        return match s.manifests.get(&format!("{repo}:{reference}")) {
            Some((mt, bytes)) => {
                let mut r = full(200, bytes.clone());
                r.headers_mut().insert("content-type", mt.parse().unwrap());
                r.headers_mut().insert(
                    "docker-content-digest",
                    super::sha256(bytes).parse().unwrap(),
                );
                r
            }
            None => full(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}"#,
            ),
        };
    }
    if let Some((_, digest)) = rest.split_once("/blobs/") {
        let Some(mut b) = s.blobs.get(digest).cloned() else {
            return full(
                404,
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}"#,
            );
        };
        if let Behaviour::FailFirst(n, v) = &b {
            if *n > 0 {
                s.blobs
                    .insert(digest.to_string(), Behaviour::FailFirst(n - 1, v.clone()));
                return full(503, "busy");
            }
            b = Behaviour::Good(v.clone());
        }
        if let Behaviour::Redirect(to) = &b {
            let mut r = full(307, "");
            r.headers_mut().insert("location", to.parse().unwrap());
            return r;
        }
        drop(s);
        return blob_response(b);
    }
    full(404, "")
}

fn blob_response(b: Behaviour) -> Response<BoxBody> {
    let (len, first, rest_mode) = match b {
        Behaviour::Good(v) | Behaviour::Wrong(v) => return full(200, v),
        Behaviour::FailFirst(..) | Behaviour::Redirect(_) => unreachable!("answered above"),
        Behaviour::Truncated(v) => (v.len(), v[..v.len() / 2].to_vec(), false),
        Behaviour::Stall(v) => (v.len(), v[..v.len() / 2].to_vec(), true),
    };
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let first = first.clone();
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from(first))), 1)),
                1 if rest_mode => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    None
                }
                _ => Some((Err(std::io::Error::other("cut")), 2)),
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-length", len)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}
