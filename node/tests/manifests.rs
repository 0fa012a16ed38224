//! The manifests and the binary's flags cannot drift apart. Every install shape (the `base` and
//! the overlays `bgp`, `l2`, `app`) is rendered with kubectl's own kustomize, exactly as
//! `kubectl apply -k` would send it; then its containers' args are parsed with the real `shoal`
//! parser, its ConfigMap's TOML is resolved with the real config loader, and every name, port
//! and path the args mention must match what the other objects declare. Each overlay's own
//! promises (host network, anti-affinity, capabilities, namespaced RBAC) are checked too.
//!
//! kubectl comes from $KUBECTL, the virtualenv of scripts/install-deps.sh, or PATH; without
//! it the shape tests print "SKIPPED" and pass, except under CI=true, where they fail.
//!
//! Why this file is over 500 lines: one check per install shape and promise, all over the same
//! rendered objects; splitting them would scatter the rendering helpers they share.

use clap::Parser;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding};
use serde_json::Value;
use shoal_node::announce::decide::Mode;
use shoal_node::cli::{Cli, Command, DataplaneKind, RunSettings, SourceKind};
use shoal_node::config::{NodeConfig, Source};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// A kubectl whose `kustomize` works.
fn kubectl() -> Option<PathBuf> {
    let venv = std::env::var("SHOAL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/shoal/venv")
        });
    let candidates = std::env::var("KUBECTL")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv.join("bin/kubectl"), PathBuf::from("kubectl")]);
    for k in candidates {
        let ok = std::process::Command::new(&k)
            .args(["kustomize", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(k);
        }
    }
    let why = "no kubectl with kustomize (run scripts/install-deps.sh)";
    if in_ci() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// One rendered install shape.
struct Shape {
    name: &'static str,
    docs: Vec<Value>,
}

fn render(shape: &'static str) -> Option<Shape> {
    render_dir(shape, &manifests().join(shape), &[])
}

fn render_dir(shape: &'static str, dir: &Path, extra: &[&str]) -> Option<Shape> {
    let kubectl = kubectl()?;
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text)
        .unwrap_or_else(|e| panic!("{shape}: rendered YAML: {e}"));
    Some(Shape { name: shape, docs })
}

impl Shape {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }
    fn one<T: serde::de::DeserializeOwned>(&self, kind: &str) -> T {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "{}: expected one {kind}", self.name);
        serde_json::from_value(found[0].clone())
            .unwrap_or_else(|e| panic!("{}: {kind}: {e}", self.name))
    }
    fn kinds(&self) -> Vec<String> {
        self.docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
            .collect()
    }
    fn statefulset(&self) -> StatefulSet {
        self.one("StatefulSet")
    }
    fn pod(&self) -> PodSpec {
        self.statefulset().spec.unwrap().template.spec.unwrap()
    }
    fn container(&self) -> Container {
        self.pod()
            .containers
            .into_iter()
            .find(|c| c.name == "shoal")
            .expect("container shoal")
    }
    fn caps_added(&self) -> Vec<String> {
        let c = self.container();
        let caps = c.security_context.unwrap().capabilities.unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        caps.add.unwrap_or_default()
    }
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

