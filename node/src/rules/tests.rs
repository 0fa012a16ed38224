//! Tests of the rules file parser (the parent module).

use super::*;

#[test]
fn example_parses() {
    let table = parse(EXAMPLE).unwrap();
    assert!(table.services.len() >= 2);
    let web = table.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.scheduler, "mh");
    assert!(web.flags.port);
    assert_eq!(web.forwarding, Forwarding::Tunnel(Tunnel::Ipip));
}

#[test]
fn defaults_are_mh_port_and_tunnel() {
    let t = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service.backend]]\naddress='198.18.0.2'\n").unwrap();
    let s = &t.services[0];
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.forwarding, Forwarding::Tunnel(Tunnel::Ipip));
    assert_eq!(s.backends[0].port, 80);
    assert_eq!(s.backends[0].weight, 1);
    assert!(s.flags.port && s.flags.fallback, "{:?}", s.flags);
}

#[test]
fn mh_fallback_can_be_turned_off_and_check_warns_when_health_checked() {
    let base = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nmh_fallback=false\n";
    let t = parse(base).unwrap();
    assert!(!t.services[0].flags.fallback);
    assert!(warnings(&t).is_empty(), "no health check: nothing drains");
    let t = parse(&format!("{base}[service.health]\nkind='tcp'\n")).unwrap();
    let w = warnings(&t);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("\"a\"") && w[0].contains("mh_fallback"),
        "{w:?}"
    );
    let on =
        parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[service.health]\nkind='tcp'\n")
            .unwrap();
    assert!(warnings(&on).is_empty());
}

#[test]
fn other_schedulers_get_no_mh_flags() {
    let t = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='rr'\n[service.health]\nkind='tcp'\n").unwrap();
    assert!(!t.services[0].flags.fallback && !t.services[0].flags.port);
    assert!(warnings(&t).is_empty());
    let e = parse(
        "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='rr'\nmh_fallback=true\n",
    )
    .unwrap_err();
    assert!(
        e.message.contains("mh_fallback needs scheduler \"mh\""),
        "{e}"
    );
}

/// Found with real traffic: with sh and a health check, IPVS kept hashing the clients of a
/// drained backend to it (sh skips weight-0 destinations only with sh-fallback, which a rules
/// file could not set), so they were refused while it was down, on every replica.
#[test]
fn sh_falls_back_from_drained_backends_by_default_and_keeps_affinity() {
    let sh = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='sh'\n";
    let t = parse(&format!("{sh}[service.health]\nkind='tcp'\n")).unwrap();
    let flags = t.services[0].flags;
    assert!(flags.fallback, "drained backends are skipped: {flags:?}");
    assert!(
        !flags.port,
        "the source port is not hashed (affinity per client): {flags:?}"
    );
    assert!(warnings(&t).is_empty());

    let t = parse(&format!(
        "{sh}sh_fallback=false\nsh_port=true\n[service.health]\nkind='tcp'\n"
    ))
    .unwrap();
    let flags = t.services[0].flags;
    assert!(!flags.fallback && flags.port, "{flags:?}");
    let w = warnings(&t);
    assert!(w.len() == 1 && w[0].contains("sh_fallback = true"), "{w:?}");

    for (line, key) in [
        ("mh_fallback=true", "mh_fallback"),
        ("mh_port=true", "mh_port"),
    ] {
        let e = parse(&format!("{sh}{line}\n")).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(
            e.field.ends_with(key) && e.message.contains("needs scheduler \"mh\", not \"sh\""),
            "{e}"
        );
    }
    let mh = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nsh_fallback=true\n";
    let e = parse(mh).unwrap_err();
    assert!(
        e.field.ends_with("sh_fallback") && e.message.contains("not \"mh\""),
        "{e}"
    );
    // `false` for another scheduler's flag says what that scheduler does anyway.
    assert!(parse(&format!("{sh}mh_fallback=false\n")).is_ok());
}

#[test]
fn bad_address_names_line_and_field() {
    let text = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n\n[[service.backend]]\naddress='198.18.0.999'\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 7, "{e}");
    assert!(e.to_string().contains("address"), "{e}");
}

#[test]
fn unknown_field_is_named() {
    let e = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\nwieght=3\n").unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    assert!(e.to_string().contains("wieght"), "{e}");
}

