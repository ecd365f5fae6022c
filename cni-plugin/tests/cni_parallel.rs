//! Concurrency: 200 ADD/DEL cycles of the real `sluice` binary, 16 at a
//! time, against one network (routed, dual-stack sluice-ipam, `ipMasq`),
//! each worker reusing its own pod namespace. No address may be handed to
//! two live pods at once, every CHECK in between must pass, and nothing is
//! left at the end (veths, reservations, `ENDPOINTS` entries, link pins,
//! state records, masquerade rules).
//!
//! Privileged and serial: `cargo test -p cni-plugin --test cni_parallel --
//! --test-threads=1` (needs `cargo build -p cni-agent` first).

mod cni_support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use cni_support::{result_ips, World};
use serde_json::json;

const CYCLES: usize = 200;
const WORKERS: usize = 16;

#[test]
fn two_hundred_add_del_cycles_sixteen_at_a_time() {
    let world = World::new();
    let conf = world.conf("1.1.0", json!({"ipMasq": true}));
    let pods: Vec<_> = (0..WORKERS).map(|_| world.pod()).collect();
    let next = AtomicUsize::new(0);
    let live: Mutex<HashMap<IpAddr, String>> = Mutex::new(HashMap::new());
    let peak = AtomicUsize::new(0);
    let (add_us, del_us) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();

    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = pods
            .iter()
            .map(|pod| {
                let (world, conf, next, live, peak) = (&world, &conf, &next, &live, &peak);
                let (add_us, del_us) = (&add_us, &del_us);
                s.spawn(move || {
                    let mut failures = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= CYCLES {
                            break;
                        }
                        let cid = format!("par-{n:03}");
                        let t = Instant::now();
                        let add = world.add(&cid, pod, conf);
                        add_us.fetch_add(t.elapsed().as_micros() as usize, Ordering::Relaxed);
                        if !add.success {
                            failures.push(format!("ADD {cid}: {}\n{}", add.stdout, add.stderr));
                            // Clean up whatever it might have left for the
                            // end-of-test check to judge.
                            let _ = world.del(&cid, Some(&pod.path), conf, None);
                            continue;
                        }
                        let result = add.ok();
                        let ips = result_ips(&result);
                        {
                            let mut live = live.lock().unwrap();
                            for ip in &ips {
                                if let Some(owner) = live.insert(*ip, cid.clone()) {
                                    failures.push(format!(
                                        "{ip} given to {cid} while {owner} holds it"
                                    ));
                                }
                            }
                            peak.fetch_max(live.len() / 2, Ordering::Relaxed);
                        }
                        if n % 4 == 0 {
                            let check = world.check(&cid, pod, conf, &result);
                            if !check.success {
                                failures.push(format!(
                                    "CHECK {cid}: {}\n{}\nmasquerade rules now: {:?}",
                                    check.stdout,
                                    check.stderr,
                                    world.masq_rules()
                                ));
                            }
                        }
                        {
                            let mut live = live.lock().unwrap();
                            for ip in &ips {
                                live.remove(ip);
                            }
                        }
                        let t = Instant::now();
                        let del = world.del(&cid, Some(&pod.path), conf, Some(&result));
                        del_us.fetch_add(t.elapsed().as_micros() as usize, Ordering::Relaxed);
                        if !del.success {
                            failures.push(format!("DEL {cid}: {}\n{}", del.stdout, del.stderr));
                        }
                    }
                    failures
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let took = started.elapsed();
    eprintln!(
        "{CYCLES} ADD/DEL cycles, {WORKERS} workers: {took:?}, at most {} pods live at once; \
         mean ADD {} ms, DEL {} ms",
        peak.load(Ordering::Relaxed),
        add_us.load(Ordering::Relaxed) / CYCLES / 1000,
        del_us.load(Ordering::Relaxed) / CYCLES / 1000,
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        peak.load(Ordering::Relaxed) > 1,
        "the cycles never overlapped"
    );
    world.assert_clean();
    for pod in &pods {
        assert_eq!(pod.link_names(), ["lo"]);
    }
}