fn grants(rules: Vec<PolicyRule>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rules {
        for g in r.api_groups.unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                for v in &r.verbs {
                    out.push(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    out.sort();
    out
}

/// What a namespaced install (the `app` overlay's Role) needs.
const NAMESPACED_GRANTS: [&str; 8] = [
    "/services/status:update",
    "/services:get",
    "/services:list",
    "/services:watch",
    "discovery.k8s.io/endpointslices:get",
    "discovery.k8s.io/endpointslices:list",
    "discovery.k8s.io/endpointslices:watch",
    "events.k8s.io/events:create",
];

/// A cluster-wide install also reads ShoalPool objects and writes their status.
const CLUSTER_EXTRA_GRANTS: [&str; 4] = [
    "shoal.io/shoalpools/status:patch",
    "shoal.io/shoalpools:get",
    "shoal.io/shoalpools:list",
    "shoal.io/shoalpools:watch",
];

/// What every shape must get right; returns the parsed `shoal run` args, the resolved node
/// config and its Kubernetes settings for the shape's own checks.
fn common_checks(
    s: &Shape,
) -> (
    RunSettings,
    NodeConfig,
    shoal_node::config::KubernetesSettings,
) {
    let sts = s.statefulset();
    let spec = sts.spec.as_ref().unwrap();
    let pod = s.pod();
    let c = s.container();
    let ns = sts.metadata.namespace.clone().expect("namespaced");
    let args = expand(
        &c,
        &BTreeMap::from([("POD_NAME", "shoal-0"), ("POD_IP", "198.18.0.10")]),
    );
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{}: {args:?}\n{e}", s.name));
    let Command::Run(run) = cli.command else {
        panic!("{}: not `shoal run`: {args:?}", s.name)
    };
    assert_eq!(run.node_id.as_deref(), Some("shoal-0"));
    assert_eq!(run.source, Some(SourceKind::Kubernetes));
    // The log level variable must be the one the binary reads (`RUST_LOG` did nothing).
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env.contains(&"SHOAL_LOG"), "{}: {env:?}", s.name);
    assert!(!env.contains(&"RUST_LOG"), "{}: {env:?}", s.name);
    // Every replica starts at once: OrderedReady would hold the others back behind a shoal-0
    // that cannot publish (it is ready only once a table is applied).
    assert_eq!(
        spec.pod_management_policy.as_deref(),
        Some("Parallel"),
        "{}",
        s.name
    );
    assert_eq!(run.dataplane, Some(DataplaneKind::Ipvs));
    assert!(!run.insecure, "pods must authenticate peers");
    // The epoch and generation files survive a container restart: a writable emptyDir.
    let state_dir = run
        .state_dir
        .clone()
        .unwrap_or_else(|| panic!("{}: no --state-dir", s.name));
    let state_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| state_dir.starts_with(&m.mount_path) && m.read_only != Some(true))
        .unwrap_or_else(|| {
            panic!(
                "{}: {} is on no writable mount",
                s.name,
                state_dir.display()
            )
        });
    let state_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == state_mount.name)
        .unwrap_or_else(|| panic!("{}: no volume {}", s.name, state_mount.name));
    assert!(
        state_volume.empty_dir.is_some(),
        "{}: {state_volume:?}",
        s.name
    );

    // Ports: listen = the peer port; admin = the pod's own address (#15: not 0.0.0.0) on the
    // port the probes use.
    let listen = run.listen.unwrap();
    assert_eq!(listen.to_string(), "198.18.0.10:7946");
    assert_eq!(i32::from(listen.port()), port_of(&c, "peer"));
    let admin = run.admin.unwrap();
    assert_eq!(
        admin.ip().to_string(),
        "198.18.0.10",
        "admin bound to the pod IP"
    );
    assert_eq!(i32::from(admin.port()), port_of(&c, "admin"));
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(serde_json::to_value(&get.port).unwrap(), "admin");
        assert_eq!(
            get.host, None,
            "probes go to the pod IP the admin API binds"
        );
    }

    // Seeds: the headless Service's name, which resolves to every replica.
    let headless: Service = s.one("Service");
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
    assert_eq!(
        run.seeds.clone().unwrap(),
        [format!("{}:{}", headless.metadata.name.unwrap(), peer.port)]
    );

    // Mounted paths: TLS from the Secret (0400), config from the ConfigMap.
    let mount = |name: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == name)
            .map(|m| PathBuf::from(&m.mount_path))
    };
    assert_eq!(run.tls_dir.clone(), mount("tls"));
    let volumes = pod.volumes.clone().unwrap();
    let tls = volumes.iter().find(|v| v.name == "tls").unwrap();
    match (&tls.secret, &tls.csi) {
        // One certificate shared by every pod cannot name each pod: it must run without node
        // identity, and say so (--cluster-identity-only).
        (Some(secret), None) => {
            assert_eq!(secret.default_mode, Some(0o400));
            assert!(
                run.cluster_identity_only,
                "{}: a shared certificate needs --cluster-identity-only",
                s.name
            );
        }
        (None, Some(_)) => check_per_pod_certs(s, &run, tls),
        other => panic!(
            "{}: the tls volume is neither a Secret nor a csi volume: {other:?}",
            s.name
        ),
    }
    let cm: ConfigMap = s.one("ConfigMap");
    let config_vol = volumes.iter().find(|v| v.name == "config").unwrap();
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
    let node =
        NodeConfig::resolve(&resolved_args).unwrap_or_else(|e| panic!("{}: config: {e}", s.name));
    let Source::Kubernetes(k) = node.source.clone() else {
        panic!("not the kubernetes source")
    };
    assert_eq!(k.kubeconfig, None, "in-cluster config in pods");
    // Cluster-wide shapes read ShoalPool objects; a namespaced one watches only its own
    // namespace and has its pools in the config.
    let cluster_wide = s.all("ClusterRole").len() == 1;
    if cluster_wide {
        assert!(
            k.vip_pools.is_empty() && k.namespace.is_none(),
            "{}: a cluster-wide install reads ShoalPool objects",
            s.name
        );
        assert_eq!(s.all("CustomResourceDefinition").len(), 1, "{}", s.name);
    } else {
        assert_eq!(k.namespace.as_deref(), Some(ns.as_str()), "{}", s.name);
        shoal_node::source::kubernetes::pools::from_cidrs(&k.vip_pools, &ns)
            .unwrap_or_else(|e| panic!("{}: vip_pools: {e}", s.name));
    }

    // The ServiceAccount the pods run as exists in their namespace.
    let sa: Value = s.all("ServiceAccount")[0].clone();
    assert_eq!(
        pod.service_account_name.as_deref(),
        sa["metadata"]["name"].as_str()
    );
    assert_eq!(sa["metadata"]["namespace"], ns.as_str());

    // Security: the long-running container is unprivileged with a read-only root; only the
    // short `shoal sysctls` init container is privileged, and its args parse too.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    assert!(s.caps_added().contains(&"NET_ADMIN".to_string()));
    let inits = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(inits.len(), 1, "{}: one init container", s.name);
    let init = &inits[0];
    let init_args = expand(init, &BTreeMap::new());
    let cli = Cli::try_parse_from(&init_args).unwrap_or_else(|e| panic!("{init_args:?}\n{e}"));
    let Command::Sysctls(sysctls) = cli.command else {
        panic!("init container must run `shoal sysctls`: {init_args:?}")
    };
    assert!(
        !sysctls.check,
        "the init container must write, not only check"
    );
    // L2 needs the ARP settings on exactly the interface shoal announces on.
    assert_eq!(sysctls.interface, node.announce.interface, "{}", s.name);
    assert_eq!(init.image, c.image, "same image as the daemon");
    let isc = init.security_context.as_ref().unwrap();
    assert_eq!(
        isc.privileged,
        Some(true),
        "/proc/sys is read-only otherwise"
    );
    assert_eq!(isc.read_only_root_filesystem, Some(true));
    // SIGTERM withdraws, drains, then leaves: the kubelet must wait at least that long.
    let grace = pod.termination_grace_period_seconds.unwrap();
    assert!(
        grace as u64 >= node.announce.shutdown_drain.as_secs() + 10,
        "{grace}"
    );
    (*run, node, k)
}