#[test]
fn tunnel_backends_must_keep_the_port() {
    let e = parse("[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service.backend]]\naddress='198.18.0.2'\nport=8080\n").unwrap_err();
    assert_eq!(e.field, "service[0].backend[0].port");
    assert_eq!(e.line, 7, "the port's own line");
}

#[test]
fn duplicate_names_and_endpoints_are_refused() {
    let dup = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service]]\nname='a'\nvip='203.0.113.2'\nport=80\n";
    assert!(parse(dup).unwrap_err().message.contains("twice"));
    let same = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service]]\nname='b'\nvip='203.0.113.1'\nport=80\n";
    let e = parse(same).unwrap_err();
    assert_eq!(e.line, 7, "the second service's vip line: {e}");
    assert_eq!(e.field, "service[1].vip");
}

#[test]
fn health_timeouts_are_checked() {
    let text = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[service.health]\nkind='http'\ninterval_ms=1000\ntimeout_ms=2000\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.field, "service[0].health.timeout_ms");
    assert_eq!(e.line, 8, "the timeout's own line: {e}");
    // The default timeout (500 ms) waits no longer than a shorter interval: `interval_ms`
    // alone below it was refused for a timeout the file never set (a probe).
    for (interval, timeout) in [(100, 100), (499, 499), (500, 500), (5_000, 500)] {
        let text = format!("{HEAD}[service.health]\nkind='http'\ninterval_ms={interval}\n");
        let table = parse(&text).unwrap();
        let h = table.services[0].health.as_ref().expect("health");
        assert_eq!(h.timeout_ms, timeout, "interval {interval}");
    }
}

#[test]
fn output_is_canonical() {
    let a = parse("[[service]]\nname='b'\nvip='203.0.113.1'\nport=80\n[[service]]\nname='a'\nvip='203.0.113.2'\nport=80\n").unwrap();
    assert_eq!(a.services[0].name, "a");
}

const HEAD: &str = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n";

/// Issue #15: `port = 0` was reported at the service's first line.
#[test]
fn port_zero_is_reported_at_its_own_line() {
    let e = parse("[[service]]\nname='a'\nvip='203.0.113.1'\n\nport=0\n").unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (5, "service[0].port"), "{e}");
    let e = parse(&format!(
        "{HEAD}forwarding='masq'\n[[service.backend]]\naddress='198.18.0.2'\n\nport=0\n"
    ))
    .unwrap_err();
    assert_eq!(
        (e.line, e.field.as_str()),
        (9, "service[0].backend[0].port"),
        "{e}"
    );
}

/// Issue #15: VIP 255.255.255.255 and other addresses no VIP can be were accepted.
#[test]
fn non_unicast_vips_are_refused_at_the_vip_line() {
    for vip in [
        "255.255.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "240.0.0.1",
        "127.0.0.1",
        "169.254.1.1",
        "::",
        "::1",
        "ff02::1",
        "fe80::1",
        "::ffff:203.0.113.1",
    ] {
        let e = parse(&format!("[[service]]\nname='a'\nport=80\nvip='{vip}'\n")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (4, "service[0].vip"),
            "{vip}: {e}"
        );
        assert!(e.message.contains("not a unicast address"), "{e}");
    }
    for vip in ["203.0.113.1", "10.0.0.1", "2001:db8::1"] {
        let text = format!("[[service]]\nname='a'\nport=80\nvip='{vip}'\n");
        assert!(parse(&text).is_ok(), "{vip}");
    }
}

/// Issue #15: backend 127.0.0.1 was accepted; a one-host lab must say so.
#[test]
fn loopback_backends_need_the_file_to_ask_for_them() {
    let text = format!("{HEAD}[[service.backend]]\naddress='127.0.0.1'\n");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.field, "service[0].backend[0].address");
    assert!(e.message.contains("loopback_backends = true"), "{e}");
    assert!(parse(&format!("loopback_backends = true\n{text}")).is_ok());
    let bcast =
        format!("loopback_backends = true\n{HEAD}[[service.backend]]\naddress='255.255.255.255'\n");
    assert!(parse(&bcast).is_err());
}

