//! A 3-node JetStream cluster of the pinned nats-server, for the tests that
//! lose a node or cut one off: free ports, stores in a temp dir, every process
//! this test's own and killed by its pid on drop.
//!
//! [`NatsCluster::start`] puts the three nodes on loopback. With
//! [`NatsCluster::start_partitionable`] the third node runs in a network
//! namespace of the test's own ([`Netns`]), reached by two veth pairs: one for
//! the routes between servers and one for clients. Taking the routes' link
//! down cuts that node off from the other two while clients (an api in this
//! namespace) still reach it: the minority side of a partition, observable.

use crate::{eventually, nats_server_binary};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One server of the cluster.
pub struct ClusterNode {
    pub name: String,
    /// Where clients connect.
    pub client: SocketAddr,
    /// Where the other servers route to.
    pub route: SocketAddr,
    /// The monitoring endpoint (`/jsz`, `/routez`).
    pub monitor: SocketAddr,
    /// The network namespace it runs in (`None`: this test's own).
    netns: Option<String>,
    config: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let quiet = std::env::var("TEST_LOG").is_err();
        let mut cmd = match &self.netns {
            // `ip netns exec` enters the namespace and execs the server, so
            // the child's pid is the server's own.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(nats_server_binary());
                c
            }
            None => Command::new(nats_server_binary()),
        };
        let child = cmd
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_addr(self.client, Duration::from_secs(20));
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's JetStream view (`/jsz`), `None` while it does not answer.
    pub async fn jsz(&self) -> Option<serde_json::Value> {
        let r = monitor_client().get(format!("http://{}/jsz", self.monitor)).send().await.ok()?;
        r.json().await.ok()
    }

    /// The meta leader this server knows of.
    pub async fn meta_leader(&self) -> Option<String> {
        let v = self.jsz().await?;
        v["meta_cluster"]["leader"].as_str().filter(|l| !l.is_empty()).map(str::to_owned)
    }

    /// How many servers this one has routes to (`/routez`).
    pub async fn routed_servers(&self) -> Option<usize> {
        let r = monitor_client().get(format!("http://{}/routez", self.monitor)).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        let mut names: Vec<&str> = v["routes"].as_array()?.iter().filter_map(|r| r["remote_name"].as_str()).collect();
        names.sort_unstable();
        names.dedup();
        Some(names.len())
    }
}

fn monitor_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build().unwrap()
}

/// Waits until something accepts TCP connections at `addr`, bounded.
pub fn wait_for_addr(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr} after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three nats-servers in one JetStream cluster.
pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    /// Configurations and stores.
    _dir: tempfile::TempDir,
    /// Dropped after the servers (fields drop after `Drop::drop`).
    netns: Option<Netns>,
}

/// Where a node listens: (client, route, monitor) hosts.
struct Hosts {
    client: IpAddr,
    route: IpAddr,
    monitor: IpAddr,
    netns: Option<String>,
}

impl NatsCluster {
    /// Three servers on loopback ports, once they agree on a meta leader.
    pub async fn start() -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let hosts = (0..3).map(|_| Hosts { client: lo, route: lo, monitor: lo, netns: None }).collect();
        Self::start_with(hosts, None).await
    }

    /// Nodes 1 and 2 on this namespace (clients on loopback, routes on the
    /// root side of the routes' veth), node 3 in a namespace of its own,
    /// routed over one veth pair and serving clients over another.
    pub async fn start_partitionable() -> Self {
        let ns = Netns::create();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (route_outside, route_inside) = (IpAddr::V4(ns.route_outside), IpAddr::V4(ns.route_inside));
        let client_inside = IpAddr::V4(ns.client_inside);
        let hosts = vec![
            Hosts { client: lo, route: route_outside, monitor: lo, netns: None },
            Hosts { client: lo, route: route_outside, monitor: lo, netns: None },
            Hosts { client: client_inside, route: route_inside, monitor: client_inside, netns: Some(ns.name.clone()) },
        ];
        Self::start_with(hosts, Some(ns)).await
    }

    async fn start_with(hosts: Vec<Hosts>, netns: Option<Netns>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = |_: &Hosts| crate::free_port();
        let addrs: Vec<(SocketAddr, SocketAddr, SocketAddr)> = hosts
            .iter()
            .map(|h| {
                (
                    SocketAddr::new(h.client, port(h)),
                    SocketAddr::new(h.route, port(h)),
                    SocketAddr::new(h.monitor, port(h)),
                )
            })
            .collect();
        let routes: Vec<String> = addrs.iter().map(|(_, r, _)| format!("nats-route://{r}")).collect();
        let cluster_name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut nodes = Vec::new();
        for (i, (h, (client, route, monitor))) in hosts.into_iter().zip(addrs).enumerate() {
            let name = format!("n{}", i + 1);
            let config = dir.path().join(format!("{name}.conf"));
            let store = dir.path().join(format!("{name}-store"));
            // Short pings so that a server notices a dead route within
            // seconds, not the default two minutes.
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"{client}\"\nhttp: \"{monitor}\"\n\
                     ping_interval: \"1s\"\nping_max: 3\n\
                     jetstream {{ store_dir: {store:?}, max_file_store: 1G, max_memory_store: 64M }}\n\
                     cluster {{\n  name: {cluster_name}\n  listen: \"{route}\"\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ),
            )
            .unwrap();
            nodes.push(ClusterNode { name, client, route, monitor, netns: h.netns, config, child: None });
        }
        let mut me = Self { nodes, _dir: dir, netns };
        for n in &mut me.nodes {
            n.spawn();
        }
        me.until_meta_leader().await;
        me
    }

    /// Waits until every running node names the same meta leader.
    pub async fn until_meta_leader(&self) -> String {
        eventually(Duration::from_secs(60), || async {
            let mut leaders = Vec::new();
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                leaders.push(n.meta_leader().await?);
            }
            let first = leaders.first()?.clone();
            leaders.iter().all(|l| *l == first).then_some(first)
        })
        .await
    }

    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut ClusterNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Starts a killed node again on its own store and ports.
    pub fn restart(&mut self, name: &str) {
        self.node_mut(name).spawn();
    }

    /// Cuts node 3 (in its namespace) off from the other two: its routes'
    /// link goes down, its clients' link stays up.
    pub fn partition(&self) {
        self.netns.as_ref().expect("a partitionable cluster").set_routes_link(false);
    }

    pub fn heal(&self) {
        self.netns.as_ref().expect("a partitionable cluster").set_routes_link(true);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }
}

