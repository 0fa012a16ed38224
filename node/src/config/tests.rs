//! The settings contract: one name per setting as flag and key, the same value either way,
//! flags over the file, every bound checked with the setting named.

use super::*;
use crate::cli::{Cli, Command};
use clap::{CommandFactory, Parser};
use std::collections::BTreeSet;
use std::io::Write;

fn args() -> RunSettings {
    RunSettings {
        listen: Some("127.0.0.1:7946".parse().unwrap()),
        admin: Some("127.0.0.1:9100".parse().unwrap()),
        rules: Some("rules.toml".into()),
        node_id: Some("a".into()),
        seeds: Some(vec!["198.18.0.9:7946".into()]),
        insecure: true,
        ..RunSettings::default()
    }
}

fn flags(argv: &[&str]) -> RunSettings {
    let cli = Cli::try_parse_from(["shoal", "run"].iter().chain(argv))
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Command::Run(settings) = cli.command else {
        panic!("not run")
    };
    *settings
}

fn file(text: &str) -> RunSettings {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn with_file(mut a: RunSettings, text: &str) -> (RunSettings, tempfile::NamedTempFile) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(f, "{text}").unwrap();
    a.config = Some(f.path().to_path_buf());
    (a, f)
}

/// Every setting, as a flag and as the same key in the file.
const SAME_SETTING: &[(&[&str], &str)] = &[
    (&["--node-id", "n-7"], "node_id = \"n-7\""),
    (
        &["--listen", "198.18.0.7:7946"],
        "listen = \"198.18.0.7:7946\"",
    ),
    (
        &["--admin", "198.18.0.7:9100"],
        "admin = \"198.18.0.7:9100\"",
    ),
    (&["--seeds", "a:1,b:2"], "seeds = [\"a:1\", \"b:2\"]"),
    (&["--cluster", "lab"], "cluster = \"lab\""),
    (
        &["--tls-dir", "/etc/shoal/tls"],
        "tls_dir = \"/etc/shoal/tls\"",
    ),
    (
        &["--state-dir", "/var/lib/shoal"],
        "state_dir = \"/var/lib/shoal\"",
    ),
    (&["--insecure"], "insecure = true"),
    (&["--cluster-identity-only"], "cluster_identity_only = true"),
    (&["--single-node"], "single_node = true"),
    (&["--source", "kubernetes"], "source = \"kubernetes\""),
    (
        &["--rules", "/etc/shoal/rules.toml"],
        "rules = \"/etc/shoal/rules.toml\"",
    ),
    (&["--dataplane", "ipvs"], "dataplane = \"ipvs\""),
    (
        &["--source-filter", "nftables"],
        "source_filter = \"nftables\"",
    ),
    (&["--cleanup-on-exit"], "cleanup_on_exit = true"),
    (&["--resync-interval-s", "7"], "resync_interval_s = 7"),
    (&["--drain-s", "12"], "drain_s = 12"),
    (&["--ipvs-table", "exclusive"], "ipvs_table = \"exclusive\""),
    (&["--health-checkers", "3"], "health_checkers = 3"),
    (
        &["--lb-class", "x.example/lb"],
        "lb_class = \"x.example/lb\"",
    ),
    (
        &["--vip-pools", "203.0.113.0/28,2001:db8::/120"],
        "vip_pools = [\"203.0.113.0/28\", \"2001:db8::/120\"]",
    ),
    (&["--namespace", "app"], "namespace = \"app\""),
    (
        &["--kubeconfig", "/root/.kube/config"],
        "kubeconfig = \"/root/.kube/config\"",
    ),
    (&["--vip-interface", "lb0"], "vip_interface = \"lb0\""),
    (&["--announce", "l2"], "announce = \"l2\""),
    (&["--interface", "eth1"], "interface = \"eth1\""),
    (&["--shutdown-drain-s", "9"], "shutdown_drain_s = 9"),
    (
        &["--withdraw-when-no-backends", "false"],
        "withdraw_when_no_backends = false",
    ),
    (
        &["--freeze-withdraw-ms", "1500"],
        "freeze_withdraw_ms = 1500",
    ),
    (
        &["--admin-token-file", "/run/token"],
        "admin_token_file = \"/run/token\"",
    ),
];