/// Issue #15: CR/LF in a health check's host or path went into the probe's request.
#[test]
fn control_characters_in_health_host_and_path_are_refused() {
    for (field, value) in [
        ("host", "a\\r\\nX-Injected: 1"),
        ("host", "a b"),
        ("host", ""),
        ("path", "/a\\r\\nX: 1"),
        ("path", "/a b"),
        ("path", "/\\u0000"),
    ] {
        let text = format!("{HEAD}[service.health]\nkind='http'\n{field}=\"{value}\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.field,
            format!("service[0].health.{field}"),
            "{value:?}: {e}"
        );
    }
    let ok = format!("{HEAD}[service.health]\nkind='http'\nhost='example.org'\npath='/h?x=1'\n");
    assert!(parse(&ok).is_ok());
}

#[test]
fn health_numbers_are_bounded() {
    for (field, value) in [
        ("interval_ms", "9223372036854775807"),
        ("interval_ms", "3600001"),
        ("rise", "101"),
        ("fall", "0"),
    ] {
        let text = format!("{HEAD}[service.health]\nkind='tcp'\n{field}={value}\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, format!("service[0].health.{field}"), "{e}");
    }
}

/// Issue #15, broken behaviour 4: an empty file parsed as a table without services.
#[test]
fn an_empty_table_must_be_asked_for() {
    for empty in ["", "\n", "# nothing yet\n"] {
        let e = parse(empty).unwrap_err();
        assert_eq!(e.field, "service");
        assert!(e.message.contains("no_services = true"), "{e}");
        // A file with nothing in it is most likely cut short: said so (a probe).
        let truncated = e.message.contains("the file is empty (truncated");
        assert_eq!(truncated, empty.trim().is_empty(), "{empty:?}: {e}");
    }
    assert_eq!(parse("no_services = true\n").unwrap(), RuleTable::default());
    let e = parse(&format!("no_services = true\n{HEAD}")).unwrap_err();
    assert_eq!(e.field, "no_services");
}

#[test]
fn source_ranges_are_checked_and_kept_sorted() {
    let t = parse(&format!(
        "{HEAD}source_ranges=['198.51.100.0/24', '192.0.2.7/32']\n"
    ))
    .unwrap();
    let got: Vec<String> = t.services[0]
        .source_ranges
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(got, ["192.0.2.7/32", "198.51.100.0/24"]);
    assert!(parse(HEAD).unwrap().services[0].source_ranges.is_empty());
    for (value, says) in [
        ("'198.51.100.7/24'", "host bits set: write 198.51.100.0/24"),
        ("'198.51.100.7'", "CIDR"),
        ("'2001:db8::/32'", "address family"),
        ("'nonsense'", "CIDR"),
        ("'192.0.2.0/24'", "192.0.2.0/24 is listed twice"),
        // The audit of 2026-12-06: leading zeros (octal to other tools) and spaces were read.
        ("'010.000.000.000/8'", "CIDR"),
        ("' 198.51.100.0/24 '", "CIDR"),
    ] {
        let text = format!("{HEAD}\nsource_ranges=['192.0.2.0/24',\n {value}]\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "service[0].source_ranges[1]", "{value}: {e}");
        assert_eq!(e.line, 7, "{value}: the range's own line: {e}");
        assert!(e.message.contains(says), "{value}: {e}");
    }
    let many: Vec<String> = (0..=MAX_SOURCE_RANGES)
        .map(|k| format!("'10.{}.{}.0/24'", k / 256, k % 256))
        .collect();
    let e = parse(&format!("{HEAD}source_ranges=[{}]\n", many.join(","))).unwrap_err();
    assert_eq!(e.field, "service[0].source_ranges");
    let v6 =
        "[[service]]\nname='a'\nvip='2001:db8::1'\nport=80\nsource_ranges=['2001:db8:1::/48']\n";
    assert_eq!(parse(v6).unwrap().services[0].source_ranges.len(), 1);
}

#[test]
fn line_index_counts_like_the_text() {
    let text = "a\nbb\n\nc";
    let idx = LineIndex::new(text);
    for offset in 0..=text.len() {
        assert_eq!(
            idx.line(offset),
            text[..offset].matches('\n').count() + 1,
            "{offset}"
        );
    }
}

/// A service on `line 1-4` (header, name, vip, port) with `extra` from line 5 on.
fn svc(extra: &str) -> String {
    format!("{HEAD}{extra}")
}

/// Audit A: settings the chosen forwarding, tunnel or probe ignores were accepted silently.
#[test]
fn settings_that_would_be_ignored_are_refused() {
    for (extra, field, line, says) in [
        (
            "forwarding='masq'\ntunnel='gre'\n",
            "tunnel",
            6,
            "only forwarding = \"tunnel\"",
        ),
        (
            "forwarding='route'\n\ntunnel_port=6080\n",
            "tunnel_port",
            7,
            "forwards by route",
        ),
        (
            "tunnel='ipip'\ntunnel_port=6080\n",
            "tunnel_port",
            6,
            "only a gue tunnel",
        ),
        (
            "tunnel_port=6080\n",
            "tunnel_port",
            5,
            "ipip carries no port",
        ),
        (
            "tunnel='gre'\ntunnel_port=6080\n",
            "tunnel_port",
            6,
            "gre carries no port",
        ),
        (
            "[service.health]\nkind='tcp'\nexpect_status=200\n",
            "health.expect_status",
            7,
            "only http and https",
        ),
        (
            "[[service.backend]]\naddress='203.0.113.1'\n",
            "backend[0].address",
            6,
            "own VIP",
        ),
        (
            "forwarding='masq'\n[[service.backend]]\naddress='203.0.113.1'\nport=8080\n",
            "backend[0].address",
            7,
            "own VIP",
        ),
        (
            "source_ranges=['10.0.0.0/8',\n'192.0.2.0/24',\n'10.0.0.0/8']\n",
            "source_ranges[2]",
            7,
            "10.0.0.0/8 is listed twice",
        ),
    ] {
        let e = parse(&svc(extra)).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (line, format!("service[0].{field}").as_str()),
            "{extra:?}: {e}"
        );
        assert!(e.message.contains(says), "{extra:?}: {e}");
    }
    // The audit's file: masq with a gre tunnel and its port, a repeated range, a backend at
    // the VIP and a tcp check with a status.
    let audit = "[[service]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nforwarding = \"masq\"\ntunnel = \"gre\"\ntunnel_port = 6080\nsource_ranges = [\"10.0.0.0/8\", \"10.0.0.0/8\"]\n\n[[service.backend]]\naddress = \"203.0.113.10\"\n\n[service.health]\nkind = \"tcp\"\nexpect_status = 200\n";
    let e = parse(audit).unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (6, "service[0].tunnel"), "{e}");
    let v6 = "[[service]]\nname='a'\nvip='2001:db8::1'\nport=80\n[[service.backend]]\naddress='2001:db8::1'\n";
    assert!(parse(v6).unwrap_err().message.contains("own VIP"));
    // What stays valid: gue with its port, masq without tunnel settings, a service with no
    // backends (Kubernetes-style: the VIP is published before its endpoints exist).
    for ok in [
        "tunnel='gue'\ntunnel_port=6080\n",
        "forwarding='tunnel'\ntunnel='gre'\n",
        "forwarding='masq'\n[[service.backend]]\naddress='198.18.0.2'\nport=8080\n",
        "[service.health]\nkind='http'\nexpect_status=204\n",
        "",
    ] {
        assert!(parse(&svc(ok)).is_ok(), "{ok:?}: {:?}", parse(&svc(ok)));
    }
}

