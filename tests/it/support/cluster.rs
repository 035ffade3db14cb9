//! A fleet in containers: private Docker networks, a PostgreSQL server from the image
//! `.ci/debian-image postgres` builds, and daemons from the static image ([`super::containers`])
//! that join several networks. The daemons are managed with the docker command line:
//! testcontainers starts a container on one network, and a daemon must be on two (its
//! database's and the service's) before it starts.
//!
//! Every container and network here is removed when its value is dropped, so a test that
//! fails leaves none behind (drop the networks last: declare them first).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, Image, ImageExt};

use super::KEY;
use super::containers::owner_of;
use super::daemon::Env;
use super::docker::{self, must};
use super::poll_until;

/// The label of everything a test here makes, for a person who looks for leftovers.
const LABEL: &str = "org.batchwatch.e2e=1";

/// `docker network inspect --format` of the ids of the containers attached to a network.
const ATTACHED: &str = "{{ range $id, $c := .Containers }}{{ $id }} {{ end }}";

/// Runs `docker ARGS` from a destructor: blocking, and quiet whatever happens.
fn quietly(args: &[&str]) -> String {
    std::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// A user-defined bridge network of its own.
pub struct Network {
    pub name: String,
}

impl Network {
    /// Creates the network `name` on a subnet Docker picks, then fixes that subnet in its
    /// configuration: Docker lets a container be connected again at its old address only on
    /// a network whose subnet was given, and a container cut off and connected again must come
    /// back at its old address (a partition that heals, not a move).
    pub async fn create(name: &str) -> Network {
        let network = Network {
            name: name.to_owned(),
        };
        for _ in 0..5 {
            must(&["network", "create", "--label", LABEL, name]).await;
            let subnet = must(&[
                "network",
                "inspect",
                "--format",
                "{{ (index .IPAM.Config 0).Subnet }}",
                name,
            ])
            .await;
            must(&["network", "rm", name]).await;
            // Another process may take the subnet meanwhile: then Docker picks again.
            let fixed = docker::cli(&[
                "network", "create", "--label", LABEL, "--subnet", &subnet, name,
            ])
            .await
            .expect("docker network create");
            if fixed.status.success() {
                return network;
            }
        }
        panic!("could not create the network {name} on a subnet of its own");
    }
}

impl Drop for Network {
    /// Disconnects what is still attached (a container testcontainers has not removed yet),
    /// then removes the network.
    fn drop(&mut self) {
        let attached = quietly(&["network", "inspect", "--format", ATTACHED, &self.name]);
        for id in attached.split_whitespace() {
            quietly(&["network", "disconnect", "--force", &self.name, id]);
        }
        quietly(&["network", "rm", &self.name]);
    }
}

/// PostgreSQL in a container on one network: reached by the daemons at its address there, by
/// the test at a port of the host.
pub struct PostgresContainer {
    container: ContainerAsync<GenericImage>,
    ip: IpAddr,
    host_port: u16,
}

impl PostgresContainer {
    /// The port the server listens on in its container.
    const PORT: u16 = 5432;

    /// Starts the server of `image` (`NAME:TAG`) on `network`, with durability off (a test's
    /// data), and waits until it accepts connections.
    pub async fn start(image: &str, network: &Network) -> PostgresContainer {
        let (name, tag) = image.rsplit_once(':').expect("NAME:TAG");
        let settings = [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=200",
        ];
        let container = GenericImage::new(name, tag)
            .with_exposed_port(Self::PORT.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_cmd(settings.iter().flat_map(|s| ["-c", s]))
            .with_network(&network.name)
            .with_container_name(unique_name("chaos-postgres"))
            .with_label("org.batchwatch.e2e", "1")
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .unwrap_or_else(|e| panic!("the PostgreSQL container did not start: {e}"));
        let ip = container
            .get_bridge_ip_address()
            .await
            .expect("the server's address on its network");
        let host_port = container
            .get_host_port_ipv4(Self::PORT)
            .await
            .expect("the server's port on the host");
        PostgresContainer {
            container,
            ip,
            host_port,
        }
    }

    /// The URL of database `name` from the host.
    pub fn url_from_host(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.host_port)
    }

    /// The URL of database `name` from a container on the server's network (by address: the
    /// static image cannot resolve names).
    pub fn url_for_containers(&self, name: &str) -> String {
        format!("postgres://postgres@{}:{}/{name}", self.ip, Self::PORT)
    }

    /// Creates the database `name`.
    pub async fn create_database(&self, name: &str) {
        super::postgres::create_database(&self.url_from_host("postgres"), name).await;
    }

    /// What the server logged.
    pub async fn logs(&self) -> String {
        let err = self.container.stderr_to_vec().await.unwrap_or_default();
        String::from_utf8_lossy(&err).into_owned()
    }
}

/// How a daemon's container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Running,
    /// Frozen by `docker pause`.
    Paused,
    /// Its daemon exited with this code.
    Exited(i64),
}

