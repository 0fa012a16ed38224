//! fake-apiserver: the tests' fake Kubernetes API server (`node/tests/kubernetes_fake`) as a
//! process, for the VM lab (chaos/lab/vm/scenarios/k8s.sh), where `shoal run --source
//! kubernetes` needs an API server inside the guest.
//!
//! `fake-apiserver KUBECONFIG CTL_DIR`: listens on 127.0.0.1 (a free port), writes a kubeconfig
//! pointing at it to KUBECONFIG, then every 100 ms applies each `CTL_DIR/*.json` (in name
//! order; one object with `"kind": "Service" | "EndpointSlice" | "ShoalPool"`) and renames it
//! to `*.json.done`, so a script knows when its change is visible to watchers. A file that is
//! not such an object is renamed to `*.json.bad` with the reason printed on stderr.

#[path = "../tests/kubernetes_fake/mod.rs"]
mod kubernetes_fake;

use kubernetes_fake::{kubeconfig, FakeApi, Kind};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn kind_of(object: &Value) -> Result<Kind, String> {
    match object["kind"].as_str() {
        Some("Service") => Ok(Kind::Service),
        Some("EndpointSlice") => Ok(Kind::EndpointSlice),
        Some("ShoalPool") => Ok(Kind::ShoalPool),
        other => Err(format!(
            "kind {other:?} is not Service, EndpointSlice or ShoalPool"
        )),
    }
}

/// The `*.json` files of `dir`, in name order.
fn pending(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn apply_file(api: &FakeApi, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read: {e}"))?;
    let object: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    api.apply(kind_of(&object)?, object);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kubeconfig_path, ctl] = args.as_slice() else {
        eprintln!("usage: fake-apiserver KUBECONFIG CTL_DIR");
        std::process::exit(2);
    };
    let ctl = PathBuf::from(ctl);
    let api = FakeApi::new();
    let addr = api.listen("lab").await;
    if let Err(e) = std::fs::write(kubeconfig_path, kubeconfig(addr)) {
        eprintln!("fake-apiserver: writing {kubeconfig_path}: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "fake-apiserver: listening on {addr}, applying {}/*.json",
        ctl.display()
    );
    loop {
        for path in pending(&ctl) {
            let (suffix, result) = match apply_file(&api, &path) {
                Ok(()) => ("done", Ok(())),
                Err(e) => ("bad", Err(e)),
            };
            if let Err(e) = &result {
                eprintln!("fake-apiserver: {}: {e}", path.display());
            }
            let mut done = path.clone().into_os_string();
            done.push(format!(".{suffix}"));
            if let Err(e) = std::fs::rename(&path, &done) {
                eprintln!("fake-apiserver: renaming {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
