//! Translation cost at cluster scale: kube-proxy's IPVS mode is known to take seconds per sync
//! with thousands of Services (kubernetes#84906); the publisher's translation must not.
//! A generous bound only (debug build, shared CI machine); the figure is printed.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use shoal_node::source::kubernetes::pools::{parse_pools, PoolObject, PoolSpec};
use shoal_node::source::kubernetes::translate::{translate, Settings};
use std::time::Instant;

#[test]
fn two_thousand_services_translate_quickly() {
    let services_n = 2000;
    let endpoints_n = 20;
    let services: Vec<Service> = (0..services_n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"namespace": format!("ns{}", i % 50), "name": format!("svc{i}"),
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "shoal.io/lb",
                         "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
            }))
            .unwrap()
        })
        .collect();
    let slices: Vec<EndpointSlice> = (0..services_n)
        .map(|i| {
            let eps: Vec<_> = (0..endpoints_n)
                .map(|j| json!({"addresses": [format!("198.18.{}.{}", (i * endpoints_n + j) / 250 % 250, (i * endpoints_n + j) % 250 + 1)]}))
                .collect();
            serde_json::from_value(json!({
                "metadata": {"namespace": format!("ns{}", i % 50), "name": format!("svc{i}-x"),
                             "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}],
                "endpoints": eps,
            }))
            .unwrap()
        })
        .collect();
    let (pools, problems) = parse_pools(&[PoolObject {
        name: "p".into(),
        created_s: 0,
        spec: PoolSpec {
            addresses: vec!["203.0.112.0/21".into(), "198.51.100.0/24".into()],
            ..PoolSpec::default()
        },
    }]);
    assert!(problems.is_empty());
    let settings = Settings {
        load_balancer_class: "shoal.io/lb",
        pools: &pools,
    };
    let mut times_ms = Vec::new();
    let mut out = None;
    for _ in 0..5 {
        let start = Instant::now();
        out = Some(translate(&services, &slices, &settings));
        times_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let out = out.unwrap();
    assert!(
        out.problems.is_empty(),
        "{:?}",
        &out.problems[..3.min(out.problems.len())]
    );
    assert_eq!(out.table.services.len(), 2 * services_n);
    assert!(out
        .table
        .services
        .iter()
        .all(|s| s.backends.len() == endpoints_n));
    assert_eq!(out.vips.len(), services_n);
    times_ms.sort_by(f64::total_cmp);
    println!(
        "translate {services_n} services x 2 ports x {endpoints_n} endpoints: median {:.1} ms, max {:.1} ms",
        times_ms[2], times_ms[4]
    );
    assert!(times_ms[2] < 5000.0, "median {} ms", times_ms[2]);
}