/// The volume attributes cert-manager's csi-driver knows (csi-driver pkg/apis/v1alpha1/types.go);
/// the driver refuses a volume with any other `csi.cert-manager.io/` key.
const CSI_DRIVER_ATTRIBUTES: [&str; 32] = [
    "issuer-name",
    "issuer-kind",
    "issuer-group",
    "literal-subject",
    "common-name",
    "organizations",
    "organizationalunits",
    "countries",
    "provinces",
    "localities",
    "streetaddresses",
    "postalcodes",
    "serialnumber",
    "dns-names",
    "ip-sans",
    "uri-sans",
    "duration",
    "is-ca",
    "key-usages",
    "key-encoding",
    "ca-file",
    "certificate-file",
    "privatekey-file",
    "fs-group",
    "renew-before",
    "reuse-private-key",
    "keystore-type",
    "keystore-file",
    "pkcs12-enable",
    "pkcs12-filename",
    "pkcs12-password",
    "key-algorithm",
];

/// A per-pod certificate from cert-manager's csi-driver: it must name exactly the node id the
/// pod runs with, carry the name every dialer checks, land in the files `--tls-dir` reads, and
/// come from an Issuer the shape declares; node identity is enforced.
fn check_per_pod_certs(s: &Shape, run: &RunSettings, tls: &k8s_openapi::api::core::v1::Volume) {
    let csi = tls.csi.as_ref().unwrap();
    assert_eq!(csi.driver, "csi.cert-manager.io", "{}", s.name);
    assert_eq!(csi.read_only, Some(true));
    let attrs = csi.volume_attributes.clone().expect("volumeAttributes");
    for key in attrs.keys() {
        let name = key
            .strip_prefix("csi.cert-manager.io/")
            .unwrap_or_else(|| panic!("{}: {key} is not a csi-driver attribute", s.name));
        assert!(
            CSI_DRIVER_ATTRIBUTES.contains(&name),
            "{}: unknown csi-driver attribute {key}",
            s.name
        );
    }
    let attr = |k: &str| {
        attrs
            .get(&format!("csi.cert-manager.io/{k}"))
            .map(String::as_str)
    };
    // The driver substitutes ${POD_NAME}; the pod runs with --node-id=$(POD_NAME).
    let node_id = run.node_id.clone().unwrap();
    let uri = attr("uri-sans")
        .expect("uri-sans")
        .replace("${POD_NAME}", &node_id);
    assert_eq!(
        uri,
        shoal_gossip::certs::node_uri(&node_id),
        "{}: the certificate must name the node id",
        s.name
    );
    let dns: Vec<&str> = attr("dns-names").expect("dns-names").split(',').collect();
    let cluster = run.cluster.clone().unwrap();
    assert!(
        dns.contains(&shoal_gossip::certs::cluster_server_name(&cluster).as_str()),
        "{}: {dns:?}",
        s.name
    );
    let usages: Vec<&str> = attr("key-usages")
        .unwrap()
        .split(',')
        .map(str::trim)
        .collect();
    for u in ["digital signature", "server auth", "client auth"] {
        assert!(
            usages.contains(&u),
            "{}: key usage {u} missing: {usages:?}",
            s.name
        );
    }
    // The file names `TlsMaterial::load_dir` reads.
    assert_eq!(attr("certificate-file"), Some("node.pem"));
    assert_eq!(attr("privatekey-file"), Some("node.key"));
    assert_eq!(attr("ca-file"), Some("ca.pem"));
    assert_eq!(attr("issuer-kind"), Some("Issuer"));
    let issuer = s
        .all("Issuer")
        .into_iter()
        .find(|i| i["metadata"]["name"].as_str() == attr("issuer-name"))
        .unwrap_or_else(|| panic!("{}: no Issuer named {:?}", s.name, attr("issuer-name")));
    assert_eq!(
        issuer["metadata"]["namespace"],
        s.statefulset().metadata.namespace.unwrap().as_str()
    );
    assert!(issuer["spec"]["ca"]["secretName"].is_string());
    assert!(
        !run.cluster_identity_only,
        "{}: per-pod certificates enforce node identity",
        s.name
    );
}