/// Audit B: validator errors pointed at the section's header, not at the value's line.
#[test]
fn every_refused_field_points_at_its_own_line() {
    // Each value sits two lines below its table's header, so the header's line is wrong.
    for (text, line, field) in [
        ("[[service]]\n\nname=''\nvip='203.0.113.1'\nport=80\n", 3, "name"),
        (
            "[[service]]\n\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='bogus'\n",
            6,
            "scheduler",
        ),
        (
            "[[service]]\n\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='rr'\nmh_port=true\n",
            7,
            "mh_port",
        ),
        (
            "[[service]]\n\nname='a'\nvip='203.0.113.1'\nport=80\nscheduler='rr'\nmh_fallback=true\n",
            7,
            "mh_fallback",
        ),
        (
            "[[service]]\n\nname='a'\nvip='203.0.113.1'\nport=80\ntunnel='gue'\ntunnel_port=0\n",
            7,
            "tunnel_port",
        ),
        (
            "[[service]]\n\nname='a'\nvip='203.0.113.1'\nport=80\ntunnel='gue'\n",
            6,
            "tunnel_port",
        ),
        ("[[service]]\n\nname='a'\nvip='0.0.0.0'\nport=80\n", 4, "vip"),
        ("[[service]]\n\nname='a'\nvip='203.0.113.1'\nport=0\n", 5, "port"),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (line, format!("service[0].{field}").as_str()),
            "{text:?}: {e}"
        );
    }
    for (value, line, field) in [
        ("address='198.18.0.999'", 7, "address"),
        ("address='198.18.0.2'\nport=8080", 8, "port"),
        ("address='198.18.0.2'\nweight=70000", 8, "weight"),
    ] {
        let text = svc(&format!("[[service.backend]]\n\n{value}\n"));
        let e = parse(&text).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (line, format!("service[0].backend[0].{field}").as_str()),
            "{value:?}: {e}"
        );
    }
    for (kind, value) in [
        ("http", "interval_ms=99"),
        ("http", "timeout_ms=0"),
        ("http", "rise=0"),
        ("http", "fall=101"),
        ("http", "path='x'"),
        ("http", "expect_status=99"),
        ("http", "host=''"),
        ("tcp", "path='/'"),
        ("tcp", "host='example.org'"),
        ("tcp", "expect_status=200"),
    ] {
        let text = svc(&format!("[service.health]\nkind='{kind}'\n\n{value}\n"));
        let e = parse(&text).unwrap_err();
        let name = value.split('=').next().unwrap();
        assert_eq!(
            (e.line, e.field.as_str()),
            (8, format!("service[0].health.{name}").as_str()),
            "{value:?}: {e}"
        );
    }
    let e = parse(&format!(
        "{HEAD}[[service]]\n\nname='a'\nvip='203.0.113.2'\nport=80\n"
    ))
    .unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (7, "service[1].name"), "{e}");
    let e = parse(&format!("\n\nno_services = true\n{HEAD}")).unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (3, "no_services"), "{e}");
}