#[test]
fn every_setting_is_a_flag_and_a_key_of_the_same_name() {
    let command = Cli::command();
    let run = command.find_subcommand("run").unwrap();
    let flag_ids: BTreeSet<String> = run
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| l.replace('-', "_")))
        .collect();
    let names: BTreeSet<String> = RunSettings::NAMES.iter().map(|n| n.to_string()).collect();
    let file_only = BTreeSet::from(["bgp".to_string()]);
    let flag_only = BTreeSet::from(["config".to_string()]);
    assert_eq!(
        flag_ids.union(&file_only).cloned().collect::<BTreeSet<_>>(),
        names,
        "flags and settings differ"
    );
    let tested: BTreeSet<String> = SAME_SETTING
        .iter()
        .map(|(argv, _)| argv[0].trim_start_matches("--").replace('-', "_"))
        .collect();
    let expected: BTreeSet<String> = names
        .difference(&file_only.union(&flag_only).cloned().collect())
        .cloned()
        .collect();
    assert_eq!(tested, expected, "a setting is missing from SAME_SETTING");
}

#[test]
fn a_flag_and_the_same_config_key_give_the_same_settings() {
    for (argv, key) in SAME_SETTING {
        let from_flag = flags(argv);
        let from_file = file(key);
        assert_ne!(from_flag, RunSettings::default(), "{argv:?} set nothing");
        assert_eq!(from_flag, from_file, "{argv:?} vs {key}");
    }
    // And the whole lot at once, resolved the same way.
    let argv: Vec<&str> = [
        "--node-id",
        "n-7",
        "--listen",
        "198.18.0.7:7946",
        "--admin",
        "198.18.0.7:9100",
        "--insecure",
        "--rules",
        "/r.toml",
        "--resync-interval-s",
        "7",
        "--drain-s",
        "12",
        "--health-checkers",
        "3",
        "--cluster",
        "lab",
        "--vip-interface",
        "lb0",
        "--announce",
        "l2",
        "--interface",
        "eth1",
        "--freeze-withdraw-ms",
        "1500",
        "--single-node",
        "--dataplane",
        "ipvs",
    ]
    .to_vec();
    let toml_text =
        "node_id = \"n-7\"\nlisten = \"198.18.0.7:7946\"\nadmin = \"198.18.0.7:9100\"\n\
        dataplane = \"ipvs\"\n\
        insecure = true\nrules = \"/r.toml\"\nresync_interval_s = 7\ndrain_s = 12\n\
        health_checkers = 3\ncluster = \"lab\"\nvip_interface = \"lb0\"\nannounce = \"l2\"\n\
        interface = \"eth1\"\nfreeze_withdraw_ms = 1500\nsingle_node = true\n";
    let by_flags = NodeConfig::resolve(&flags(&argv)).unwrap();
    let (only_file, _f) = with_file(RunSettings::default(), toml_text);
    let by_file = NodeConfig::resolve(&only_file).unwrap();
    assert_eq!(format!("{by_flags:?}"), format!("{by_file:?}"));
}

