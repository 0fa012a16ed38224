//! Tests of certificate issuing and loading (the parent module).

use super::*;
use proptest::prelude::*;

#[test]
fn written_dir_loads_and_node_certs_chain_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    write_cluster_dir(dir.path(), "Test_Cluster", &["n1".into(), "n2".into()]).unwrap();
    let m = TlsMaterial::load_dir(&dir.path().join("n1")).unwrap();
    let parsed = m.parse().unwrap();
    assert_eq!(parsed.chain.len(), 1);
    assert_eq!(m.node_id().as_deref(), Some("n1"));
    let ca = ClusterCa::load_dir(dir.path()).unwrap();
    assert_eq!(ca.cluster_id_hint().as_deref(), Some("Test_Cluster"));
    assert!(issue_node_cert(&ca, "n3").is_ok());
    // A second init into the same folder would replace the CA: refused.
    let err = write_cluster_dir(dir.path(), "Test_Cluster", &[]).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }), "{err}");
}

#[cfg(unix)]
#[test]
fn keys_are_private_and_certs_public() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // An existing world-readable key is tightened, not just new ones created 0600.
    std::fs::create_dir_all(dir.path().join("n1")).unwrap();
    std::fs::write(dir.path().join("n1/node.key"), "old").unwrap();
    std::fs::set_permissions(
        dir.path().join("n1/node.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    write_cluster_dir(dir.path(), "c", &["n1".into()]).unwrap();
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("n1/node.key"), 0o600);
    assert_eq!(mode("ca.pem"), 0o644);
    assert_eq!(mode("n1/node.pem"), 0o644);
}