/// Audit C: the TOML layer's errors showed a fragment of the source where the field goes.
#[test]
fn toml_errors_name_the_field_not_the_source_text() {
    for (text, line, field, says) in [
        (
            "[[service]]\nname='a'\nvip='203.0.113.1'\nport=65536\n".to_string(),
            4,
            "service[0].port",
            "65536",
        ),
        (
            format!("{HEAD}[[service.backend]]\naddress='198.18.0.2'\nweight='x'\n"),
            7,
            "service[0].backend[0].weight",
            "invalid type",
        ),
        (
            format!("{HEAD}[[service.backend]]\naddress='198.18.0.2'\nweight=-1\n"),
            7,
            "service[0].backend[0].weight",
            "-1",
        ),
        (
            format!("{HEAD}[service.health]\nkind='tcp'\nrise=1.5\n"),
            7,
            "service[0].health.rise",
            "invalid type",
        ),
        (
            format!("{HEAD}protocol='TCP'\n"),
            5,
            "service[0].protocol",
            "TCP",
        ),
        (
            format!("{HEAD}wieght=3\n"),
            5,
            "service[0].wieght",
            "unknown field",
        ),
        (
            format!("{HEAD}[[service]]\nname='b'\nvip=3\nport=80\n"),
            7,
            "service[1].vip",
            "invalid type",
        ),
        // A missing field: the table that lacks it (an array's element, not the array).
        (
            "[[service]]\nvip='203.0.113.1'\nport=80\n".to_string(),
            1,
            "service[0]",
            "missing field `name`",
        ),
        (
            format!("{HEAD}\n[[service.backend]]\nweight=1\n"),
            6,
            "service[0].backend[0]",
            "missing field `address`",
        ),
        // Not TOML at all: no tree to walk, the key of the line.
        (format!("{HEAD}port=81\n"), 5, "port", "duplicate key"),
        (
            "[[service]]\nname='a'\nvip='203.0.113.1'\nport=99999999999999999999\n".to_string(),
            4,
            "port",
            "",
        ),
        (format!("{HEAD}scheduler = 'rr\n"), 5, "scheduler", ""),
    ] {
        let e = parse(&text).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (line, field), "{text:?}: {e}");
        assert!(e.message.contains(says), "{text:?}: {e}");
    }
    // Nothing to name: no field rather than a fragment (this printed `line 1: [: ...`).
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let e = parse(&format!("a = {deep}\n")).unwrap_err();
    assert_eq!(e.field, "a", "{e}");
    let e = parse(&format!("{deep}\n")).unwrap_err();
    assert_eq!(e.field, "", "{e}");
    let long = vec!["a"; 200].join(".");
    let e = parse(&format!("{long} = 1\n")).unwrap_err();
    assert_eq!(
        e.field, "",
        "a key too long to be a field of this file: {e}"
    );
    assert_eq!(e.to_string(), format!("line 1: {}", e.message));
}