#[test]
fn flags_win_over_the_file() {
    let (a, _f) = with_file(
        args(),
        "cluster = \"from-file\"\nnode_id = \"file-node\"\nresync_interval_s = 3\n\
         drain_s = 4\nvip_interface = \"file0\"\nseeds = [\"f:1\"]\ndataplane = \"ipvs\"",
    );
    let cfg = NodeConfig::resolve(&a).unwrap();
    assert_eq!(cfg.node_id, "a");
    assert_eq!(cfg.cluster, "from-file");
    assert_eq!(cfg.resync_interval, Duration::from_secs(3));
    let mut over = a.clone();
    over.resync_interval_s = Some(8);
    over.drain_s = Some(0);
    over.vip_interface = Some("flag0".into());
    over.seeds = Some(vec!["g:2".into()]);
    let cfg = NodeConfig::resolve(&over).unwrap();
    assert_eq!(cfg.resync_interval, Duration::from_secs(8));
    assert_eq!(cfg.drain, Duration::ZERO);
    assert_eq!(cfg.vip_interface, "flag0");
    assert_eq!(cfg.seeds, ["g:2"]);
    // A bad value in the file is refused even when... the flag does not set it.
    let (a, _f) = with_file(args(), "health_checkers = 0");
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("health_checkers"), "{err}");
    // ...and a flag that sets it replaces the bad file value.
    let mut fixed = a.clone();
    fixed.health_checkers = Some(2);
    assert!(NodeConfig::resolve(&fixed).is_ok());
}

#[test]
fn defaults_come_from_their_owners() {
    let cfg = NodeConfig::resolve(&args()).unwrap();
    assert_eq!(cfg.cluster, shoal_gossip::DEFAULT_CLUSTER_ID);
    assert_eq!(
        cfg.vip_interface,
        shoal_dataplane::IpvsOptions::default().interface
    );
    assert_eq!(
        cfg.health_checkers,
        crate::health::HealthConfig::default().checkers_per_backend
    );
    assert_eq!(
        cfg.resync_interval,
        Duration::from_secs(crate::reconcile::DEFAULT_RESYNC_INTERVAL_S)
    );
    assert_eq!(cfg.announce, AnnounceSettings::default());
    assert_eq!(cfg.drain, Duration::ZERO);
    let mut k = args();
    k.source = Some(SourceKind::Kubernetes);
    k.rules = None;
    let cfg = NodeConfig::resolve(&k).unwrap();
    assert_eq!(cfg.drain, Duration::from_secs(30));
    let Source::Kubernetes(ks) = cfg.source else {
        panic!("kubernetes")
    };
    assert_eq!(
        ks.lb_class,
        crate::source::kubernetes::DEFAULT_LOAD_BALANCER_CLASS
    );
}

#[test]
fn refuses_to_start_without_tls_unless_insecure() {
    let mut a = args();
    a.insecure = false;
    assert!(matches!(NodeConfig::resolve(&a), Err(ConfigError::NoTls)));
    assert!(NodeConfig::resolve(&args()).is_ok());
}

#[test]
fn unknown_file_settings_are_named() {
    let (a, _f) = with_file(args(), "clustre = \"typo\"");
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("clustre"), "{err}");
    // `config` is a flag only: a config file cannot point at another one.
    let (a, _f) = with_file(args(), "config = \"/etc/other.toml\"");
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("config"), "{err}");
}

