//! The deployment files in the repository stay runnable: compose.yaml's services and the
//! systemd units in deploy/systemd start the roles with flags the real binary accepts,
//! migrate first, and have health checks; `systemd-analyze verify` checks the units where
//! it is installed. (No Docker engine runs here, so compose.yaml is checked by structure.)

use std::path::{Path, PathBuf};

use clap::Parser as _;
use postgame::config::{Cli, Command, Role};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// compose.yaml as JSON, read by PyYAML (compose files use YAML anchors and merge keys).
fn compose() -> Value {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo("compose.yaml"))
        .output()
        .expect("python3 runs (it reads compose.yaml)");
    assert!(
        out.status.success(),
        "python3 with PyYAML (pip install pyyaml) must read compose.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Parses `args` (without the program name) as the real binary would.
fn parse(args: &[String]) -> Command {
    let argv = std::iter::once("postgame".to_owned()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.command,
        Err(e) => panic!("postgame {args:?} does not parse: {e}"),
    }
}

fn role_of(name: &str) -> Role {
    match name {
        "gateway" => Role::Gateway,
        "worker" => Role::Worker,
        "ticker" => Role::Ticker,
        other => panic!("no role {other}"),
    }
}

/// The port of the first `http://host:port/` in `text`.
fn url_port(text: &str) -> u16 {
    let rest = &text[text.find("http://").expect("an http:// URL") + 7..];
    let hostport = rest.split('/').next().unwrap();
    hostport.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn compose_runs_each_role_as_its_own_scalable_service_after_a_one_shot_migrate() {
    let doc = compose();
    let services = doc["services"].as_object().expect("services");
    for name in ["postgres", "migrate", "gateway", "worker", "ticker"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let migrate = &services["migrate"];
    let command: Vec<String> = serde_json::from_value(migrate["command"].clone()).unwrap();
    assert!(
        matches!(parse(&command), Command::Migrate(_)),
        "{command:?}"
    );
    assert_eq!(migrate["restart"], "no", "migrate is one-shot");
    assert_eq!(
        migrate["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    assert!(services["postgres"]["healthcheck"]["test"].is_array());

    for name in ["gateway", "worker", "ticker"] {
        let s = &services[name];
        assert_eq!(
            s["depends_on"]["migrate"]["condition"], "service_completed_successfully",
            "{name} waits for the migrations"
        );
        assert_eq!(s["depends_on"]["postgres"]["condition"], "service_healthy");
        assert!(
            s["container_name"].is_null(),
            "{name}: a container name prevents --scale"
        );
        assert!(s["image"].is_string() && s["build"].is_string(), "{name}");
        let test = s["healthcheck"]["test"].as_array().expect("a health check");
        let check = test
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        let command: Vec<String> = serde_json::from_value(s["command"].clone()).unwrap();
        let Command::Serve(config) = parse(&command) else {
            panic!("{name} does not run `serve`: {command:?}");
        };
        assert_eq!(
            config.roles,
            vec![role_of(name)],
            "{name} runs only its role"
        );
        if name == "gateway" {
            assert!(check.ends_with("/readyz"), "{check}");
            assert_eq!(url_port(&check), config.listen.port(), "{check}");
        } else {
            // Any number of these: no host port to collide on.
            assert!(
                s["ports"].is_null(),
                "{name} publishes a port: --scale would collide"
            );
            let metrics = config
                .metrics_listen
                .expect("--metrics-listen for its health check");
            assert!(check.ends_with("/healthz"), "{check}");
            assert_eq!(url_port(&check), metrics.port(), "{check}");
        }
    }
}

#[test]
fn the_systemd_units_start_each_role_after_migrate_and_verify() {
    let dir = repo("deploy/systemd");
    let mut units: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    units.sort();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "postgame-gateway.service",
            "postgame-migrate.service",
            "postgame-ticker@.service",
            "postgame-worker@.service"
        ]
    );
    for (name, text) in &units {
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{name} has no ExecStart"));
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/postgame"), "{name}");
        // An instance's `%i` is a digit.
        let args: Vec<String> = words.map(|w| w.replace("%i", "1")).collect();
        let role = name
            .trim_start_matches("postgame-")
            .trim_end_matches(".service")
            .trim_end_matches('@');
        match parse(&args) {
            Command::Migrate(_) => {
                assert_eq!(role, "migrate");
                assert!(text.contains("Type=oneshot"), "{name}");
            }
            Command::Serve(config) => {
                assert_eq!(config.roles, vec![role_of(role)], "{name}");
                assert!(text.contains("Requires=postgame-migrate.service"), "{name}");
                assert!(
                    text.lines()
                        .any(|l| l.starts_with("After=") && l.contains("postgame-migrate.service")),
                    "{name} starts after the migrations"
                );
                assert!(
                    text.contains("KillSignal=SIGTERM"),
                    "{name} drains on SIGTERM"
                );
            }
            other => panic!("{name} runs {other:?}"),
        }
    }

    // systemd's own checker, on copies that point at the binary under test (and an
    // optional environment file): instances of the templates, and every unit together so
    // their dependencies resolve.
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: the units were checked by structure only");
        return;
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let mut paths = Vec::new();
    for (name, text) in &units {
        let text = text
            .replace("/usr/local/bin/postgame", env!("CARGO_BIN_EXE_postgame"))
            .replace("EnvironmentFile=/", "EnvironmentFile=-/");
        let name = name.replace("@.", "@1.");
        let path = tmp.join(&name);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
