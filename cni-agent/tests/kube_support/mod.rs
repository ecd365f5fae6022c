//! A fake Kubernetes API server on 127.0.0.1 that speaks the list/watch
//! protocol for Namespaces, Pods and NetworkPolicies, the way the real one
//! does as far as a watcher can tell:
//!
//! - `GET <collection>`: a `…List` with `metadata.resourceVersion` (the
//!   current one) and the objects (without `kind`/`apiVersion`, as the
//!   API server sends list items);
//! - `GET <collection>?watch=true&resourceVersion=R`: newline-delimited
//!   JSON events (ADDED, MODIFIED, DELETED, BOOKMARK) with a
//!   resourceVersion above R, first those already recorded, then live
//!   ones; one global resourceVersion counter, as etcd has.
//!
//! And the faults the tests inject: [`FakeApi::disconnect`] ends every
//! watch stream; [`FakeApi::pause_watches`] holds new watch requests
//! unanswered (the agent is "away"); [`FakeApi::compact`] forgets the
//! history, so that a watch from an older resourceVersion gets 410 Gone —
//! as an ERROR event in a 200 stream (what the real API server sends) or as
//! the HTTP status ([`Gone::Http`]).
//!
//! Every request is recorded ([`FakeApi::requests`]) so tests can tell a
//! resumed watch from a relist. Only loopback traffic.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// A collection the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    /// `/api/v1/namespaces`
    Namespaces,
    /// `/api/v1/pods`
    Pods,
    /// `/apis/networking.k8s.io/v1/networkpolicies`
    NetworkPolicies,
}

impl Res {
    /// Every collection.
    pub const ALL: [Res; 3] = [Res::Namespaces, Res::Pods, Res::NetworkPolicies];

    fn path(self) -> &'static str {
        match self {
            Res::Namespaces => "/api/v1/namespaces",
            Res::Pods => "/api/v1/pods",
            Res::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Namespaces => "Namespace",
            Res::Pods => "Pod",
            Res::NetworkPolicies => "NetworkPolicy",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::NetworkPolicies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    fn from_path(path: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// How a watch from a forgotten resourceVersion is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// HTTP 200 and an ERROR event with a 410 Status (the API server's way).
    Event,
    /// HTTP 410 with a Status body.
    Http,
}

/// One request the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Req {
    /// The collection.
    pub res: Res,
    /// A watch (else a list).
    pub watch: bool,
    /// Its `resourceVersion` parameter.
    pub resource_version: Option<String>,
}

struct Recorded {
    rv: u64,
    line: Bytes,
}

#[derive(Default)]
struct Collection {
    /// `(namespace, name)` → the object as stored (with kind, apiVersion,
    /// metadata.resourceVersion).
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Recorded>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    gone: Gone,
    collections: BTreeMap<Res, Collection>,
    requests: Vec<Req>,
}

struct Inner {
    state: Mutex<State>,
    paused: watch::Sender<bool>,
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.accept.abort();
        self.disconnect();
    }
}

type Body = BoxBody<Bytes, Infallible>;