/// Every bound, broken once from a flag and once from the file: the error names the key and
/// the flag.
#[test]
fn every_bound_is_checked_at_start_up_naming_the_setting() {
    let cases: &[(&str, &str, &str)] = &[
        ("resync_interval_s", "0", "outside 1-86400"),
        (
            "resync_interval_s",
            "9223372036854775807",
            "outside 1-86400",
        ),
        ("drain_s", "86401", "outside 0-86400"),
        ("health_checkers", "17", "outside 1-16"),
        ("health_checkers", "0", "outside 1-16"),
        ("freeze_withdraw_ms", "100", "outside 200-60000"),
        ("shutdown_drain_s", "3601", "outside 0-3600"),
        ("node_id", "\"\"", "1-253"),
        ("node_id", "\"a b\"", "not usable"),
        ("node_id", "\"nöde-ü\"", "not usable"),
        ("node_id", "\"a,b\"", "letters, digits"),
        ("cluster", "\"x y\"", "without spaces"),
        ("vip_interface", "\"a-very-long-interface\"", "1-15"),
        ("vip_interface", "\"a/b\"", "not an interface name"),
        ("interface", "\"eth 0\"", "not an interface name"),
        ("interface", "\"eth0:1\"", "give eth0"),
        ("vip_interface", "\"eth0:1\"", "not an interface name"),
        ("vip_interface", "\"..\"", "not an interface name"),
        ("seeds", "[\"no-port\"]", "no-port"),
        ("seeds", "[\"fd00::1\"]", "[address]:port"),
        ("seeds", "[\"a b:1\"]", "not an IPv4 address or a host name"),
        (
            "seeds",
            "[\"http://x:1\"]",
            "not an IPv4 address or a host name",
        ),
        ("seeds", "[\":18002\"]", "no host"),
        ("seeds", "[\"127.0.0.1:0\"]", "outside 1-65535"),
        (
            "seeds",
            "[\"2001:db8::1:7946\"]",
            "write [2001:db8::1]:7946",
        ),
        ("state_dir", "\"\"", "is empty"),
        ("tls_dir", "\"\"", "is empty"),
        ("lb_class", "\"\"", "1-253"),
    ];
    for (key, value, needle) in cases {
        let mut base = args();
        if *key == "lb_class" {
            base.source = Some(SourceKind::Kubernetes);
            base.rules = None;
        }
        if ["freeze_withdraw_ms", "shutdown_drain_s"].contains(key) {
            base.announce = Some(AnnounceKind::L2);
            base.interface = Some("eth0".into());
        }
        if *key == "node_id" {
            base.node_id = None;
        }
        if *key == "seeds" {
            base.seeds = None;
        }
        let (a, _f) = with_file(base.clone(), &format!("{key} = {value}"));
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        let flag = RunSettings::flag_of(key);
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(&flag) && err.contains(needle),
            "file {key} = {value}: {err}"
        );
        // The same value from the flag.
        let flag_value: String = match toml::from_str::<toml::Value>(&format!("v = {value}"))
            .unwrap()
            .get("v")
            .unwrap()
        {
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        let mut argv: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:7946".into(),
            "--admin".into(),
            "127.0.0.1:9100".into(),
            "--insecure".into(),
            flag.clone(),
            flag_value,
        ];
        if *key != "node_id" {
            argv.extend(["--node-id".into(), "a".into()]);
        }
        if *key == "lb_class" {
            argv.extend(["--source".into(), "kubernetes".into()]);
        } else {
            argv.extend(["--rules".into(), "r.toml".into()]);
        }
        if ["freeze_withdraw_ms", "shutdown_drain_s"].contains(key) {
            argv.extend([
                "--announce".into(),
                "l2".into(),
                "--interface".into(),
                "eth0".into(),
            ]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let Ok(cli) = Cli::try_parse_from(["shoal", "run"].iter().chain(&argv)) else {
            continue; // clap itself refuses it (e.g. a number out of u64): named by clap.
        };
        let Command::Run(s) = cli.command else {
            panic!()
        };
        let err = NodeConfig::resolve(&s).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(&flag) && err.contains(needle),
            "flag {flag} {value}: {err}"
        );
    }
}

#[test]
fn admin_tokens_are_read_trimmed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
    let mut a = args();
    a.admin_token_file = Some(path.clone());
    let cfg = NodeConfig::resolve(&a).unwrap();
    assert_eq!(cfg.admin_token.as_deref(), Some("0123456789abcdef0123"));
    std::fs::write(&path, "short").unwrap();
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("admin_token_file"), "{err}");
    a.admin_token_file = Some("/dev/zero".into());
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn announce_errors_name_the_setting() {
    let (a, _f) = with_file(
        args(),
        "announce = \"bgp\"\n[bgp]\nlocal_asn = 64512\n[[bgp.peers]]\naddress = \"198.18.1.1\"\nasn = 64500\nhold_tme_s = 3",
    );
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("hold_tme_s"), "{err}");
    let mut a = args();
    a.announce = Some(AnnounceKind::Bgp);
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("[bgp]"), "{err}");
    let mut a = args();
    a.announce = Some(AnnounceKind::L2);
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(
        err.contains("interface") && err.contains("--interface"),
        "{err}"
    );
    let cfg = NodeConfig::resolve(&args()).unwrap();
    assert_eq!(cfg.announce.mode, None);
    assert_eq!(cfg.announce.shutdown_drain, Duration::from_secs(5));
}