fn host_network(s: &Shape) -> bool {
    s.pod().host_network == Some(true)
}

#[test]
fn base_is_the_lab_install_on_the_pod_network() {
    let Some(s) = render("base") else { return };
    let (_, node, k) = common_checks(&s);
    assert_eq!(k.lb_class, "shoal.io/lb");
    assert_eq!(node.announce.mode, None, "the lab routes VIPs by hand");
    assert!(!host_network(&s));
    assert_eq!(s.caps_added(), ["NET_ADMIN"]);
    let role: ClusterRole = s.one("ClusterRole");
    let mut want: Vec<&str> = NAMESPACED_GRANTS
        .into_iter()
        .chain(CLUSTER_EXTRA_GRANTS)
        .collect();
    want.sort();
    assert_eq!(grants(role.rules.unwrap()), want);
    let pod = s.pod();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    assert!(anti
        .preferred_during_scheduling_ignored_during_execution
        .is_some());

    // NetworkPolicy: the mesh and admin ports only from the replicas (and labelled admin
    // clients); VIP traffic on every other port.
    let np: NetworkPolicy = s.one("NetworkPolicy");
    let spec = np.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels,
        s.statefulset().spec.unwrap().selector.match_labels
    );
    let rules = spec.ingress.unwrap();
    let open_to_all: Vec<_> = rules.iter().filter(|r| r.from.is_none()).collect();
    assert_eq!(open_to_all.len(), 1);
    let covers = |proto: &str, port: i32| {
        open_to_all[0].ports.iter().flatten().any(|p| {
            let start = match &p.port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
                other => panic!("numeric ports expected, got {other:?}"),
            };
            p.protocol.as_deref() == Some(proto)
                && start <= port
                && port <= p.end_port.unwrap_or(start)
        })
    };
    let c = s.container();
    assert!(!covers("UDP", port_of(&c, "peer")), "mesh port open to all");
    assert!(
        !covers("TCP", port_of(&c, "admin")),
        "admin port open to all"
    );
    for (proto, port) in [("TCP", 80), ("TCP", 443), ("UDP", 53), ("TCP", 65535)] {
        assert!(covers(proto, port), "VIP traffic {proto}/{port} blocked");
    }
}

