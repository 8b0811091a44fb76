//! The shipped Grafana dashboard (helm/relay/dashboards/relay.json) and alert
//! rules (helm/relay/alerts/relay.rules.yaml) against a live node: every
//! PromQL expression parses (promql-parser, the grammar promtool checks), and
//! every metric it selects is exported by a real `relay serve` on Redis, on
//! its admin listener. A renamed or dropped metric breaks this test before it
//! breaks an operator's dashboard.

use std::collections::BTreeSet;
use std::path::Path;

use promql_parser::parser::{self, Expr};
use serde_json::Value;
use testkit::redis::RedisServer;
use testkit::*;
use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `expr` string anywhere in a dashboard JSON document.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// `(alert name, expr)` of every rule in a Prometheus rule file.
fn rule_exprs(doc: &Yaml) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in doc["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("alert or record")
                .to_owned();
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            out.push((name, expr));
        }
    }
    out
}

/// Grafana's template variables replaced by what Grafana would put there.
fn expand_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$namespace", ".*")
        .replace("$instance", ".*")
}

/// The metric names an expression selects.
fn selected_metrics(expr: &Expr, out: &mut BTreeSet<String>) {
    match expr {
        Expr::Aggregate(a) => {
            selected_metrics(&a.expr, out);
            if let Some(p) = &a.param {
                selected_metrics(p, out);
            }
        }
        Expr::Unary(u) => selected_metrics(&u.expr, out),
        Expr::Binary(b) => {
            selected_metrics(&b.lhs, out);
            selected_metrics(&b.rhs, out);
        }
        Expr::Paren(p) => selected_metrics(&p.expr, out),
        Expr::Subquery(s) => selected_metrics(&s.expr, out),
        Expr::VectorSelector(vs) => out.extend(vs.name.clone()),
        Expr::MatrixSelector(ms) => out.extend(ms.vs.name.clone()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selected_metrics(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Every series name a `/metrics` text can answer a query for: the sample
/// names, plus each `# TYPE` family's names (a counter's `_total`, a
/// histogram's `_bucket`/`_sum`/`_count`), so a labelled family that has not
/// been incremented yet still counts as exported.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {}
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Parses each `(where, expr)` and returns the metrics they select, failing
/// with every expression that does not parse.
fn parse_all(exprs: &[(String, String)]) -> BTreeSet<String> {
    let mut metrics = BTreeSet::new();
    let mut errors = Vec::new();
    for (what, expr) in exprs {
        match parser::parse(expr) {
            Ok(ast) => {
                let mut found = BTreeSet::new();
                selected_metrics(&ast, &mut found);
                assert!(!found.is_empty(), "{what}: selects no metric: {expr}");
                metrics.extend(found);
            }
            Err(e) => errors.push(format!("{what}: {e}: {expr}")),
        }
    }
    assert!(
        errors.is_empty(),
        "expressions that do not parse:\n{}",
        errors.join("\n")
    );
    metrics
}

fn dashboard() -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(&read("helm/relay/dashboards/relay.json"))
        .expect("helm/relay/dashboards/relay.json is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&doc, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    exprs
        .into_iter()
        .enumerate()
        .map(|(i, e)| (format!("dashboard query {i}"), expand_grafana_variables(&e)))
        .collect()
}

fn alerts() -> Vec<(String, String)> {
    let docs = YamlLoader::load_from_str(&read("helm/relay/alerts/relay.rules.yaml"))
        .expect("helm/relay/alerts/relay.rules.yaml is YAML");
    let rules = rule_exprs(&docs[0]);
    assert!(rules.len() >= 3, "only {} alert rules", rules.len());
    rules
}

#[test]
fn every_dashboard_and_alert_expression_parses() {
    parse_all(&dashboard());
    parse_all(&alerts());
}

#[test]
fn a_broken_expression_or_an_unknown_metric_is_caught() {
    // The checks below must be able to fail: a syntax error is reported, and
    // a metric the node does not export is not in `exported`.
    assert!(parser::parse("sum(rate(relay_connections_opened_total[5m])").is_err());
    let names = exported(
        "# TYPE relay_x counter\nrelay_x_total 1\n# TYPE relay_h histogram\nrelay_h_bucket{le=\"1\"} 0\n",
    );
    assert!(names.contains("relay_x_total") && names.contains("relay_h_count"));
    assert!(!names.contains("relay_connections"));
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let mut redis = RedisServer::new();
    let node = Node::in_cluster(&redis.url(), "dash-1", &[], &[]);
    // Some traffic, so the labelled families have series too: a message
    // delivered, a refused handshake, a closed connection, and a backplane
    // error (Redis stopped under a send, then back).
    let mut alice = guest(&node, "alice").await;
    let mut bob = guest(&node, "bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    alice.say("lobby", "hello").await;
    bob.recv_type("message").await;
    let refused = Connect::new(format!("{}?user=no%20spaces", node.url()))
        .open()
        .await;
    assert!(refused.is_err(), "a guest name with a space was accepted");
    bob.close().await;
    redis.stop();
    let reply = alice.request(cmd::send("lobby", "into the void")).await;
    assert_eq!(js(&reply)["code"], "unavailable", "{reply:?}");
    redis.start();

    // Some series (a close, a reconnection) are counted just after the
    // event the test waited for: scrape until complete, for at most 5 s.
    let wanted: Vec<String> = parse_all(&dashboard())
        .into_iter()
        .chain(parse_all(&alerts()))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, text) = loop {
        let (status, text) = get(node.addr, "/metrics").await;
        let have = exported(&text);
        if status != 200
            || wanted.iter().all(|m| have.contains(m))
            || std::time::Instant::now() > deadline
        {
            break (status, text);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200);
    let exported = exported(&text);
    for (source, exprs) in [("dashboard", dashboard()), ("alerts", alerts())] {
        let missing: Vec<String> = parse_all(&exprs)
            .into_iter()
            .filter(|m| !exported.contains(m))
            .collect();
        assert!(
            missing.is_empty(),
            "{source} queries metrics the node does not export: {missing:?}\n{text}"
        );
    }
}