#[test]
fn kubernetes_settings_are_checked_at_start_up_naming_the_setting() {
    let mut a = args();
    a.source = Some(SourceKind::Kubernetes);
    a.rules = None;
    a.vip_pools = Some(vec!["203.0.113.0/24".into()]);
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("`vip_pools` (--vip-pools)"), "{err}");
    a.namespace = Some("App".into());
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("`namespace` (--namespace)"), "{err}");
    a.namespace = Some("app".into());
    a.vip_pools = Some(vec!["203.0.113.0/33".into()]);
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("vip_pools") && err.contains("/33"), "{err}");
    a.vip_pools = Some(vec!["203.0.113.0/28".into()]);
    assert!(NodeConfig::resolve(&a).is_ok());
}

/// Issue #15: `--config /dev/zero` read forever. Devices, directories and FIFOs are refused
/// without being opened, and so is a file over the cap, each with the path named.
#[test]
fn config_files_that_are_not_small_regular_files_are_refused_naming_the_path() {
    let mut a = args();
    a.config = Some("/dev/zero".into());
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    a.config = Some(dir.path().to_path_buf());
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("directory"), "{err}");
    let big = dir.path().join("big.toml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    std::fs::write(
        &big,
        line.repeat(CONFIG_FILE_CAP_BYTES as usize / line.len() + 1),
    )
    .unwrap();
    a.config = Some(big.clone());
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(
        err.contains(&big.display().to_string()) && err.contains("limit"),
        "{err}"
    );
}

/// Seeds that passed the old check (a port after the last `:`) and then failed DNS forever:
/// such a node may found a cluster of its own. Exactly IPv4:port, [IPv6]:port, hostname:port.
#[test]
fn seeds_are_ipv4_bracketed_ipv6_or_dns_names_with_a_port() {
    for good in [
        "198.18.0.2:7946",
        "[2001:db8::1]:7946",
        "[::1]:1",
        "shoal-peers:7946",
        "shoal-0.shoal-peers.shoal.svc.cluster.local:7946",
        "Node-1.Example:65535",
        "localhost:18002",
        "a:1",
    ] {
        assert_eq!(check_seed(good), Ok(()), "{good}");
    }
    let long_label = format!("{}:1", "a".repeat(64));
    let long_name = format!("{}:1", vec!["a".repeat(50); 6].join("."));
    for bad in [
        "fd00::1",
        "a b:1",
        "http://x:1",
        ":18002",
        "127.0.0.1:0",
        "2001:db8::1:7946",
        "[2001:db8::1]",
        "[2001:db8::1]:",
        "[nope]:1",
        "x:+1",
        "x:65536",
        "-x:1",
        "x-:1",
        "a..b:1",
        "a.b.:1",
        "x_y:1",
        "10.0.0.256:1",
        "host",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        assert!(check_seed(bad).is_err(), "{bad} accepted");
    }
    let err = check_seed("2001:db8::1:7946").unwrap_err();
    assert!(err.contains("[2001:db8::1]:7946"), "{err}");
}