fn assert_host_network_shape(s: &Shape, caps: &[&str]) {
    assert!(host_network(s), "{}: hostNetwork", s.name);
    let pod = s.pod();
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    assert!(anti
        .preferred_during_scheduling_ignored_during_execution
        .is_none());
    let required = anti
        .required_during_scheduling_ignored_during_execution
        .expect("required anti-affinity: one replica per node");
    assert_eq!(required.len(), 1);
    assert_eq!(required[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(
        required[0].label_selector.as_ref().unwrap().match_labels,
        s.statefulset().spec.unwrap().selector.match_labels
    );
    assert!(pod.node_selector.unwrap().contains_key("shoal.io/lb-node"));
    assert_eq!(s.caps_added(), caps);
    assert!(
        s.all("NetworkPolicy").is_empty(),
        "NetworkPolicy does not apply to hostNetwork pods; the overlay must not pretend"
    );
}

#[test]
fn bgp_overlay_runs_one_host_network_replica_per_node() {
    let Some(s) = render("overlays/bgp") else {
        return;
    };
    let (_, node, _) = common_checks(&s);
    assert_host_network_shape(&s, &["NET_ADMIN", "NET_BIND_SERVICE"]);
    assert_eq!(node.announce.mode, Some(Mode::Bgp));
    let bgp = node.announce.bgp.expect("[bgp] resolved");
    assert!(!bgp.peers.is_empty());
    // BIRD's files go to a writable volume: the root filesystem is read-only.
    let c = s.container();
    let writable: Vec<PathBuf> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.read_only != Some(true))
        .map(|m| PathBuf::from(&m.mount_path))
        .collect();
    assert!(
        writable.iter().any(|m| bgp.state_dir.starts_with(m)),
        "state_dir {} is on no writable mount ({writable:?})",
        bgp.state_dir.display()
    );
}

#[test]
fn l2_overlay_runs_one_host_network_replica_per_node() {
    let Some(s) = render("overlays/l2") else {
        return;
    };
    let (_, node, _) = common_checks(&s);
    assert_host_network_shape(&s, &["NET_ADMIN", "NET_RAW"]);
    assert_eq!(node.announce.mode, Some(Mode::L2));
    assert!(node.announce.interface.is_some());
}

#[test]
fn app_overlay_is_namespaced_with_its_own_class() {
    let Some(base) = render("base") else { return };
    let Some(s) = render("overlays/app") else {
        return;
    };
    let (_, _, k) = common_checks(&s);
    let (_, _, base_k) = common_checks(&base);
    assert_ne!(k.lb_class, base_k.lb_class, "its own class name");
    assert!(!host_network(&s));
    assert_eq!(s.caps_added(), ["NET_ADMIN"]);

    // Nothing cluster-scoped: no Namespace, no ClusterRole(Binding), no CRD; everything else
    // in the application's namespace.
    for kind in s.kinds() {
        assert!(
            ![
                "Namespace",
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
            ]
            .contains(&kind.as_str()),
            "app overlay renders a cluster-scoped {kind}"
        );
    }
    let ns = s.statefulset().metadata.namespace.unwrap();
    assert_ne!(ns, "shoal-system");
    for d in &s.docs {
        assert_eq!(d["metadata"]["namespace"], ns.as_str(), "{}", d["kind"]);
    }
    // The Role grants exactly what the base's ClusterRole does, bound to the pods' account.
    let role: Role = s.one("Role");
    assert_eq!(grants(role.rules.unwrap()), NAMESPACED_GRANTS);
    let rb: RoleBinding = s.one("RoleBinding");
    assert_eq!(rb.role_ref.kind, "Role");
    assert_eq!(Some(rb.role_ref.name), role.metadata.name);
    let subjects = rb.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        s.pod().service_account_name.as_ref()
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns.as_str()));
}