#[test]
fn validity_defaults_and_choices() {
    let days = |der: &[u8]| {
        let (a, b) = validity_of(der).unwrap();
        b.duration_since(a).unwrap().as_secs() / 86_400
    };
    let ca = create_ca("c").unwrap();
    let ca_der = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
        .next()
        .unwrap()
        .unwrap();
    // 10 years plus the one-hour back-dating.
    assert_eq!(days(&ca_der), 3_650);
    let m = issue_node_cert(&ca, "n1").unwrap();
    assert_eq!(days(&m.parse().unwrap().chain[0]), 365);
    let m = issue_node_cert_with(&ca, "n1", 7).unwrap();
    assert_eq!(days(&m.parse().unwrap().chain[0]), 7);
    let (from, _) = validity_of(&m.parse().unwrap().chain[0]).unwrap();
    assert!(from < SystemTime::now());
    assert!(matches!(
        issue_node_cert_with(&ca, "n1", 0),
        Err(CertError::BadValidity { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let bad = Validity {
        ca_days: DAYS_MAX + 1,
        node_days: 1,
    };
    let err = write_cluster_dir_with(dir.path(), "c", &[], bad).unwrap_err();
    assert!(err.to_string().contains("ca_days"), "{err}");
}

#[test]
fn expired_certificates_are_refused_at_load() {
    let ca = create_ca("c").unwrap();
    let mut params = CertificateParams::new(vec!["gossip.c".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::UNIX_EPOCH;
    params.not_after = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("node.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("node.key"), key.serialize_pem()).unwrap();
    let err = TlsMaterial::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("node.pem"), "{err}");
}

#[test]
fn issue_into_bundles_the_trusted_cas() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    write_cluster_dir(&old, "c", &[]).unwrap();
    write_cluster_dir(&new, "c", &[]).unwrap();
    let out = dir.path().join("out");
    issue_into(&new, &["n1".into()], &out, 30, &[old.join("ca.pem")]).unwrap();
    let m = TlsMaterial::load_dir(&out.join("n1")).unwrap();
    assert_eq!(m.parse().unwrap().ca.len(), 2);
    assert_eq!(m.node_id().as_deref(), Some("n1"));
    let err = issue_into(&new, &["n1".into()], &out, 30, &[dir.path().join("nope")]).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    // Each CA once: the issuing CA and a file given twice are not written again.
    let again = [old.join("ca.pem"), old.join("ca.pem"), new.join("ca.pem")];
    issue_into(&new, &["n2".into()], &out, 30, &again).unwrap();
    let m = TlsMaterial::load_dir(&out.join("n2")).unwrap();
    assert_eq!(m.parse().unwrap().ca.len(), 2);
    // A node certificate is no CA to trust.
    let leaf = out.join("n1").join("node.pem");
    let err = issue_into(&new, &["n3".into()], &out, 30, &[leaf]).unwrap_err();
    assert!(err.to_string().contains("not a CA's"), "{err}");
}

/// A ca.key from another CA beside ca.pem signed certificates that failed every check, and
/// only `shoal run` said so (an operator's probe): the CA does not load.
#[test]
fn a_ca_key_that_is_not_the_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_cluster_dir(&a, "c", &[]).unwrap();
    write_cluster_dir(&b, "c", &[]).unwrap();
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    assert!(ClusterCa::load(&read(a.join("ca.pem")), &read(a.join("ca.key"))).is_ok());
    let err = ClusterCa::load(&read(a.join("ca.pem")), &read(b.join("ca.key"))).unwrap_err();
    assert!(
        err.to_string().contains("not the key of the certificate"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_cluster_dir(dir.path(), "c", &["../x".into()]).unwrap_err();
    assert!(matches!(err, CertError::BadNodeId { .. }), "{err}");
    let err = TlsMaterial::load_dir(&dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");
    let err = ClusterCa::load("garbage", "garbage").unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
}

/// The audit of 2026-12-06: `certs init` wrote a CA for cluster names `shoal run --cluster`
/// refuses (`''`, `'x y'`), wrote a node given twice twice, and issued node certificates that
/// outlived their CA by years.
#[test]
fn names_no_node_can_run_under_and_certificates_outliving_their_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = |ca_days, node_days| Validity { ca_days, node_days };
    for cluster in ["", "x y", "tab\there", &"c".repeat(254)] {
        let err = write_cluster_dir_with(dir.path(), cluster, &[], v(30, 10)).unwrap_err();
        assert!(
            matches!(err, CertError::BadClusterId { .. }),
            "{cluster:?}: {err}"
        );
    }
    let twice = ["a".to_string(), "b".into(), "a".into()];
    let err = write_cluster_dir_with(dir.path(), "c", &twice, v(30, 10)).unwrap_err();
    assert_eq!(err.to_string(), "node id \"a\" given twice");
    let err = write_cluster_dir_with(dir.path(), "c", &["n1".into()], v(10, 4000)).unwrap_err();
    assert!(
        matches!(
            err,
            CertError::OutlivesCa {
                node_days: 4000,
                ca_days_left: 9..=10,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--node-days"), "{err}");
    // Nothing was written by the refusals; a CA alone has no node certificates to outlive it.
    assert!(!dir.path().join("ca.key").exists());
    write_cluster_dir_with(dir.path(), "c", &[], v(10, 4000)).unwrap();
    // Issuing later from that CA: the node certificates must end within its ten days.
    let out = dir.path().join("out");
    let err = issue_into(dir.path(), &["n1".into()], &out, 30, &[]).unwrap_err();
    assert!(matches!(err, CertError::OutlivesCa { .. }), "{err}");
    let err = issue_into(dir.path(), &["n1".into(), "n1".into()], &out, 5, &[]).unwrap_err();
    assert!(matches!(err, CertError::DuplicateNodeId { .. }), "{err}");
    issue_into(dir.path(), &["n1".into()], &out, 5, &[]).unwrap();
    // The defaults (a 10-year CA, 1-year nodes) and equal lifetimes are fine.
    let other = tempfile::tempdir().unwrap();
    write_cluster_dir_with(other.path(), "c", &["n1".into()], v(30, 30)).unwrap();
    // A node certificate never ends after its CA: the check lets a request overshoot by up to
    // a day, and such certificates outlived their CA by that much (an operator's probe).
    let ca = create_ca_with("c", 30).unwrap();
    let ca_end = ca.validity().unwrap().1;
    let node = issue_node_cert_in(&ca, "n1", "c", 31).unwrap();
    assert!(node.node_validity().unwrap().1 <= ca_end);
    // An expired CA is named as such, and less than a day left is not "at most 0 days".
    let now = SystemTime::now();
    let err = files::check_within_ca(1, now - Duration::from_secs(60)).unwrap_err();
    assert!(matches!(err, CertError::CaExpired { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    let err = files::check_within_ca(5, now + Duration::from_secs(3_600)).unwrap_err();
    assert!(err.to_string().contains("less than a day left"), "{err}");
}

#[test]
fn server_name_is_a_dns_label() {
    assert_eq!(cluster_server_name("My Cluster!"), "gossip.my-cluster");
    assert_eq!(cluster_server_name("__"), "gossip.x");
}

#[test]
fn node_uri_examples() {
    assert_eq!(node_uri("shoal-0"), "urn:shoal:node:shoal-0");
    assert_eq!(node_uri("a/b c"), "urn:shoal:node:a%2Fb%20c");
    assert_eq!(
        node_id_from_uri("urn:shoal:node:a%2Fb").as_deref(),
        Some("a/b")
    );
    assert_eq!(node_id_from_uri("urn:shoal:node:"), None);
    assert_eq!(node_id_from_uri("urn:shoal:node:a%2"), None);
    assert_eq!(node_id_from_uri("urn:shoal:node:a b"), None);
    assert_eq!(node_id_from_uri("spiffe://x/n1"), None);
}

#[test]
fn certificates_without_or_with_two_ids_name_none() {
    let ca = create_ca("c").unwrap();
    let plain = |sans: Vec<SanType>| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    };
    let uri = |s: &str| SanType::URI(rcgen::string::Ia5String::try_from(s.to_string()).unwrap());
    assert_eq!(cert_node_id(&plain(vec![])), None);
    assert_eq!(
        cert_node_id(&plain(vec![uri("urn:shoal:node:n1")])).as_deref(),
        Some("n1")
    );
    assert_eq!(
        cert_node_id(&plain(vec![
            uri("urn:shoal:node:n1"),
            uri("urn:shoal:node:n2")
        ])),
        None
    );
    assert_eq!(cert_node_id(b"garbage"), None);
}

proptest! {
    #[test]
    fn node_uris_round_trip(id in "\\PC{1,40}") {
        let uri = node_uri(&id);
        prop_assert!(uri.is_ascii());
        prop_assert_eq!(node_id_from_uri(&uri), Some(id));
    }

    #[test]
    fn uri_garbage_never_panics(s in ".{0,80}") {
        let _ = node_id_from_uri(&format!("{NODE_URI_PREFIX}{s}"));
    }
}

/// `ca.pem` of one cluster with `node.pem` of another loaded and served, and every peer
/// refused it: the node only said that no seed answered. Now the TLS set-up refuses it.
#[test]
fn a_node_certificate_from_another_ca_is_refused_at_start() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_cluster_dir(a.path(), "c", &["n1".into()]).unwrap();
    write_cluster_dir(b.path(), "c", &["n1".into()]).unwrap();
    let good = TlsMaterial::load_dir(&a.path().join("n1")).unwrap();
    assert!(crate::transport::tls::mutual(&good, "gossip.c").is_ok());
    let foreign = TlsMaterial {
        ca_pem: good.ca_pem.clone(),
        ..TlsMaterial::load_dir(&b.path().join("n1")).unwrap()
    };
    let err = crate::transport::tls::mutual(&foreign, "gossip.c")
        .unwrap_err()
        .to_string();
    assert!(err.contains("node.pem against ca.pem"), "{err}");
}

/// A certificate issued for cluster "prod" loaded under `--cluster staging` started and then
/// only said that no seed answered (every peer refused its handshakes). The check names the
/// file, the cluster it was issued for and the one given; the cluster's own name passes, in
/// any case the DNS name maps it to.
#[test]
fn a_certificate_is_checked_against_the_cluster_it_runs_in() {
    let ca = create_ca("prod").unwrap();
    let m = issue_node_cert(&ca, "n1").unwrap();
    let path = Path::new("/etc/shoal/tls/node.pem");
    m.check_cluster("prod", path).unwrap();
    m.check_cluster("Prod", path).unwrap();
    let err = m.check_cluster("staging", path).unwrap_err();
    assert!(matches!(err, CertError::WrongCluster { .. }), "{err}");
    let text = err.to_string();
    for part in [
        "/etc/shoal/tls/node.pem",
        "cluster \"prod\" (DNS name gossip.prod)",
        "\"staging\" (--cluster)",
        "gossip.staging",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    // A certificate with no cluster name at all (rcgen's default, "rcgen self signed cert").
    let bare = rcgen::generate_simple_self_signed(vec!["example.org".into()]).unwrap();
    let bare = TlsMaterial {
        ca_pem: bare.cert.pem(),
        cert_pem: bare.cert.pem(),
        key_pem: bare.signing_key.serialize_pem(),
    };
    let text = bare.check_cluster("prod", path).unwrap_err().to_string();
    assert!(
        text.contains("no cluster (its DNS names: example.org)"),
        "{text}"
    );
}