/// A stream's leader and replicas as JetStream reports them.
pub async fn stream_cluster(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Option<async_nats::jetstream::stream::ClusterInfo> {
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok()?.cluster.clone()
}

/// Asks `stream`'s leader to step down in favour of `preferred` and waits
/// until `preferred` leads it.
pub async fn move_stream_leader(js: &async_nats::jetstream::Context, stream: &str, preferred: &str) {
    eventually(Duration::from_secs(60), || async {
        let c = stream_cluster(js, stream).await?;
        if c.leader.as_deref() == Some(preferred) {
            return Some(());
        }
        let body = serde_json::json!({"placement": {"preferred": preferred}}).to_string();
        let _ = js.client().request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"), body.into()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        None
    })
    .await
}

/// A network namespace and two veth pairs, made with iproute2 and removed on
/// drop (deleting the namespace deletes the veths in it, and their peers).
/// Addresses are in 10.213.0.0/16, checked unused on this host first; nothing
/// outside the namespace and its veths ever gets traffic from them.
pub struct Netns {
    pub name: String,
    routes_inside_link: String,
    pub route_outside: Ipv4Addr,
    pub route_inside: Ipv4Addr,
    pub client_inside: Ipv4Addr,
    outside_links: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2 (`ip`) is installed");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Whether this process may make network namespaces (root, iproute2).
pub fn can_make_netns() -> Result<(), String> {
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
        return Err("not root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("iproute2 (`ip`) is missing".into()),
    }
}

impl Netns {
    pub fn create() -> Self {
        if let Err(why) = can_make_netns() {
            panic!("the partition test makes network namespaces and needs root and iproute2: {why}");
        }
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let used =
            String::from_utf8_lossy(&Command::new("ip").args(["-o", "addr"]).output().unwrap().stdout).into_owned();
        let octet = (0..200u32)
            .map(|i| 1 + ((u32::from_str_radix(id, 16).unwrap() + i) % 250) as u8)
            .find(|o| !used.contains(&format!("10.213.{o}.")))
            .expect("a free 10.213.x.0/24");
        let a = |last: u8| Ipv4Addr::new(10, 213, octet, last);
        let me = Self {
            name: format!("fml{id}"),
            routes_inside_link: format!("fr{id}i"),
            route_outside: a(1),
            route_inside: a(2),
            client_inside: a(6),
            outside_links: vec![format!("fr{id}o"), format!("fc{id}o")],
        };
        ip(&["netns", "add", &me.name]);
        // From here on, drop removes whatever was made.
        ip(&["-n", &me.name, "link", "set", "lo", "up"]);
        for (outside, inside, out_addr, in_addr) in
            [(format!("fr{id}o"), format!("fr{id}i"), a(1), a(2)), (format!("fc{id}o"), format!("fc{id}i"), a(5), a(6))]
        {
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", &me.name]);
            ip(&["addr", "add", &format!("{out_addr}/30"), "dev", &outside]);
            ip(&["link", "set", &outside, "up"]);
            ip(&["-n", &me.name, "addr", "add", &format!("{in_addr}/30"), "dev", &inside]);
            ip(&["-n", &me.name, "link", "set", &inside, "up"]);
        }
        me
    }

    /// The inside end only: the outside address stays a local address of
    /// this namespace, so nodes 1 and 2 still route to each other over it.
    fn set_routes_link(&self, up: bool) {
        ip(&["-n", &self.name, "link", "set", &self.routes_inside_link, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        for l in &self.outside_links {
            // Gone with the namespace already, unless creation stopped half way.
            let _ = Command::new("ip").args(["link", "del", l]).stderr(Stdio::null()).output();
        }
    }
}
