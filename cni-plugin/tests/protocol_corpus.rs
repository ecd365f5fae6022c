//! Malformed inputs against the real `sluice` binary: every case in
//! `tests/corpus/*.json` (format in `tests/corpus/README.md`) must fail
//! validation, before any command handler runs, with exactly one error
//! object on stdout carrying the expected code.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Map, Value};

const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn base_env() -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "corpus-ctr"),
        ("CNI_NETNS", "/var/run/netns/sluice-corpus"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn base_config() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "corpus-net",
        "type": "sluice",
        "ipam": {"type": "sluice-ipam", "subnet": "10.99.0.0/24"}
    })
}

/// Runs the binary with exactly `env` (nothing inherited) and `stdin`.
fn run(env: &BTreeMap<String, String>, stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut pipe = child.stdin.take().expect("stdin");
    // The plugin may answer (e.g. an env error) without reading stdin;
    // a closed pipe is fine then.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output().expect("wait for sluice")
}

struct Case {
    file: String,
    name: String,
    env: BTreeMap<String, String>,
    stdin: Vec<u8>,
    code: u64,
    msg_contains: Option<String>,
}

fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read corpus dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read corpus file");
        let list: Vec<Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for raw in list {
            cases.push(case_from(&file, &raw));
        }
    }
    cases
}

fn case_from(file: &str, raw: &Value) -> Case {
    let obj = raw
        .as_object()
        .unwrap_or_else(|| panic!("{file}: case {raw} is not an object"));
    let known: BTreeSet<&str> = [
        "name",
        "env",
        "patch",
        "config",
        "stdin",
        "code",
        "msg_contains",
    ]
    .into();
    for k in obj.keys() {
        assert!(
            known.contains(k.as_str()),
            "{file}: unknown key {k:?} in {raw}"
        );
    }
    let name = obj["name"].as_str().expect("case name").to_string();
    let mut env = base_env();
    if let Some(changes) = obj.get("env") {
        for (k, v) in changes.as_object().expect("env is an object") {
            match v {
                Value::Null => {
                    env.remove(k);
                }
                Value::String(s) => {
                    env.insert(k.clone(), s.clone());
                }
                other => panic!("{file}/{name}: env value {other}"),
            }
        }
    }
    let inputs = ["patch", "config", "stdin"]
        .iter()
        .filter(|k| obj.contains_key(**k))
        .count();
    assert!(
        inputs <= 1,
        "{file}/{name}: at most one of patch, config, stdin"
    );
    let stdin = if let Some(s) = obj.get("stdin") {
        s.as_str().expect("stdin is a string").as_bytes().to_vec()
    } else if let Some(c) = obj.get("config") {
        c.to_string().into_bytes()
    } else {
        let mut conf = base_config();
        if let Some(patch) = obj.get("patch") {
            let target = conf.as_object_mut().unwrap();
            for (k, v) in patch.as_object().expect("patch is an object") {
                if v.is_null() {
                    target.remove(k);
                } else {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        conf.to_string().into_bytes()
    };
    Case {
        file: file.to_string(),
        name,
        env,
        stdin,
        code: obj["code"].as_u64().expect("code"),
        msg_contains: obj
            .get("msg_contains")
            .map(|m| m.as_str().expect("msg_contains").to_string()),
    }
}

/// stdout as exactly one JSON object, with nothing but whitespace around.
fn single_object(stdout: &[u8]) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(stdout).map_err(|e| format!("stdout is not UTF-8: {e}"))?;
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let first = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(format!("stdout is not JSON ({e}): {text:?}")),
        None => return Err("stdout is empty".into()),
    };
    if stream.next().is_some() {
        return Err(format!("more than one value on stdout: {text:?}"));
    }
    match first {
        Value::Object(o) => Ok(o),
        other => Err(format!("stdout is not an object: {other}")),
    }
}

/// The checks every error answer must pass; `Err` says which failed.
fn check_error(out: &Output, code: u64, msg_contains: Option<&str>) -> Result<(), String> {
    if out.status.success() {
        return Err(format!(
            "exit status is success; stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let obj = single_object(&out.stdout)?;
    for k in obj.keys() {
        if !["cniVersion", "code", "msg", "details"].contains(&k.as_str()) {
            return Err(format!("unexpected key {k:?} in {obj:?}"));
        }
    }
    let version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or("no cniVersion")?;
    if !SUPPORTED.contains(&version) {
        return Err(format!("cniVersion {version:?} is not a supported version"));
    }
    let got = obj
        .get("code")
        .and_then(Value::as_u64)
        .ok_or("no numeric code")?;
    let msg = obj.get("msg").and_then(Value::as_str).ok_or("no msg")?;
    if got != code {
        return Err(format!(
            "code {got}, expected {code}: {msg:?} {:?}",
            obj.get("details")
        ));
    }
    if msg.trim().is_empty() {
        return Err("empty msg".into());
    }
    if let Some(d) = obj.get("details") {
        if !d.is_string() {
            return Err(format!("details is not a string: {d}"));
        }
    }
    if let Some(want) = msg_contains {
        if !msg.contains(want) {
            return Err(format!("msg {msg:?} does not contain {want:?}"));
        }
    }
    Ok(())
}

#[test]
fn every_malformed_input_is_refused_with_its_code() {
    let cases = load_cases();
    assert!(
        cases.len() >= 100,
        "the corpus has only {} cases",
        cases.len()
    );
    let mut names = BTreeSet::new();
    for c in &cases {
        assert!(names.insert(&c.name), "duplicate case name {:?}", c.name);
    }
    let mut failures = Vec::new();
    for c in &cases {
        let out = run(&c.env, &c.stdin);
        if let Err(why) = check_error(&out, c.code, c.msg_contains.as_deref()) {
            failures.push(format!(
                "{}/{}: {why}\n    stderr: {}",
                c.file,
                c.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The unmodified base passes validation (for every command), so each
/// corpus failure is due to the case's one change. Until the handlers exist
/// the placeholder answers 11; once they do, the answer is whatever the
/// handler says, but never a validation code.
#[test]
fn the_base_invocation_passes_validation() {
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/sluice-corpus"}],
        "ips": [{"address": "10.99.0.5/24", "interface": 0}]
    });
    for (cmd, extra) in [
        ("ADD", json!({})),
        ("DEL", json!({})),
        ("CHECK", json!({"prevResult": prev})),
        (
            "GC",
            json!({"cni.dev/valid-attachments": [{"containerID": "corpus-ctr", "ifname": "eth0"}]}),
        ),
        ("STATUS", json!({})),
    ] {
        let mut env = base_env();
        env.insert("CNI_COMMAND".into(), cmd.into());
        let mut conf = base_config();
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        let out = run(&env, conf.to_string().as_bytes());
        if out.status.success() && out.stdout.is_empty() {
            continue;
        }
        let obj = single_object(&out.stdout).unwrap_or_else(|e| panic!("{cmd}: {e}"));
        if let Some(code) = obj.get("code").and_then(Value::as_u64) {
            assert!(
                ![1, 2, 4, 6, 7].contains(&code),
                "{cmd}: the base invocation failed validation: {obj:?}"
            );
        }
    }
}
