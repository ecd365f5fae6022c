//! The watch tasks: one per kind (kube-runtime's `watcher`, converted
//! events into a channel), and the store task that applies them and
//! publishes the view.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace as KNamespace, Pod as KPod},
    networking::v1::NetworkPolicy as KNetworkPolicy,
};
use kube::{
    runtime::{
        utils::Backoff as _,
        watcher::{self, watcher, DefaultBackoff},
    },
    Api, Client,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    convert::{Kind, Watched},
    store::{Change, Entry, KubeView, Store},
};

/// Changes applied before the view is published once (a list of 10k pods
/// is not 10k copies of the cluster).
const BATCH: usize = 1024;

/// Starts the watches and the store; the tasks run until aborted.
/// Needs a tokio runtime.
pub fn spawn(client: Client) -> (watch::Receiver<KubeView>, Vec<JoinHandle<()>>) {
    let (view_tx, view_rx) = watch::channel(KubeView::default());
    let (tx, rx) = mpsc::channel(BATCH);
    let tasks = vec![
        tokio::spawn(run_store(rx, view_tx)),
        tokio::spawn(watch_kind(
            Api::<KNamespace>::all(client.clone()),
            tx.clone(),
        )),
        tokio::spawn(watch_kind(Api::<KPod>::all(client.clone()), tx.clone())),
        tokio::spawn(watch_kind(Api::<KNetworkPolicy>::all(client), tx)),
    ];
    (view_rx, tasks)
}

async fn run_store(mut rx: mpsc::Receiver<(Kind, Change)>, out: watch::Sender<KubeView>) {
    let mut store = Store::new();
    while let Some((kind, change)) = rx.recv().await {
        let mut changed = store.handle(kind, change);
        for _ in 0..BATCH {
            match rx.try_recv() {
                Ok((kind, change)) => changed |= store.handle(kind, change),
                Err(_) => break,
            }
        }
        if changed {
            out.send_replace(store.view());
        }
    }
}

fn entry<K: Watched>(obj: &K) -> Entry {
    Entry {
        id: obj.id(),
        object: obj.convert().map_err(|e| e.to_string()),
    }
}

fn change<K: Watched>(event: watcher::Event<K>) -> Change {
    match event {
        watcher::Event::Init => Change::ListStart,
        watcher::Event::InitApply(obj) => Change::Listed(entry(&obj)),
        watcher::Event::InitDone => Change::ListDone,
        watcher::Event::Apply(obj) => Change::Applied(entry(&obj)),
        watcher::Event::Delete(obj) => Change::Deleted(obj.id()),
    }
}

/// A watch request answered `410 Gone` with the HTTP status itself (not an
/// ERROR event in a 200 stream). kube-runtime 5 retries such a watch with
/// the same expired resourceVersion forever (`State::InitListed` keeps it),
/// so the caller starts a fresh watcher, which lists again — as client-go's
/// reflector does on `IsResourceExpired`/`IsGone`.
fn gone_at_watch_start(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410)
}

/// An ERROR event with code 410 (resourceVersion too old, e.g. compacted
/// while we were disconnected): the watcher lists again by itself.
fn gone_event(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchError(status) if status.code == 410)
}

/// Watches one kind for ever: list, watch from the list's
/// resourceVersion, resume from the last one seen (events and bookmarks)
/// after a disconnect, list again after 410 Gone; errors back off
/// exponentially (kube-runtime's default: 0.8 s doubling to 30 s, with
/// jitter), reset by the next event.
async fn watch_kind<K: Watched>(api: Api<K>, tx: mpsc::Sender<(Kind, Change)>) {
    let kind = K::KIND;
    let mut backoff = DefaultBackoff::default();
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), watcher::Config::default()));
        while let Some(item) = stream.next().await {
            let change = match item {
                Ok(event) => {
                    backoff.reset();
                    change(event)
                }
                Err(err) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    let restart = gone_at_watch_start(&err);
                    if restart || gone_event(&err) {
                        tracing::info!(
                            kind = %kind,
                            "watch of {}: resourceVersion expired (410 Gone), listing again in {delay:?}",
                            kind.plural()
                        );
                    } else {
                        tracing::warn!(
                            kind = %kind,
                            "watch of {} failed, retrying in {delay:?}: {err}",
                            kind.plural()
                        );
                    }
                    if tx
                        .send((kind, Change::Error(err.to_string())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    if restart {
                        break;
                    }
                    continue;
                }
            };
            if tx.send((kind, change)).await.is_err() {
                return;
            }
        }
    }
}