impl FakeApi {
    /// Serves on a random loopback port.
    pub async fn start() -> FakeApi {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Serves on `addr` (loopback).
    pub async fn start_on(addr: SocketAddr) -> FakeApi {
        assert!(
            addr.ip().is_loopback(),
            "the fake API server stays on loopback"
        );
        let listener = TcpListener::bind(addr)
            .await
            .expect("binding the fake API server");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 1,
                compacted: 0,
                gone: Gone::Event,
                collections: Res::ALL
                    .into_iter()
                    .map(|r| (r, Collection::default()))
                    .collect(),
                requests: Vec::new(),
            }),
            paused: watch::channel(false).0,
        });
        let served = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let inner = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(inner.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi {
            addr,
            inner,
            accept,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for it (plain HTTP, no credentials) in `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig_for(self.addr, dir)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }

    /// Creates or replaces an object (ADDED or MODIFIED); returns its
    /// resourceVersion.
    pub fn apply(&self, res: Res, mut object: Value) -> u64 {
        let mut st = self.state();
        st.rv += 1;
        let rv = st.rv;
        object["kind"] = json!(res.kind());
        object["apiVersion"] = json!(res.api_version());
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let c = st.collections.get_mut(&res).unwrap();
        let kind = if c.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.emit(rv, event_line(kind, &object));
        rv
    }

    /// Deletes an object (DELETED); returns the resourceVersion, or `None`
    /// when there was no such object.
    pub fn delete(&self, res: Res, namespace: Option<&str>, name: &str) -> Option<u64> {
        let mut st = self.state();
        let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        let mut object = st.collections.get_mut(&res).unwrap().objects.remove(&key)?;
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.collections
            .get_mut(&res)
            .unwrap()
            .emit(rv, event_line("DELETED", &object));
        Some(rv)
    }

    /// Sends a BOOKMARK at the current resourceVersion to the watches of
    /// `res` (not recorded: a bookmark is never replayed); returns it.
    pub fn bookmark(&self, res: Res) -> u64 {
        let mut st = self.state();
        let rv = st.rv;
        let line = event_line(
            "BOOKMARK",
            &json!({
                "kind": res.kind(),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": rv.to_string()},
            }),
        );
        let c = st.collections.get_mut(&res).unwrap();
        c.watchers.retain(|w| w.send(line.clone()).is_ok());
        rv
    }

    /// Moves the resourceVersion on with no event for any watched
    /// collection (writes to other kinds, as in a real cluster).
    pub fn bump(&self) -> u64 {
        let mut st = self.state();
        st.rv += 1;
        st.rv
    }

    /// Ends every watch stream (the client sees a clean end of stream).
    pub fn disconnect(&self) {
        let mut st = self.state();
        for c in st.collections.values_mut() {
            c.watchers.clear();
        }
    }

    /// Holds new watch requests unanswered until [`FakeApi::resume_watches`].
    pub fn pause_watches(&self) {
        self.inner.paused.send_replace(true);
    }

    /// Answers the held watch requests.
    pub fn resume_watches(&self) {
        self.inner.paused.send_replace(false);
    }

    /// Forgets the history: a watch from before now gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.state();
        st.compacted = st.rv;
        for c in st.collections.values_mut() {
            c.history.clear();
        }
    }

    /// How 410 Gone is sent.
    pub fn set_gone(&self, gone: Gone) {
        self.state().gone = gone;
    }

    /// The objects of `res` as stored now (with kind and apiVersion).
    pub fn objects(&self, res: Res) -> Vec<Value> {
        self.state().collections[&res]
            .objects
            .values()
            .cloned()
            .collect()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Req> {
        self.state().requests.clone()
    }

    /// Lists of `res` so far.
    pub fn lists(&self, res: Res) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.res == res && !r.watch)
            .count()
    }

    /// The resourceVersions watches of `res` started from, in order.
    pub fn watches(&self, res: Res) -> Vec<Option<String>> {
        self.requests()
            .into_iter()
            .filter(|r| r.res == res && r.watch)
            .map(|r| r.resource_version)
            .collect()
    }

    /// Open watch streams of `res`.
    pub fn watchers(&self, res: Res) -> usize {
        let mut st = self.state();
        let c = st.collections.get_mut(&res).unwrap();
        c.watchers.retain(|w| !w.is_closed());
        c.watchers.len()
    }

    /// Waits until every collection has an open watch.
    pub async fn wait_watching(&self) {
        while Res::ALL.iter().any(|r| self.watchers(*r) == 0) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Collection {
    fn emit(&mut self, rv: u64, line: Bytes) {
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
        self.history.push(Recorded { rv, line });
    }
}

/// A kubeconfig for an API server at `addr` (plain HTTP, no credentials).
pub fn kubeconfig_for(addr: SocketAddr, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
             current-context: fake\n\
             users:\n- name: nobody\n  user: {{}}\n"
        ),
    )
    .unwrap();
    path
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().expect("metadata.name").to_owned(),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    line.into()
}

fn status_gone(from: &str, compacted: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {from} ({compacted})"),
        "reason": "Expired", "code": 410,
    })
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed())
        .unwrap()
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(res) = Res::from_path(req.uri().path()) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                    "reason": "NotFound", "message": req.uri().path()}),
        ));
    };
    let q = query(&req);
    let is_watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let from = q.get("resourceVersion").cloned().filter(|v| !v.is_empty());
    inner.state.lock().unwrap().requests.push(Req {
        res,
        watch: is_watch,
        resource_version: from.clone(),
    });
    if !is_watch {
        let st = inner.state.lock().unwrap();
        let items: Vec<Value> = st.collections[&res]
            .objects
            .values()
            .map(|o| {
                let mut o = o.clone();
                let m = o.as_object_mut().unwrap();
                m.remove("kind");
                m.remove("apiVersion");
                o
            })
            .collect();
        return Ok(full(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", res.kind()),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        ));
    }

    // A watch: held while paused, then answered from the state of the
    // moment.
    let mut paused = inner.paused.subscribe();
    let _ = paused.wait_for(|p| !p).await;
    let mut st = inner.state.lock().unwrap();
    let from_rv = from.as_deref().and_then(|v| v.parse::<u64>().ok());
    if let Some(r) = from_rv.filter(|r| *r < st.compacted) {
        let status = status_gone(&r.to_string(), st.compacted);
        return Ok(match st.gone {
            Gone::Http => full(StatusCode::GONE, &status),
            Gone::Event => {
                let line = event_line("ERROR", &status);
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(line).boxed())
                    .unwrap()
            }
        });
    }
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let c = st.collections.get_mut(&res).unwrap();
    if let Some(r) = from_rv {
        for rec in c.history.iter().filter(|rec| rec.rv > r) {
            let _ = tx.send(rec.line.clone());
        }
    }
    c.watchers.push(tx);
    drop(st);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap())
}
