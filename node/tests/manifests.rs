//! The manifests and the binary's flags cannot drift apart: the StatefulSet's container args
//! (and the backend example's init container) are parsed with the real `shoal` parser, the
//! ConfigMap's TOML is resolved with the real config loader, and every name, port and path
//! the args mention must match what the other manifests declare.

use clap::Parser;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use shoal_node::cli::{Cli, Command, DataplaneKind, SourceKind};
use shoal_node::config::{NodeConfig, Source};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn load<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = manifests().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Kubernetes expands `$(VAR)` in args from the container's env; do the same with sample
/// values, and fail on a reference to a variable the container does not declare.
fn expand(container: &Container, samples: &BTreeMap<&str, &str>) -> Vec<String> {
    let declared: Vec<String> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    let mut out = vec!["shoal".to_string()];
    for arg in container.args.iter().flatten() {
        let mut a = arg.clone();
        while let Some(start) = a.find("$(") {
            let end = a[start..]
                .find(')')
                .map(|e| start + e)
                .expect("unclosed $(");
            let var = a[start + 2..end].to_string();
            assert!(
                declared.contains(&var),
                "arg {arg:?} uses $({var}) which the container does not declare"
            );
            let value = samples
                .get(var.as_str())
                .unwrap_or_else(|| panic!("no sample for {var}"));
            a.replace_range(start..=end, value);
        }
        out.push(a);
    }
    out
}

fn port_of(container: &Container, name: &str) -> i32 {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container has no port named {name}"))
        .container_port
}

#[test]
fn statefulset_args_parse_and_match_the_other_manifests() {
    let sts: StatefulSet = load("statefulset.yaml");
    let spec = sts.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let c = pod
        .containers
        .iter()
        .find(|c| c.name == "shoal")
        .expect("container shoal");
    let args = expand(
        c,
        &BTreeMap::from([("POD_NAME", "shoal-0"), ("POD_IP", "198.18.0.10")]),
    );

    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}\n{e}"));
    let Command::Run(run) = cli.command else {
        panic!("not `shoal run`: {args:?}")
    };
    assert_eq!(run.node_id.as_deref(), Some("shoal-0"));
    assert_eq!(run.source, Some(SourceKind::Kubernetes));
    assert_eq!(run.dataplane, Some(DataplaneKind::Ipvs));
    assert!(!run.insecure, "pods must authenticate peers");

    // Ports: listen = the peer port, admin = the port the probes use.
    let listen = run.listen.unwrap();
    assert_eq!(listen.to_string(), "198.18.0.10:7946");
    assert_eq!(i32::from(listen.port()), port_of(c, "peer"));
    let admin = run.admin.unwrap();
    assert!(
        admin.ip().is_unspecified(),
        "kubelet probes come from outside the pod"
    );
    assert_eq!(i32::from(admin.port()), port_of(c, "admin"));
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            serde_json::json!("admin")
        );
    }

    // Seeds: one per replica, through the headless Service, on the peer port.
    let headless: Service = load("service-peers.yaml");
    assert_eq!(
        headless.metadata.name.as_deref(),
        Some(spec.service_name.as_deref().unwrap())
    );
    let hs = headless.spec.as_ref().unwrap();
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.publish_not_ready_addresses, Some(true));
    let peer = hs
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("peer"))
        .unwrap();
    assert_eq!(peer.protocol.as_deref(), Some("UDP"), "QUIC runs over UDP");
    let sts_name = sts.metadata.name.as_deref().unwrap();
    let svc_name = headless.metadata.name.as_deref().unwrap();
    let want: Vec<String> = (0..spec.replicas.unwrap())
        .map(|i| format!("{sts_name}-{i}.{svc_name}:{}", peer.port))
        .collect();
    assert_eq!(run.seeds.clone().unwrap(), want);

    // Mounted paths: TLS from the Secret, config from the ConfigMap.
    let mount = |name: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == name)
            .map(|m| PathBuf::from(&m.mount_path))
    };
    assert_eq!(run.tls_dir.clone(), mount("tls"));
    let cm: ConfigMap = load("configmap.yaml");
    let config_vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "config")
        .unwrap();
    assert_eq!(
        config_vol.config_map.as_ref().map(|c| c.name.as_str()),
        cm.metadata.name.as_deref()
    );
    let config_path = run.config.clone().unwrap();
    assert_eq!(config_path.parent().map(Path::to_path_buf), mount("config"));
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let toml_text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .expect("ConfigMap key of --config");

    // Resolve exactly as the daemon would, with the ConfigMap's file in place.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join(key);
    std::fs::write(&local, toml_text).unwrap();
    let mut resolved_args = (*run).clone();
    resolved_args.config = Some(local);
    let node = NodeConfig::resolve(&resolved_args).unwrap_or_else(|e| panic!("config: {e}"));
    let Source::Kubernetes(k) = node.source else {
        panic!("not the kubernetes source")
    };
    assert_eq!(k.lb_class, "shoal.io/lb");
    assert!(
        k.vip_pools.is_empty() && k.namespace.is_none(),
        "a cluster-wide install reads ShoalPool objects"
    );
    assert_eq!(k.kubeconfig, None, "in-cluster config in pods");

    // The ServiceAccount the RBAC grants is the one the pods run as.
    assert_eq!(pod.service_account_name.as_deref(), Some("shoal"));
}

