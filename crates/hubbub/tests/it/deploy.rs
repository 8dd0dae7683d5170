//! The deployment files stay parseable: every YAML document under `deploy/` loads, every
//! Kubernetes object names its kind and version, the compose file has services, and the
//! roles they run are commands this binary has.

use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("deploy dir") {
        let path = entry.expect("entry").path();
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
