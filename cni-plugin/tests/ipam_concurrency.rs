//! Many `sluice-ipam` processes on one store at once, as a node starting a
//! burst of pods sees: the flock must serialise them so that no address is
//! ever held by two containers, and DEL must leave nothing behind.

mod ipam_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ipam_support::{names, netconf, reserved, run, TempDir, SLUICE_IPAM};
use serde_json::json;

const WORKERS: usize = 16;
const CYCLES: usize = 200;

#[test]
fn parallel_add_del_never_hands_out_an_address_twice() {
    let data = TempDir::new("ipam-conc");
    // A small dual-stack network (61 and 62 addresses; at most 48 held at
    // once), so addresses are reused many times over.
    let conf = netconf(
        "1.1.0",
        "burst",
        "sluice-ipam",
        data.path(),
        json!({ "ranges": [[{ "subnet": "10.60.0.0/26" }], [{ "subnet": "fd00:60::/122" }]] }),
    );
    // Addresses currently held, by container: an entry is made after ADD
    // returned and removed before DEL starts, so two entries for one
    // address mean two containers really held it at once.
    let held: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (conf, held, next) = (conf.clone(), held.clone(), next.clone());
            std::thread::spawn(move || {
                let mut mine: Vec<(String, Vec<String>)> = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= CYCLES {
                        break;
                    }
                    let cid = format!("w{w}-c{n}");
                    let add = run(SLUICE_IPAM, "ADD", &cid, &conf, &[]);
                    let addrs = add.addresses();
                    assert_eq!(addrs.len(), 2, "{add:?}");
                    {
                        let mut held = held.lock().unwrap();
                        for a in &addrs {
                            if let Some(other) = held.insert(a.clone(), cid.clone()) {
                                panic!("{a} handed to {cid} while {other} holds it");
                            }
                        }
                    }
                    mine.push((cid, addrs));
                    // Keep up to two attachments per worker, releasing the
                    // oldest, so ADDs and DELs interleave.
                    if mine.len() > 2 || n % 3 == 0 {
                        let (cid, addrs) = mine.remove(0);
                        release(&held, &conf, &cid, &addrs);
                    }
                }
                for (cid, addrs) in mine {
                    release(&held, &conf, &cid, &addrs);
                }
            })
        })
        .collect();
    // Join every worker before judging: one that panicked must not let the
    // temporary dir go while the others still write into it.
    let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    assert!(
        results.iter().all(Result::is_ok),
        "a worker panicked (see above)"
    );
    assert!(held.lock().unwrap().is_empty());
    let dir = data.path().join("burst");
    assert!(reserved(&dir).is_empty(), "left behind: {:?}", names(&dir));
    assert_eq!(
        names(&dir),
        [
            "by-id",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock",
            "sluice.boot_id"
        ],
        "only bookkeeping remains"
    );
    assert_eq!(
        names(&dir.join("by-id")),
        [".stamp"],
        "index entries all removed"
    );
}

fn release(
    held: &Mutex<HashMap<String, String>>,
    conf: &serde_json::Value,
    cid: &str,
    addrs: &[String],
) {
    {
        let mut held = held.lock().unwrap();
        for a in addrs {
            assert_eq!(held.remove(a).as_deref(), Some(cid));
        }
    }
    let del = run(SLUICE_IPAM, "DEL", cid, conf, &[]);
    assert!(del.ok, "{del:?}");
}

#[test]
fn parallel_adds_into_a_small_range_get_distinct_addresses_until_exhausted() {
    let data = TempDir::new("ipam-conc");
    // 10.61.0.0/28: .2 to .14 usable (13 addresses), 16 contenders.
    let conf = netconf(
        "1.0.0",
        "small",
        "sluice-ipam",
        data.path(),
        json!({ "subnet": "10.61.0.0/28" }),
    );
    let handles: Vec<_> = (0..WORKERS)
        .map(|w| {
            let conf = conf.clone();
            std::thread::spawn(move || run(SLUICE_IPAM, "ADD", &format!("p{w}"), &conf, &[]))
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut got: Vec<String> = outcomes
        .iter()
        .filter(|o| o.ok)
        .flat_map(|o| o.addresses())
        .collect();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok).collect();
    assert_eq!(got.len(), 13, "{outcomes:?}");
    assert_eq!(failed.len(), 3);
    for f in failed {
        assert_eq!(f.code(), 101, "{f:?}");
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 13, "duplicates handed out");
    assert_eq!(reserved(&data.path().join("small")).len(), 13);
}