/// Port 0 binds a random port: the admin one is never logged, and peers are told `:0`.
#[test]
fn listen_and_admin_refuse_port_0_naming_the_flag() {
    for (field, flag) in [("listen", "--listen"), ("admin", "--admin")] {
        let mut a = args();
        match field {
            "listen" => a.listen = Some("127.0.0.1:0".parse().unwrap()),
            _ => a.admin = Some("127.0.0.1:0".parse().unwrap()),
        }
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{field}` ({flag})")) && err.contains("port 0"),
            "{err}"
        );
        // The same from the file.
        let mut base = args();
        base.listen = None;
        base.admin = None;
        let other = if field == "listen" { "admin" } else { "listen" };
        let (f, _file) = with_file(
            base,
            &format!("{field} = \"[::1]:0\"\n{other} = \"[::1]:7\""),
        );
        let err = NodeConfig::resolve(&f).unwrap_err().to_string();
        assert!(err.contains(&format!("`{field}` ({flag})")), "{err}");
    }
}

/// `state_dir = ""` wrote the epoch file into the current directory.
#[test]
fn empty_paths_are_refused() {
    for key in ["state_dir", "tls_dir", "rules", "admin_token_file"] {
        let (a, _f) = with_file(args(), &format!("{key} = \"\""));
        let mut a = a;
        if key == "rules" {
            a.rules = None;
        }
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains("is empty"),
            "{key}: {err}"
        );
    }
    let mut a = args();
    a.state_dir = Some("/var/lib/shoal".into());
    assert!(NodeConfig::resolve(&a).is_ok());
}

/// As the kernel's dev_valid_name: 1-15 bytes, no '/', ':', whitespace, not `.` or `..`.
#[test]
fn interface_names_are_checked_as_the_kernel_does() {
    for good in [
        "eth0",
        "lb0",
        "shoal0",
        "enp0s31f6",
        "br-1.100",
        "a",
        "x".repeat(15).as_str(),
    ] {
        assert_eq!(check_interface_name(good), Ok(()), "{good}");
    }
    for bad in [
        "", ".", "..", "eth0:1", "a/b", "eth 0", "eth\t0", "x\u{0}y",
        "à", // 0xc3 0xa0: 0xa0 is space to the kernel
    ] {
        assert!(check_interface_name(bad).is_err(), "{bad:?} accepted");
    }
    assert!(check_interface_name(&"x".repeat(16)).is_err());
    // Both interface settings use it.
    let mut a = args();
    a.interface = Some("eth0:1".into());
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("`interface` (--interface)"), "{err}");
    let mut a = args();
    a.dataplane = Some(DataplaneKind::Ipvs);
    a.vip_interface = Some("eth0:1".into());
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(err.contains("`vip_interface` (--vip-interface)"), "{err}");
}

/// `run` accepts exactly the node ids `shoal certs init` issues certificates for.
#[test]
fn node_ids_are_those_certs_init_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for id in ["nöde-ü", "a,b", "a/b", "..", "a b", ""] {
        let mut a = args();
        a.node_id = Some(id.into());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains("`node_id` (--node-id)") && err.contains("shoal certs init"),
            "{id:?}: {err}"
        );
        assert!(
            shoal_gossip::certs::write_cluster_dir(&dir.path().join("x"), "c", &[id.into()])
                .is_err(),
            "{id:?}"
        );
    }
    for id in ["shoal-0", "n_1", "lb-1.example", "N7"] {
        let mut a = args();
        a.node_id = Some(id.into());
        assert!(NodeConfig::resolve(&a).is_ok(), "{id}");
    }
}

/// There is no `--bgp`: the error says where the table goes. A pool error is one message.
#[test]
fn file_only_and_pool_errors_read_cleanly() {
    let mut a = args();
    a.announce = Some(AnnounceKind::Bgp);
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(
        !err.contains("--bgp") && err.contains("[bgp] table of the --config file"),
        "{err}"
    );
    let mut a = args();
    a.source = Some(SourceKind::Kubernetes);
    a.rules = None;
    a.namespace = Some("app".into());
    a.vip_pools = Some(vec!["".into()]);
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert_eq!(
        err,
        "setting `vip_pools` (--vip-pools): \"\" is not a CIDR (expected e.g. 203.0.113.0/24)"
    );
    a.vip_pools = Some(vec!["203.0.113.0/28".into(), "203.0.113.8/29".into()]);
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert_eq!(
        err,
        "setting `vip_pools` (--vip-pools): 203.0.113.8/29 overlaps 203.0.113.0/28"
    );
}

/// Kubernetes settings with the static source did nothing, silently: refused, named.
#[test]
fn kubernetes_settings_with_the_static_source_are_refused() {
    for (key, value) in [
        ("namespace", "\"app\""),
        ("vip_pools", "[\"203.0.113.0/28\"]"),
        ("kubeconfig", "\"/root/.kube/config\""),
        ("lb_class", "\"x.example/lb\""),
    ] {
        let (a, _f) = with_file(args(), &format!("{key} = {value}"));
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}` ({})", RunSettings::flag_of(key)))
                && err.contains("static"),
            "{key}: {err}"
        );
        let mut k = a.clone();
        k.source = Some(SourceKind::Kubernetes);
        k.rules = None;
        if key == "namespace" {
            k.vip_pools = Some(vec!["203.0.113.0/28".into()]);
        }
        if key == "vip_pools" {
            k.namespace = Some("app".into());
        }
        assert!(NodeConfig::resolve(&k).is_ok(), "{key} with kubernetes");
    }
}