#[test]
fn statefulset_security_posture() {
    let sts: StatefulSet = load("statefulset.yaml");
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.unwrap();
    assert!(pod.affinity.and_then(|a| a.pod_anti_affinity).is_some());
    assert!(pod.termination_grace_period_seconds.unwrap() >= 10);
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let tls = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "tls")
        .unwrap();
    assert_eq!(tls.secret.unwrap().default_mode, Some(0o400));
}

#[test]
fn cluster_role_is_minimal() {
    let role: ClusterRole = load("clusterrole.yaml");
    let mut grants: Vec<String> = Vec::new();
    for r in role.rules.unwrap() {
        for g in r.api_groups.unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                for v in &r.verbs {
                    grants.push(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "/services/status:update",
            "/services:get",
            "/services:list",
            "/services:watch",
            "discovery.k8s.io/endpointslices:get",
            "discovery.k8s.io/endpointslices:list",
            "discovery.k8s.io/endpointslices:watch",
            "events.k8s.io/events:create",
            "shoal.io/shoalpools/status:patch",
            "shoal.io/shoalpools:get",
            "shoal.io/shoalpools:list",
            "shoal.io/shoalpools:watch",
        ]
    );
}

/// The ShoalPool CRD names what the source reads, and the example pools parse into pools.
#[test]
fn shoalpool_crd_matches_the_source() {
    use shoal_node::source::kubernetes::pools;
    let crd: serde_json::Value = load("crd-shoalpool.yaml");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], pools::GROUP);
    assert_eq!(spec["names"]["kind"], pools::KIND);
    assert_eq!(spec["names"]["plural"], pools::PLURAL);
    assert_eq!(spec["scope"], "Cluster");
    assert_eq!(spec["versions"][0]["name"], pools::VERSION);
    assert!(spec["versions"][0]["subresources"]["status"].is_object());
    let text = std::fs::read_to_string(manifests().join("examples/shoalpool.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let objects: Vec<pools::PoolObject> = docs
        .into_iter()
        .map(|d| {
            serde_json::from_value::<pools::ShoalPool>(d)
                .unwrap()
                .object()
        })
        .collect();
    let (parsed, problems) = pools::parse_pools(&objects);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(parsed.len(), 2);
    assert!(!parsed[1].auto_assign && parsed[1].allows("shop") && !parsed[1].allows("web"));
}

#[test]
fn backend_example_init_container_parses() {
    let text = std::fs::read_to_string(manifests().join("examples/backend.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let deploy: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(
        docs.iter()
            .find(|d| d["kind"] == "Deployment")
            .cloned()
            .unwrap(),
    )
    .unwrap();
    let svc: Service = serde_json::from_value(
        docs.iter()
            .find(|d| d["kind"] == "Service")
            .cloned()
            .unwrap(),
    )
    .unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let init = &pod.init_containers.unwrap()[0];
    let args = expand(init, &BTreeMap::new());
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}\n{e}"));
    let Command::BackendInit(b) = cli.command else {
        panic!("not backend-init")
    };

    // The VIP the backend accepts is the one the Service asks for, and tunnel mode keeps the
    // port, so port == the container port behind targetPort.
    let ann = svc.metadata.annotations.unwrap();
    assert_eq!(
        b.vip,
        vec![ann["shoal.io/vip"].parse::<std::net::IpAddr>().unwrap()]
    );
    let sp = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    let target_name = match sp.target_port.as_ref().unwrap() {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        other => panic!("expected a named targetPort, got {other:?}"),
    };
    assert_eq!(port_of(&pod.containers[0], &target_name), sp.port);
    assert_eq!(
        svc.spec.unwrap().load_balancer_class.as_deref(),
        Some("shoal.io/lb")
    );
}