/// Audit D: an IPv6 address and its port printed as `2001:db8::1:80`.
#[test]
fn ipv6_endpoints_are_bracketed() {
    let text = "[[service]]\nname='a'\nvip='2001:db8::1'\nport=80\n[[service]]\nname='b'\nvip='2001:db8::1'\nport=80\n";
    let e = parse(text).unwrap_err();
    assert!(
        e.message.contains("tcp [2001:db8::1]:80 is already served"),
        "{e}"
    );
    let text = "[[service]]\nname='a'\nvip='2001:db8::1'\nport=80\n[[service.backend]]\naddress='2001:db8::10'\n[[service.backend]]\naddress='2001:db8::10'\n";
    let e = parse(text).unwrap_err();
    assert!(
        e.message.contains("[2001:db8::10]:80 is listed twice"),
        "{e}"
    );
}

/// Found with real traffic: a udp service with a tcp check was accepted, and the probes,
/// which speak TCP, drained every UDP-only backend. A udp service's check now needs the TCP
/// port its backends answer checks on.
#[test]
fn a_udp_service_is_checked_through_a_health_port() {
    let udp = "[[service]]\nname='dns'\nvip='203.0.113.53'\nport=53\nprotocol='udp'\n[[service.backend]]\naddress='198.18.0.2'\n";
    let e = parse(&format!("{udp}[service.health]\nkind='tcp'\n")).unwrap_err();
    assert_eq!(e.field, "service[0].health.port", "{e}");
    assert_eq!(e.line, 8, "the [service.health] header: {e}");
    assert!(e.message.contains("udp service"), "{e}");
    let t = parse(&format!(
        "{udp}[service.health]\nkind='http'\npath='/ready'\nport=8080\n"
    ))
    .unwrap();
    assert_eq!(
        t.services[0].health.as_ref().and_then(|h| h.port),
        Some(8080)
    );
    let e = parse(&format!("{udp}[service.health]\nkind='tcp'\nport=0\n")).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.line),
        ("service[0].health.port", 10),
        "{e}"
    );
}

/// With real traffic through two replicas behind ECMP, a masq service lost every flow whose
/// reply went back through the other replica; `shoal check` said nothing.
#[test]
fn check_warns_that_masq_needs_replies_through_the_same_replica() {
    let t = parse("[[service]]\nname='m'\nvip='203.0.113.1'\nport=80\nforwarding='masq'\n[[service.backend]]\naddress='198.18.0.2'\nport=8080\n").unwrap();
    let w = warnings(&t);
    assert!(
        w.len() == 1 && w[0].contains("\"m\"") && w[0].contains("ip_forward"),
        "{w:?}"
    );
}

/// The audit of 2026-12-06: a backend at another service's VIP was programmed (each service's
/// packets would go back into the replicas, which hold every VIP).
#[test]
fn a_backend_at_another_services_vip_is_refused_at_its_line() {
    let text = "[[service]]\nname='a'\nvip='203.0.113.1'\nport=80\n[[service.backend]]\naddress='198.18.0.10'\n\
                [[service]]\nname='b'\nvip='203.0.113.2'\nport=80\n[[service.backend]]\naddress='198.18.0.11'\n\
                [[service.backend]]\naddress='203.0.113.1'\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.field, "service[1].backend[1].address", "{e}");
    assert_eq!(e.line, 14, "{e}");
    assert!(
        e.message.contains("203.0.113.1 is a VIP of this table"),
        "{e}"
    );
}