/// `batchwatch run` of an [`Env`] in a container of the static image, on several networks,
/// its sandbox mounted at the same path (so its configuration's paths hold inside, and the
/// test reads the queue as it is). Started again after an exit with `docker start`: the same
/// container, host name and networks, as a service manager restarts a service.
pub struct NetworkedDaemon {
    pub name: String,
    /// When the daemon was last started, to read only what this run logged.
    started: SystemTime,
}

impl NetworkedDaemon {
    /// Creates the container `name` on `networks` (not started): the daemon with the key in
    /// its environment, running as the owner of the sandbox.
    pub async fn create(
        image: &GenericImage,
        env: &Env,
        name: &str,
        networks: &[&Network],
    ) -> NetworkedDaemon {
        let (first, more) = networks.split_first().expect("a network");
        let root = env.sandbox.path().to_str().expect("a UTF-8 path");
        let config = env.config.to_str().expect("a UTF-8 path");
        let mount = format!("type=bind,source={root},target={root}");
        let image = format!("{}:{}", image.name(), image.tag());
        let user = owner_of(env.sandbox.path());
        let args = [
            "create",
            "--name",
            name,
            "--label",
            LABEL,
            "--user",
            &user,
            "--network",
            &first.name,
            "--mount",
            &mount,
            // From this command's environment: a key is not put on a command line.
            "--env",
            "OPENAI_API_KEY",
            "--env",
            "RUST_LOG=info",
            &image,
            "--config",
            config,
            "run",
        ];
        docker::must_with_env(&args, &[("OPENAI_API_KEY", KEY)]).await;
        let daemon = NetworkedDaemon {
            name: name.to_owned(),
            started: SystemTime::now(),
        };
        for network in more {
            must(&["network", "connect", &network.name, name]).await;
        }
        daemon
    }

    /// Starts the daemon (again), and waits until it logged its start; panics, with what it
    /// logged, if it exits first.
    pub async fn start(&mut self) {
        self.started = SystemTime::now();
        must(&["start", &self.name]).await;
        let waited = poll_until(Duration::from_secs(30), async || {
            let log = self.logs_of_this_run().await;
            let up = log.contains("batchwatch started");
            let run = self.run().await;
            (up || matches!(run, Run::Exited(_)), (up, run, log))
        })
        .await;
        match waited {
            Ok((true, _, _)) => {}
            Ok((_, run, log)) | Err((_, run, log)) => {
                let state = must(&["inspect", "--format", "{{ json .State }}", &self.name]).await;
                let all = self.logs().await;
                let lines: Vec<&str> = all.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                panic!(
                    "{} did not start ({run:?}, {state}); this run logged:\n{log}\nthe last lines of all its runs:\n{tail}",
                    self.name
                )
            }
        }
    }

    /// Whether the daemon runs, is paused, or exited (and how).
    pub async fn run(&self) -> Run {
        let state = must(&[
            "inspect",
            "--format",
            "{{ .State.Status }} {{ .State.ExitCode }}",
            &self.name,
        ])
        .await;
        match state.split_once(' ') {
            Some(("paused", _)) => Run::Paused,
            Some(("exited" | "dead", code)) => Run::Exited(code.parse().expect("an exit code")),
            _ => Run::Running,
        }
    }

    /// `docker kill`: SIGKILL to the daemon (PID 1); returns once the container is down: how
    /// its daemon ended, 137 (128 + SIGKILL) unless it had exited by itself just before (then
    /// Docker refuses the kill).
    pub async fn kill(&self) -> Run {
        let killed = docker::cli(&["kill", "--signal", "KILL", &self.name])
            .await
            .expect("docker kill");
        let run = self.wait_exit(Duration::from_secs(10)).await;
        if killed.status.success() {
            assert_eq!(run, Run::Exited(137), "{}: killed by SIGKILL", self.name);
        }
        run
    }