#[test]
fn backend_example_uses_the_pool_form() {
    let text = std::fs::read_to_string(manifests().join("examples/backend.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).cloned().unwrap();
    let deploy: Deployment = serde_json::from_value(find("Deployment")).unwrap();
    let svc: Service = serde_json::from_value(find("Service")).unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let init = &pod.init_containers.unwrap()[0];
    let args = expand(init, &BTreeMap::new());
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}\n{e}"));
    let Command::BackendInit(b) = cli.command else {
        panic!("not backend-init")
    };
    assert!(b.vip.is_empty(), "no hard-coded VIP: {args:?}");

    // The pools the backend accepts are (IPv4) ranges of the example ShoalPool that every
    // namespace may use and that assigns automatically; the Service takes its VIP from there
    // (no shoal.io/vip), with the base's class.
    let pool_text = std::fs::read_to_string(manifests().join("examples/shoalpool.yaml")).unwrap();
    let pool_docs: Vec<Value> = serde_saphyr::from_str_multiple(&pool_text).unwrap();
    let open_ranges: Vec<ipnet::IpNet> = pool_docs
        .iter()
        .filter(|d| d["spec"]["namespaces"].is_null() && d["spec"]["autoAssign"] == true)
        .flat_map(|d| {
            d["spec"]["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(!b.pool.is_empty());
    for p in &b.pool {
        assert!(
            open_ranges.contains(p),
            "{p} is no open ShoalPool range: {open_ranges:?}"
        );
    }
    let ann = svc.metadata.annotations.clone().unwrap_or_default();
    assert!(!ann.contains_key("shoal.io/vip"), "{ann:?}");
    let cm_text = std::fs::read_to_string(manifests().join("base/configmap.yaml")).unwrap();
    let cm: ConfigMap = serde_saphyr::from_str(&cm_text).unwrap();
    let table: toml::Table = cm.data.unwrap()["shoal.toml"].parse().unwrap();
    assert_eq!(
        svc.spec.as_ref().unwrap().load_balancer_class.as_deref(),
        table["lb_class"].as_str()
    );

    // Tunnel mode keeps the port, so port == the container port behind targetPort.
    let sp = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    let target_name = match sp.target_port.as_ref().unwrap() {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        other => panic!("expected a named targetPort, got {other:?}"),
    };
    assert_eq!(port_of(&pod.containers[0], &target_name), sp.port);
}

/// The ShoalPool CRD names what the source reads, and the example pools parse into pools.
#[test]
fn shoalpool_crd_matches_the_source() {
    use shoal_node::source::kubernetes::pools;
    let text = std::fs::read_to_string(manifests().join("base/crd-shoalpool.yaml")).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let spec = &crd["spec"];
    assert_eq!(spec["group"], pools::GROUP);
    assert_eq!(spec["names"]["kind"], pools::KIND);
    assert_eq!(spec["names"]["plural"], pools::PLURAL);
    assert_eq!(spec["scope"], "Cluster");
    assert_eq!(spec["versions"][0]["name"], pools::VERSION);
    assert!(spec["versions"][0]["subresources"]["status"].is_object());
    let text = std::fs::read_to_string(manifests().join("examples/shoalpool.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
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
fn per_pod_certs_overlay_gives_each_pod_its_own_identity() {
    let Some(s) = render("overlays/per-pod-certs") else {
        return;
    };
    let (run, _, _) = common_checks(&s);
    assert!(!run.cluster_identity_only);
    let tls = s
        .pod()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "tls")
        .unwrap();
    assert!(
        tls.secret.is_none() && tls.csi.is_some(),
        "the shared Secret is replaced"
    );
}

/// The component goes onto the host-network shapes too (their own kustomization, made here).
#[test]
fn per_pod_certs_component_composes_with_bgp_and_l2() {
    for overlay in ["bgp", "l2"] {
        let dir = tempfile::tempdir().unwrap();
        // kustomize takes only relative paths: climb from the temporary folder to `/`.
        let up = "../".repeat(dir.path().canonicalize().unwrap().components().count() - 1);
        let root = PathBuf::from(up).join(
            manifests()
                .canonicalize()
                .unwrap()
                .strip_prefix("/")
                .unwrap(),
        );
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
                root.join("overlays").join(overlay).display(),
                root.join("components/per-pod-certs").display()
            ),
        )
        .unwrap();
        let Some(s) = render_dir(
            "per-pod-certs+overlay",
            dir.path(),
            &["--load-restrictor", "LoadRestrictionsNone"],
        ) else {
            return;
        };
        let (run, _, _) = common_checks(&s);
        assert!(!run.cluster_identity_only, "{overlay}");
        assert_eq!(s.all("Issuer").len(), 1, "{overlay}");
    }
}
