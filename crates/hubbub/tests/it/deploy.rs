//! The deployment files stay parseable: every YAML document under `deploy/` loads, every
//! Kubernetes object names its kind and version, the compose file has services, and the
//! roles they run are commands this binary has; the Prometheus alert rules and the Grafana
//! dashboard name only metrics the server exports, and `promtool` accepts the rules and
//! passes their unit tests.

use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("deploy dir") {
        let path = entry.expect("entry").path();
        // Prometheus rule files are checked by promtool (below), not as manifests.
        if path.ends_with("prometheus") {
            continue;
        }
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// The hubbub subcommand a container runs (`args` or `command`), if any.
fn role(container: &Yaml) -> Option<String> {
    let list = match (&container["args"], &container["command"]) {
        (Yaml::Array(a), _) | (_, Yaml::Array(a)) => a,
        _ => return None,
    };
    list.first().and_then(|v| v.as_str()).map(str::to_owned)
}

#[test]
fn every_deploy_file_parses_and_names_real_roles() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(files.len() >= 4, "compose and manifests: {files:?}");
    let roles = ["serve", "edge", "router", "worker", "scheduler"];
    let mut kinds = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!docs.is_empty(), "{} is empty", f.display());
        for doc in &docs {
            if f.file_name().is_some_and(|n| n == "compose.yaml") {
                let services = doc["services"].as_hash().expect("compose services");
                for (name, svc) in services {
                    // hubbub's services use the shared anchor (`<<: *hubbub`).
                    let image = svc["image"].as_str().or(svc["<<"]["image"].as_str());
                    if !image.is_some_and(|i| i.starts_with("hubbub")) {
                        continue;
                    }
                    if let Some(r) = role(svc) {
                        assert!(roles.contains(&r.as_str()), "{name:?} runs {r}");
                    }
                }
                continue;
            }
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", f.display()));
            assert!(
                doc["apiVersion"].as_str().is_some(),
                "{}: no apiVersion",
                f.display()
            );
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{}: no name",
                f.display()
            );
            kinds.push(kind.to_owned());
            if let Some(containers) = doc["spec"]["template"]["spec"]["containers"].as_vec() {
                for c in containers {
                    let r = role(c).expect("a role");
                    assert!(roles.contains(&r.as_str()), "{}: runs {r}", f.display());
                }
            }
        }
    }
    for k in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in the manifests");
    }
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/hubbub.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/hubbub serve"));
}

/// Every `hubbub_*` metric an expression names (histogram series by their metric).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("hubbub_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

#[test]
fn alert_rules_and_the_grafana_dashboard_use_metrics_the_server_exports() {
    let rules =
        std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yaml")).expect("rules");
    let docs = YamlLoader::load_from_str(&rules).expect("rules parse");
    let mut exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    let alerts: Vec<&str> = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for needed in [
        "HubbubQueueBacklogOld",
        "HubbubDeadLetters",
        "HubbubDeliveryLatencyHigh",
        "HubbubErrorReplies",
        "HubbubSlowClientDisconnects",
        "HubbubConfigApplyFailed",
    ] {
        assert!(alerts.contains(&needed), "no {needed} alert");
    }
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/hubbub.json")).expect("dashboard"),
    )
    .expect("dashboard parses");
    for panel in grafana["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    let mut named = 0;
    for e in &exprs {
        for m in metrics_in(e) {
            named += 1;
            assert!(
                hubbub_protocol::metrics::of_series(&m).is_some(),
                "{m} (in `{e}`) is not a metric the server exports"
            );
        }
    }
    assert!(named >= exprs.len(), "every expression names a metric");
    let Some(promtool) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!(
            "no promtool on this machine: the rules were not checked by it (scripts/test installs it)"
        );
        return;
    };
    let dir = deploy_dir().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = std::process::Command::new(promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