    /// `docker stop`: SIGTERM, on which the daemon stops cleanly; the exit code.
    pub async fn stop(&self) -> i64 {
        must(&["stop", "--time", "10", &self.name]).await;
        match self.wait_exit(Duration::from_secs(5)).await {
            Run::Exited(code) => code,
            run => panic!("{}: {run:?} after docker stop", self.name),
        }
    }

    async fn wait_exit(&self, timeout: Duration) -> Run {
        let waited = poll_until(timeout, async || {
            let run = self.run().await;
            (matches!(run, Run::Exited(_)), run)
        })
        .await;
        waited.unwrap_or_else(|run| panic!("{}: still {run:?} after {timeout:?}", self.name))
    }

    /// `docker pause`: every process of the container frozen (the cgroup freezer), as SIGSTOP
    /// does, until [`NetworkedDaemon::unpause`].
    pub async fn pause(&self) {
        must(&["pause", &self.name]).await;
    }

    pub async fn unpause(&self) {
        must(&["unpause", &self.name]).await;
    }

    /// The container's address on `network`.
    pub async fn ip_on(&self, network: &Network) -> String {
        let format = format!(
            "{{{{ (index .NetworkSettings.Networks \"{}\").IPAddress }}}}",
            network.name
        );
        must(&["inspect", "--format", &format, &self.name]).await
    }

    /// `docker network disconnect`: nothing passes between the daemon and `network` until it is
    /// connected again ([`NetworkedDaemon::connect`]). Returns its address there.
    pub async fn disconnect(&self, network: &Network) -> String {
        let ip = self.ip_on(network).await;
        must(&["network", "disconnect", &network.name, &self.name]).await;
        ip
    }

    /// Connects the container to `network` again, at `ip`, its old address.
    pub async fn connect(&self, network: &Network, ip: &str) {
        must(&["network", "connect", "--ip", ip, &network.name, &self.name]).await;
    }

    /// Everything the daemon logged, in all its runs.
    pub async fn logs(&self) -> String {
        self.logs_since(None).await
    }

    /// What the daemon logged since its last start.
    pub async fn logs_of_this_run(&self) -> String {
        self.logs_since(Some(self.started)).await
    }

    async fn logs_since(&self, since: Option<SystemTime>) -> String {
        let since = since.map(|t| {
            let t = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
        });
        let mut args = vec!["logs"];
        if let Some(since) = &since {
            args.extend(["--since", since.as_str()]);
        }
        args.push(&self.name);
        let out = docker::cli(&args).await.expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for NetworkedDaemon {
    fn drop(&mut self) {
        quietly(&["rm", "--force", "--volumes", &self.name]);
    }
}

/// A name no other test process uses: `batchwatch-WHAT-PID`.
pub fn unique_name(what: &str) -> String {
    format!("batchwatch-{what}-{}", std::process::id())
}

/// Removes the containers and networks named by [`unique_name`] that a test process which no
/// longer runs left behind (killed before its destructors ran), with whatever containers are
/// still attached to those networks.
pub async fn remove_leftovers() {
    let of_gone = |name: &&str| {
        name.starts_with("batchwatch-")
            && name
                .rsplit_once('-')
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let filter = format!("label={LABEL}");
    let containers = must(&[
        "ps",
        "--all",
        "--filter",
        &filter,
        "--format",
        "{{ .Names }}",
    ])
    .await;
    let networks = must(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{ .Name }}",
    ])
    .await;
    let quiet = async |args: &[&str]| docker::cli(args).await.ok();
    for name in containers.lines().filter(of_gone) {
        quiet(&["rm", "--force", "--volumes", name]).await;
    }
    for name in networks.lines().filter(of_gone) {
        let inspected = quiet(&["network", "inspect", "--format", ATTACHED, name]).await;
        let attached = inspected.map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
        for id in attached.unwrap_or_default().split_whitespace() {
            quiet(&["rm", "--force", "--volumes", id]).await;
        }
        quiet(&["network", "rm", name]).await;
    }
}
