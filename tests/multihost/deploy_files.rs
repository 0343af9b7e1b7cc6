//! The service units (deploy/systemd) and container files (deploy/containers)
//! checked as far as this machine allows: the units by `systemd-analyze
//! verify` (with their binaries pointed at the ones just built) and against
//! `fetchml --help`; the container files by what they copy (built targets,
//! files in the repository). No image is built here: the machine has no
//! container engine (see the README).

use fetchml_tests::app::fetchml_binary;
use fetchml_tests::{nats_server_binary, repo_root};
use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &str, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// The value of every `Key=` line of a unit.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

#[test]
fn each_unit_runs_a_command_that_exists_hardened_and_restarting() {
    let units = files("deploy/systemd", "fetchml-");
    let names: Vec<_> = units.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["fetchml-api.service", "fetchml-nats.service", "fetchml-worker.service"]);
    let help = Command::new(fetchml_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for path in &units {
        let unit = std::fs::read_to_string(path).unwrap();
        let name = path.display();
        for (key, want) in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("Restart", "on-failure")] {
            assert_eq!(values(&unit, key), [want], "{name}: {key}");
        }
        assert!(
            values(&unit, "DynamicUser") == ["yes"] || values(&unit, "User") == ["fetchml"],
            "{name}: runs as root"
        );
        let exec = values(&unit, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}");
        let argv: Vec<&str> = exec[0].split_whitespace().collect();
        match argv[0] {
            "/usr/local/bin/fetchml" => {
                // The subcommand exists, and takes the --config the unit gives.
                let sub = argv[1];
                assert!(help.lines().any(|l| l.trim_start().starts_with(&format!("{sub} "))), "{name}: no `{sub}`");
                let out = Command::new(fetchml_binary()).args([sub, "--help"]).output().unwrap();
                assert!(String::from_utf8_lossy(&out.stdout).contains("--config"), "{name}");
                assert_eq!(argv[2], "--config", "{name}");
            }
            "/usr/local/bin/nats-server" => {
                let out = Command::new(nats_server_binary()).arg("--help").output().unwrap();
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                assert!(text.contains("--config"), "{text}");
                assert_eq!(argv[1], "-c", "{name}");
            }
            other => panic!("{name}: unexpected binary {other}"),
        }
    }
}

#[test]
fn systemd_accepts_every_unit() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for path in files("deploy/systemd", "fetchml-") {
        // systemd-analyze checks that the binary exists: point it at the built ones.
        let unit = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/fetchml", fetchml_binary().to_str().unwrap())
            .replace("/usr/local/bin/nats-server", nats_server_binary().to_str().unwrap());
        let copy = dir.path().join(path.file_name().unwrap());
        std::fs::write(&copy, unit).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let file = copy.file_name().unwrap().to_str().unwrap();
        // Unknown keys and bad values are only warnings: any line about our file fails.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(file)).collect();
        assert!(out.status.success() && ours.is_empty(), "{}: {stderr}", path.display());
    }
}

/// The `[[bin]]` names of a workspace package, by the package's name.
fn bins_of(package: &str) -> Vec<String> {
    for manifest in files("services", "").into_iter().map(|d| d.join("Cargo.toml")).filter(|m| m.exists()) {
        let text = std::fs::read_to_string(&manifest).unwrap();
        if text.contains(&format!("name = \"{package}\"")) {
            let mut bins = Vec::new();
            let mut in_bin = false;
            for l in text.lines() {
                if l.starts_with('[') {
                    in_bin = l == "[[bin]]";
                } else if in_bin && let Some(n) = l.strip_prefix("name = ") {
                    bins.push(n.trim_matches('"').to_owned());
                }
            }
            return bins;
        }
    }
    panic!("no package {package}");
}

#[test]
fn each_containerfile_copies_built_targets_and_files_that_exist_and_runs_as_non_root() {
    let files = files("deploy/containers", "Containerfile.");
    let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["Containerfile.fetchml", "Containerfile.ml"], "one per binary");
    let workspace = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let rust_version = workspace.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    let root = repo_root();
    let settings = fetchml_runtime::Settings::default();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.display();
        let bin = name.to_string().rsplit('.').next().unwrap().to_owned();
        // The builder builds this binary of a package that has it.
        let build = text.lines().find(|l| l.contains("cargo build")).unwrap_or_else(|| panic!("{name}: no build"));
        assert!(build.contains("--locked") && build.contains("--release"), "{name}: {build}");
        let words: Vec<&str> = build.split_whitespace().collect();
        let package = words[words.iter().position(|w| *w == "-p").unwrap() + 1];
        assert!(bins_of(package).contains(&bin), "{name}: {package} has no binary {bin}");
        assert!(words.windows(2).any(|w| w == ["--bin", bin.as_str()]), "{name}: {build}");
        assert!(text.contains(&format!("rust:{rust_version}-")), "{name}: not the workspace's rust-version");
        for line in text.lines().filter(|l| l.starts_with("COPY ")) {
            let args: Vec<&str> = line.split_whitespace().skip(1).collect();
            let (from, paths) = match args[0].strip_prefix("--from=") {
                Some(stage) => (Some(stage), &args[1..]),
                None => (None, &args[..]),
            };
            let sources = &paths[..paths.len() - 1];
            for src in sources {
                match from {
                    None => assert!(root.join(src).exists(), "{name}: COPY {src}: not in the repository"),
                    Some("build") => {
                        assert_eq!(*src, format!("/src/target/release/{bin}"), "{name}: {line}");
                    }
                    Some("web") => {
                        let rel = src.strip_prefix("/src/").unwrap();
                        // What `npm run build` and `npm ci` make, where the api looks for it.
                        let made = [
                            "web/app/dist".to_owned(),
                            format!(
                                "web/docs/{}",
                                Path::new("node_modules/redoc/bundles/redoc.standalone.js").display()
                            ),
                        ];
                        assert!(made.contains(&rel.to_owned()), "{name}: {line}");
                        assert!(
                            settings.api.docs_bundle.ends_with("node_modules/redoc/bundles/redoc.standalone.js")
                                && settings.api.ui_dir.ends_with("web/app/dist")
                        );
                    }
                    Some(other) => panic!("{name}: unknown stage {other}"),
                }
            }
        }
        let user = text.lines().rev().find_map(|l| l.strip_prefix("USER ")).unwrap_or("root");
        assert!(!["root", "0"].contains(&user.trim()), "{name}: runs as root");
    }
    let vite = std::fs::read_to_string(root.join("web/app/vite.config.ts")).unwrap();
    assert!(vite.contains("outDir: 'dist'"));
}