/// A node with no seeds and no --single-node became ready and published alone: a silent
/// second publisher. It is refused, naming both ways out; --single-node, or seeds naming only
/// the node itself (the first pod of a StatefulSet), still start.
#[test]
fn no_seeds_without_single_node_is_refused_naming_both_flags() {
    let mut a = args();
    a.seeds = None;
    let err = NodeConfig::resolve(&a).unwrap_err().to_string();
    assert!(
        err.contains("--seeds") && err.contains("--single-node") && err.contains("none given"),
        "{err}"
    );
    a.seeds = Some(vec![]);
    assert!(
        NodeConfig::resolve(&a).is_err(),
        "an empty list is no seeds"
    );
    a.seeds = None;
    let (from_file, _f) = with_file(a.clone(), "seeds = []");
    let err = NodeConfig::resolve(&from_file).unwrap_err().to_string();
    assert!(err.contains("`seeds`"), "{err}");
    let mut alone = a.clone();
    alone.single_node = true;
    assert!(NodeConfig::resolve(&alone).unwrap().seeds.is_empty());
    let mut first_pod = a.clone();
    first_pod.seeds = Some(vec!["127.0.0.1:7946".into()]); // its own --listen
    assert!(NodeConfig::resolve(&first_pod).is_ok());
}

/// The audit of 2026-12-06: settings that the node as configured would not use were accepted
/// silently (a shutdown drain without announcements: SIGTERM exited after 0.3 s). Refused,
/// named, with the way out.
#[test]
fn settings_this_node_would_not_use_are_refused() {
    for (text, key, says) in [
        (
            "interface = \"eth0\"",
            "interface",
            "only `--announce l2` uses it",
        ),
        (
            "announce = \"bgp\"\ninterface = \"eth0\"\n[bgp]\nlocal_asn = 65001\n",
            "interface",
            "announces by BGP",
        ),
        (
            "shutdown_drain_s = 30",
            "shutdown_drain_s",
            "announces nothing",
        ),
        (
            "freeze_withdraw_ms = 1500",
            "freeze_withdraw_ms",
            "announces nothing",
        ),
        (
            "withdraw_when_no_backends = false",
            "withdraw_when_no_backends",
            "announces nothing",
        ),
        (
            "[bgp]\nlocal_asn = 65001\n",
            "bgp",
            "only `--announce bgp` uses it",
        ),
        ("tls_dir = \"/nonexistent\"", "tls_dir", "--insecure"),
        (
            "source = \"kubernetes\"",
            "rules",
            "only the static source reads it",
        ),
    ] {
        let (a, _f) = with_file(args(), text);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(says),
            "{text}: {err}"
        );
    }
    // With what they need, the same settings are taken.
    let (a, _f) = with_file(
        args(),
        "announce = \"l2\"\ninterface = \"eth0\"\nshutdown_drain_s = 30\nfreeze_withdraw_ms = 1500\n\
         withdraw_when_no_backends = false",
    );
    let cfg = NodeConfig::resolve(&a).unwrap();
    assert_eq!(cfg.announce.shutdown_drain, Duration::from_secs(30));
}

