//! VERSION and version negotiation, against the real `sluice` binary. The
//! layout of results per version is unit-tested in `skel.rs` (with a fixed
//! handler), since ADD itself is not written yet.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Runs the binary with exactly `env` (nothing inherited) and `stdin`
/// (`None`: stdin is /dev/null).
fn run(env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        None => {
            cmd.stdin(Stdio::null());
            cmd.output().expect("run sluice")
        }
        Some(text) => {
            let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn sluice");
            let mut pipe = child.stdin.take().unwrap();
            let _ = pipe.write_all(text.as_bytes());
            drop(pipe);
            child.wait_with_output().expect("wait for sluice")
        }
    }
}

/// stdout as one JSON value on one line (the whole of stdout).
fn one_json(out: &Output) -> Value {
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout");
    assert!(text.ends_with('\n'), "{text:?}");
    assert_eq!(text.trim_end().lines().count(), 1, "{text:?}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn version_reply(stdin: Option<&str>) -> Value {
    let out = run(&[("CNI_COMMAND", "VERSION")], stdin);
    assert!(out.status.success(), "{out:?}");
    let v = one_json(&out);
    assert_eq!(v["supportedVersions"], json!(SUPPORTED), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    v
}

fn attachment_env(cmd: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "versions-ctr"),
        ("CNI_NETNS", "/var/run/netns/sluice-versions-test"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

/// The answer's version and error code (`None` for success). Accepts an
/// empty stdout with exit 0 (DEL/GC/STATUS success) as `(None, None)`.
fn answer(out: &Output) -> (Option<String>, Option<u64>) {
    if out.status.success() && out.stdout.is_empty() {
        return (None, None);
    }
    let v = one_json(out);
    let code = v.get("code").and_then(Value::as_u64);
    assert_eq!(
        code.is_some(),
        !out.status.success(),
        "exit status and answer disagree: {v}"
    );
    (v["cniVersion"].as_str().map(str::to_string), code)
}

#[test]
fn version_echoes_each_supported_version() {
    for version in SUPPORTED {
        let v = version_reply(Some(&json!({"cniVersion": version}).to_string()));
        assert_eq!(v["cniVersion"], version);
    }
}

#[test]
fn version_without_a_requested_version_answers_1_1_0() {
    for stdin in [
        None,
        Some(""),
        Some("{}"),
        Some("not json"),
        Some("{\"cniVersion\": 7}"),
    ] {
        let v = version_reply(stdin);
        assert_eq!(v["cniVersion"], "1.1.0", "{stdin:?}");
    }
}

#[test]
fn version_echoes_an_unsupported_request_and_lists_what_is_supported() {
    // The spec: "cniVersion: The value of cniVersion specified on input".
    let v = version_reply(Some("{\"cniVersion\": \"0.2.0\"}"));
    assert_eq!(v["cniVersion"], "0.2.0");
}

#[test]
fn version_needs_no_other_environment() {
    // A whole network config, as libcni sends it, with only CNI_COMMAND set.
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "sluice", "mtu": 0});
    let v = version_reply(Some(&conf.to_string()));
    assert_eq!(v["cniVersion"], "1.0.0");
}

#[test]
fn the_requested_version_is_the_one_answered_in() {
    for version in SUPPORTED {
        let conf = json!({"cniVersion": version, "name": "n", "type": "sluice"});
        let out = run(&attachment_env("ADD"), Some(&conf.to_string()));
        let (v, _) = answer(&out);
        assert_eq!(v.as_deref(), Some(version));
        // A config error is written in the requested version too.
        let bad = json!({"cniVersion": version, "name": "n", "type": "sluice", "mtu": 0});
        let out = run(&attachment_env("ADD"), Some(&bad.to_string()));
        assert_eq!(answer(&out), (Some(version.to_string()), Some(7)));
    }
}

#[test]
fn cni_versions_picks_the_highest_supported() {
    for (cni_version, list, expect) in [
        (Some("0.4.0"), json!(["1.0.0", "0.3.1"]), "1.0.0"),
        (None, json!(["0.3.1", "1.1.0", "0.4.0"]), "1.1.0"),
        (Some("1.0.0"), json!(["0.3.0"]), "1.0.0"),
        (Some("9.9.9"), json!(["0.4.0", "2.0.0"]), "0.4.0"),
        (None, json!(["0.1.0", "0.3.0"]), "0.3.0"),
    ] {
        let mut conf = json!({"name": "n", "type": "sluice", "cniVersions": list});
        if let Some(v) = cni_version {
            conf["cniVersion"] = json!(v);
        }
        let out = run(&attachment_env("ADD"), Some(&conf.to_string()));
        let (v, code) = answer(&out);
        assert_eq!(v.as_deref(), Some(expect), "{conf}");
        assert_ne!(code, Some(1), "{conf}");
    }
}

#[test]
fn gc_and_status_need_1_1_0_which_cni_versions_can_provide() {
    let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
    let old = json!({"cniVersion": "1.0.0", "name": "n", "type": "sluice", "cni.dev/valid-attachments": []});
    assert_eq!(
        answer(&run(&env, Some(&old.to_string()))),
        (Some("1.0.0".into()), Some(1))
    );
    let mut lifted = old.clone();
    lifted["cniVersions"] = json!(["1.0.0", "1.1.0"]);
    let (v, code) = answer(&run(&env, Some(&lifted.to_string())));
    assert_ne!(code, Some(1));
    assert!(v.is_none() || v.as_deref() == Some("1.1.0"), "{v:?}");

    let env = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")];
    let old = json!({"cniVersion": "0.4.0", "name": "n", "type": "sluice"});
    assert_eq!(
        answer(&run(&env, Some(&old.to_string()))),
        (Some("0.4.0".into()), Some(1))
    );
}

#[test]
fn unsupported_versions_list_the_supported_ones() {
    let conf = json!({"cniVersion": "0.2.0", "name": "n", "type": "sluice"});
    let out = run(&attachment_env("ADD"), Some(&conf.to_string()));
    let v = one_json(&out);
    assert_eq!(v["code"], 1);
    let details = v["details"].as_str().unwrap();
    for version in SUPPORTED {
        assert!(details.contains(version), "{details}");
    }
}

#[test]
fn logs_go_to_stderr_or_the_log_file_never_stdout() {
    let dir = std::env::temp_dir().join(format!("sluice-versions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("sluice.log");
    let conf = json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice", "logLevel": "debug",
                      "logFile": log.to_str().unwrap()});
    let out = run(&attachment_env("ADD"), Some(&conf.to_string()));
    // Exactly one JSON object on stdout, whatever ADD answers.
    let _ = answer(&out);
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(written.contains("versions-ctr"), "log file: {written:?}");
    // CNI_LOG_FILE overrides logFile; CNI_LOG_LEVEL overrides logLevel.
    let other = dir.join("override.log");
    let mut env = attachment_env("ADD");
    env.push(("CNI_LOG_FILE", other.to_str().unwrap()));
    env.push(("CNI_LOG_LEVEL", "error"));
    let _ = answer(&run(&env, Some(&conf.to_string())));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        written,
        "logFile must not be written when CNI_LOG_FILE overrides it"
    );
    let overridden = std::fs::read_to_string(&other).unwrap_or_default();
    assert!(!overridden.contains("DEBUG"), "{overridden:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