/// Relative paths in the file are the file's folder's (they were the working directory's: an
/// operator's probe); in flags they stay the working directory's.
#[test]
fn relative_paths_in_the_file_are_taken_from_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("node.toml");
    std::fs::write(&cfg_path, "rules = \"rules.toml\"\nstate_dir = \"st\"\n").unwrap();
    let mut a = args();
    a.rules = None;
    a.config = Some(cfg_path);
    let cfg = NodeConfig::resolve(&a).unwrap();
    let Source::Static { rules } = &cfg.source else {
        panic!("static source")
    };
    assert_eq!(rules, &dir.path().join("rules.toml"));
    assert_eq!(cfg.state_dir, Some(dir.path().join("st")));
    let mut by_flag = a.clone();
    by_flag.rules = Some("here.toml".into());
    let cfg = NodeConfig::resolve(&by_flag).unwrap();
    let Source::Static { rules } = &cfg.source else {
        panic!("static source")
    };
    assert_eq!(rules, Path::new("here.toml"));
    // [bgp]: a folder too; the bird binary only when it is a path, not a name for PATH.
    let file = |text: &str| {
        let s: RunSettings = toml::from_str(text).unwrap();
        relative_to(s, Path::new("/etc/shoal")).bgp.unwrap()
    };
    let bgp = file("[bgp]\nbird = \"bird\"\nstate_dir = \"b\"\n");
    assert_eq!(bgp.bird, Some(PathBuf::from("bird")));
    assert_eq!(bgp.state_dir, Some(PathBuf::from("/etc/shoal/b")));
    let bgp = file("[bgp]\nbird = \"bin/bird\"\nstate_dir = \"/run/b\"\n");
    assert_eq!(bgp.bird, Some(PathBuf::from("/etc/shoal/bin/bird")));
    assert_eq!(bgp.state_dir, Some(PathBuf::from("/run/b")));
}

/// The ipvs dataplane's settings with the memory dataplane were accepted without a word (an
/// operator's probe): refused, naming the setting, as the announcement's are without one.
#[test]
fn ipvs_settings_without_the_ipvs_dataplane_are_refused() {
    for (field, set) in [
        (
            "ipvs_table",
            &(|a: &mut RunSettings| a.ipvs_table = Some(crate::cli::IpvsTable::Exclusive))
                as &dyn Fn(&mut RunSettings),
        ),
        ("vip_interface", &|a: &mut RunSettings| {
            a.vip_interface = Some("lb0".into())
        }),
    ] {
        let mut a = args();
        set(&mut a);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains(field) && err.contains("--dataplane ipvs"),
            "{err}"
        );
        a.dataplane = Some(DataplaneKind::Ipvs);
        assert!(NodeConfig::resolve(&a).is_ok(), "{field} with ipvs");
    }
}

/// A host name for an address to bind gets an answer that says what to give instead (clap's
/// own parser said only "invalid socket address syntax").
#[test]
fn listen_and_admin_ask_for_an_ip_and_a_port() {
    for flag in ["--listen", "--admin"] {
        let err = match Cli::try_parse_from(["shoal", "run", flag, "localhost:7946"]) {
            Ok(_) => panic!("{flag} localhost:7946 was taken"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(flag) && err.contains("not IP:port") && err.contains("host name"),
            "{err}"
        );
    }
}
