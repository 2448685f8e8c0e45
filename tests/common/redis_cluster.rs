//! A real Redis Cluster of the test's own: 6 `redis-server` children (3 primaries, 3
//! replicas) on free loopback ports in a tempdir, formed with `redis-cli --cluster create`,
//! and the topology changes the cluster engine must survive: a manual failover, a killed
//! primary, a slot moved with its keys, a paused node. Recipe and measured timings:
//! docs/design/redis-cluster.md §3.
//!
//! Everything that can run while engines of the same (current-thread) runtime carry traffic
//! is async: admin commands go through short-lived `redis` connections with a timeout (so a
//! paused node cannot hang a test), `redis-cli` runs as a `tokio::process` child, and every
//! wait polls with `tokio::time::sleep` until [`WAIT`], then fails with the last state seen
//! and the tail of every node's log.

use std::cell::Cell;
use std::fs::OpenOptions;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, Value};
use tempfile::TempDir;

use super::WAIT;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Between two looks at the cluster: quick enough for the ~60 ms of a manual failover, rare
/// enough not to load a 2-core machine with 6 servers and the engines under test.
const POLL: Duration = Duration::from_millis(30);
/// How long one admin command may take (a stopped node never answers).
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// A manual failover that has not happened by then was given up by Redis (its own limit is
/// 5 s, CLUSTER_MF_TIMEOUT): ask again.
const FAILOVER_RETRY: Duration = Duration::from_secs(6);
/// Keys moved per MIGRATE.
const MIGRATE_BATCH: usize = 100;

/// One `redis-server` of the set.
struct Node {
    port: u16,
    /// Its cluster bus port, chosen apart: port + 10000 can overflow past 65535.
    bus: u16,
    dir: PathBuf,
    /// `None` once killed.
    child: Option<Child>,
    paused: Cell<bool>,
}

impl Node {
    /// Running and not stopped: it can answer.
    fn live(&self) -> bool {
        self.child.is_some() && !self.paused.get()
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn state(&self) -> &'static str {
        match (&self.child, self.paused.get()) {
            (None, _) => "killed",
            (Some(_), true) => "paused",
            (Some(_), false) => "running",
        }
    }

    /// Starts `redis-server` on (port, bus), its output appended to its log.
    fn launch(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("node dir");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("node log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1500"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running 6-node Redis Cluster; every node is killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Kept (and its path printed) when the test panics, for the node logs.
    dir: Option<TempDir>,
}

/// Who serves which slots: (first, last, primary port), sorted, adjacent ranges merged.
type SlotMap = Vec<(u16, u16, u16)>;

impl RedisCluster {
    /// 3 primaries + 3 replicas on free loopback ports (each with its own bus port), formed
    /// with `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`. Returns when
    /// every node says `cluster_state:ok` and `cluster_known_nodes:6`, all of them agree on
    /// who serves all 16384 slots, and every replica has `master_link_status:up`.
    pub async fn start() -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("redis-cluster-")
            .tempdir()
            .expect("tempdir");
        // The struct exists before any child does, so a panic below kills them all.
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir: None,
        };
        for i in 0..6 {
            let node_dir = dir.path().join(format!("node{i}"));
            let (port, bus) = cluster.free_pair();
            let mut node = Node {
                port,
                bus,
                dir: node_dir,
                child: None,
                paused: Cell::new(false),
            };
            node.launch();
            cluster.nodes.push(node);
        }
        cluster.dir = Some(dir);
        for i in 0..cluster.nodes.len() {
            cluster.await_ping(i).await;
        }

        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let out = cluster.redis_cli(&args).await;
        if !out.contains("[OK] All 16384 slots covered") {
            panic!(
                "{}",
                cluster.report("redis-cli --cluster create", &format!("its output:\n{out}"))
            );
        }

        cluster
            .wait_for("the cluster to form", || async {
                let mut masters = 0;
                for n in &cluster.nodes {
                    let info = cluster_info(n.port).await?;
                    if field(&info, "cluster_state") != Some("ok")
                        || field(&info, "cluster_known_nodes") != Some("6")
                    {
                        return Err(format!("{}: {}", n.port, one_line(&info)));
                    }
                    match role(n.port).await? {
                        Role::Master => masters += 1,
                        Role::Replica(_) => link_up(n.port).await?,
                    }
                }
                let map = cluster.agreed_map().await?;
                if masters != 3 || owners_of(&map).len() != 3 {
                    return Err(format!("{masters} masters; slots: {map:?}"));
                }
                Ok(())
            })
            .await;
        cluster
    }

    /// `redis://127.0.0.1:P` of every node not killed (seeds for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The ports of every node not killed.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The hash slot of a key: CRC16-XMODEM of its hash tag (the text between the first `{`
    /// and the next `}` when not empty), else of the whole key, mod 16384. So
    /// `slot_of("b") == slot_of("ch:{b}") == 3300`.
    pub fn slot_of(key: &str) -> u16 {
        let b = key.as_bytes();
        let hashed = match b.iter().position(|&c| c == b'{') {
            Some(open) => match b[open + 1..].iter().position(|&c| c == b'}') {
                Some(len) if len > 0 => &b[open + 1..open + 1 + len],
                _ => b,
            },
            None => b,
        };
        crc16_xmodem(hashed) % SLOTS
    }

    /// The port of the primary serving `slot`, once every live node agrees on it.
    pub async fn primary_of_slot(&self, slot: u16) -> u16 {
        let map = self.wait_agreed().await;
        owner(&map, slot).unwrap_or_else(|| panic!("no node serves slot {slot}: {map:?}"))
    }

    /// The ports of the primaries (the nodes serving slots), once every live node agrees.
    pub async fn primaries(&self) -> Vec<u16> {
        owners_of(&self.wait_agreed().await)
    }

    /// The port of a replica of `primary_port`, as the primary itself sees its replicas (or
    /// any live node, when the primary is paused or gone); waits until it has one that is
    /// neither failing nor killed nor paused.
    pub async fn replica_of(&self, primary_port: u16) -> u16 {
        let ask = if self.node(primary_port).live() {
            primary_port
        } else {
            self.any_live()
        };
        self.wait_for(&format!("a replica of {primary_port}"), || async move {
            let text = cluster_nodes(ask).await?;
            let lines = parse_nodes(&text);
            let id = lines
                .iter()
                .find(|l| l.port == primary_port)
                .map(|l| l.id.clone())
                .ok_or_else(|| format!("{ask} does not know {primary_port}:\n{text}"))?;
            lines
                .iter()
                .find(|l| {
                    l.master == id
                        && l.flags.contains("slave")
                        && !l.flags.contains("fail")
                        && self.nodes.iter().any(|n| n.port == l.port && n.live())
                })
                .map(|l| l.port)
                .ok_or_else(|| format!("no live replica of {primary_port} ({id}):\n{text}"))
        })
        .await
    }

    /// `CLUSTER FAILOVER` on a replica of `primary_port` (a lossless hand-over: it catches
    /// up first). Returns the new primary's port once it is master, the old primary is its
    /// replica with the link up, and every live node gives it the old primary's slots.
    pub async fn failover(&self, primary_port: u16) -> u16 {
        let replica = self.replica_of(primary_port).await;
        let before = &self.wait_agreed().await;
        let asked = &Cell::new(None::<Instant>);
        self.wait_for(
            &format!("failover of {primary_port} to {replica}"),
            || async move {
                if role(replica).await? != Role::Master {
                    // Ask once the replica is linked; again if Redis gave up on it.
                    if asked.get().is_none_or(|t| t.elapsed() > FAILOVER_RETRY) {
                        link_up(replica).await?;
                        let v: Value =
                            query(replica, redis::cmd("CLUSTER").arg("FAILOVER")).await?;
                        expect_ok(&v)?;
                        asked.set(Some(Instant::now()));
                    }
                    return Err(format!("{replica} is not master yet"));
                }
                match role(primary_port).await? {
                    Role::Replica(p) if p == replica => link_up(primary_port).await?,
                    r => return Err(format!("{primary_port} is {r:?}")),
                }
                handed_over(before, &self.agreed_map().await?, primary_port, replica)
            },
        )
        .await;
        replica
    }

    /// SIGKILLs the primary `primary_port`; returns its replica's port once that replica is
    /// master, every live node says `cluster_state:ok` and gives it the dead node's slots.
    pub async fn kill_primary(&mut self, primary_port: u16) -> u16 {
        let replica = self.replica_of(primary_port).await;
        self.kill_primary_of(primary_port, replica, false).await
    }

    /// [`RedisCluster::kill_primary`] for a primary whose replica `replica` was [paused]
    /// (`RedisCluster::pause`) so that it missed the primary's last writes: the primary is
    /// killed first, then the replica resumed; it takes over without those writes (what an
    /// unplanned failover with asynchronous replication can lose).
    pub async fn kill_primary_behind(&mut self, primary_port: u16, replica: u16) -> u16 {
        self.kill_primary_of(primary_port, replica, true).await
    }

    async fn kill_primary_of(&mut self, primary_port: u16, replica: u16, resume: bool) -> u16 {
        let before = &self.wait_agreed().await;
        self.node_mut(primary_port).kill();
        if resume {
            self.resume(replica);
        }
        let this = &*self;
        this.wait_for(
            &format!("{replica} to take over from killed {primary_port}"),
            || async move {
                if role(replica).await? != Role::Master {
                    return Err(format!("{replica} is not master yet"));
                }
                for n in this.nodes.iter().filter(|n| n.live()) {
                    let info = cluster_info(n.port).await?;
                    if field(&info, "cluster_state") != Some("ok") {
                        return Err(format!("{}: {}", n.port, one_line(&info)));
                    }
                }
                handed_over(before, &this.agreed_map().await?, primary_port, replica)
            },
        )
        .await;
        replica
    }

    /// Moves `slot` with its keys to the primary `to_port`: target `SETSLOT IMPORTING`,
    /// source `SETSLOT MIGRATING`, `GETKEYSINSLOT` + `MIGRATE ... KEYS` in batches, then
    /// `SETSLOT NODE` on target, source and the other primaries; returns once every live
    /// node says `to_port` serves it.
    pub async fn migrate_slot(&self, slot: u16, to_port: u16) {
        let from = self.primary_of_slot(slot).await;
        if from == to_port {
            return;
        }
        let primaries = self.primaries().await;
        assert!(
            primaries.contains(&to_port),
            "{to_port} is not a primary: {primaries:?}"
        );
        let from_id: String = self.admin(from, redis::cmd("CLUSTER").arg("MYID")).await;
        let to_id: String = self.admin(to_port, redis::cmd("CLUSTER").arg("MYID")).await;
        let setslot = |state: &str, id: &str| {
            let mut c = redis::cmd("CLUSTER");
            c.arg("SETSLOT").arg(slot).arg(state).arg(id);
            c
        };
        self.admin_ok(to_port, &setslot("IMPORTING", &from_id))
            .await;
        self.admin_ok(from, &setslot("MIGRATING", &to_id)).await;
        loop {
            let mut get = redis::cmd("CLUSTER");
            get.arg("GETKEYSINSLOT").arg(slot).arg(MIGRATE_BATCH);
            let keys: Vec<Vec<u8>> = self.admin(from, &get).await;
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(5000);
            migrate.arg("KEYS").arg(&keys);
            self.admin_ok(from, &migrate).await;
        }
        // Target first: were the source told first, a client it redirects could reach a
        // target that does not serve the slot yet.
        self.admin_ok(to_port, &setslot("NODE", &to_id)).await;
        self.admin_ok(from, &setslot("NODE", &to_id)).await;
        for p in primaries.into_iter().filter(|&p| p != from && p != to_port) {
            if self.node(p).live() {
                self.admin_ok(p, &setslot("NODE", &to_id)).await;
            }
        }
        self.wait_for(&format!("slot {slot} to move to {to_port}"), || async {
            let map = self.agreed_map().await?;
            match owner(&map, slot) {
                Some(p) if p == to_port => Ok(()),
                o => Err(format!("slot {slot} is served by {o:?}")),
            }
        })
        .await
    }

    /// `redis-cli -p port args...`: its output as it prints it (an error reply is a line of
    /// stdout too), then its stderr, if any.
    pub async fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut all = vec!["-h".to_string(), "127.0.0.1".into(), "-p".into()];
        all.push(port.to_string());
        all.extend(args.iter().map(|a| a.to_string()));
        self.redis_cli(&all).await
    }

    /// Stops the node (SIGSTOP) without closing its connections; the harness leaves it out
    /// of every check until [`RedisCluster::resume`].
    pub fn pause(&self, port: u16) {
        self.signal(port, "STOP");
        self.node(port).paused.set(true);
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume(&self, port: u16) {
        self.signal(port, "CONT");
        self.node(port).paused.set(false);
    }

    // -----------------------------------------------------------------------------------

    fn node(&self, port: u16) -> &Node {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("{port} is not a node of this cluster ({ports:?})"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("{port} is not a node of this cluster"))
    }

    fn any_live(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.live())
            .map(|n| n.port)
            .expect("a live node")
    }

    fn signal(&self, port: u16, sig: &str) {
        let child = self.node(port).child.as_ref();
        let pid = child.unwrap_or_else(|| panic!("{port} was killed")).id();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {pid}");
    }

    /// Two free ports, neither used by a node already.
    fn free_pair(&self) -> (u16, u16) {
        let taken: Vec<u16> = self.nodes.iter().flat_map(|n| [n.port, n.bus]).collect();
        // Both listeners are held at once, so the two differ.
        let mut held = Vec::new();
        let mut ports = Vec::new();
        while ports.len() < 2 {
            let l = TcpListener::bind("127.0.0.1:0").expect("free port");
            let p = l.local_addr().expect("addr").port();
            if !taken.contains(&p) {
                ports.push(p);
            }
            held.push(l);
        }
        (ports[0], ports[1])
    }

    /// Waits until node `i` answers, as itself (its `process_id`): a port taken by someone
    /// else between choosing and binding makes redis-server exit, and then it starts again
    /// on other ports.
    async fn await_ping(&mut self, i: usize) {
        let deadline = Instant::now() + WAIT;
        let mut attempts = 1;
        loop {
            let port = self.nodes[i].port;
            let pid = self.nodes[i].child.as_ref().map(|c| c.id().to_string());
            if let Ok(info) = query::<String>(port, redis::cmd("INFO").arg("server")).await {
                if field(&info, "process_id") == pid.as_deref() {
                    return;
                }
            }
            let exited = match self.nodes[i].child.as_mut() {
                Some(c) => c.try_wait().expect("try_wait").is_some(),
                None => true,
            };
            if exited && attempts < 5 {
                attempts += 1;
                let (port, bus) = self.free_pair();
                let node = &mut self.nodes[i];
                node.kill();
                (node.port, node.bus) = (port, bus);
                node.launch();
            } else if exited || Instant::now() >= deadline {
                panic!(
                    "{}",
                    self.report(&format!("node {port} to answer"), "no answer from it")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `redis-cli args` (killed when the wait is given up).
    async fn redis_cli(&self, args: &[String]) -> String {
        let run = tokio::process::Command::new("redis-cli")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(WAIT, run).await {
            Ok(r) => r.expect("redis-cli on PATH (installed with redis-server)"),
            Err(_) => panic!("{}", self.report(&format!("redis-cli {args:?}"), "no end")),
        };
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    }

    /// An admin command that must succeed.
    async fn admin<T: FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> T {
        match query(port, cmd).await {
            Ok(v) => v,
            Err(e) => panic!("{}", self.report(&format!("{cmd:?} on {port}"), &e)),
        }
    }

    /// An admin command that must answer OK (MIGRATE also says NOKEY when a key went away).
    async fn admin_ok(&self, port: u16, cmd: &redis::Cmd) {
        let v: Value = self.admin(port, cmd).await;
        if let Err(e) = expect_ok(&v) {
            panic!("{}", self.report(&format!("{cmd:?} on {port}"), &e));
        }
    }

    /// The slot map every live node gives, once they all give the same one covering every
    /// slot.
    async fn wait_agreed(&self) -> SlotMap {
        self.wait_for("the nodes to agree on the slots", || self.agreed_map())
            .await
    }

    /// The slot map, when every live node gives the same one and it covers every slot.
    async fn agreed_map(&self) -> Result<SlotMap, String> {
        let mut agreed: Option<(u16, SlotMap)> = None;
        for n in self.nodes.iter().filter(|n| n.live()) {
            let map = slot_map(n.port).await?;
            match &agreed {
                None => agreed = Some((n.port, map)),
                Some((p, m)) if *m != map => {
                    return Err(format!("{p} says {m:?}, {} says {map:?}", n.port))
                }
                Some(_) => {}
            }
        }
        let (_, map) = agreed.ok_or("no live node")?;
        let covered: u32 = map.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
        if covered != u32::from(SLOTS) {
            return Err(format!("{covered} slots covered: {map:?}"));
        }
        Ok(map)
    }

    /// Polls `f` every [`POLL`] until it gives `Ok`; after [`WAIT`], fails with its last
    /// error and the nodes' log tails.
    async fn wait_for<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) if Instant::now() >= deadline => panic!("{}", self.report(what, &e)),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// What failed, the last state seen, and the last lines of every node's log.
    fn report(&self, what: &str, last: &str) -> String {
        let mut s = format!("redis cluster: gave up on {what} after {WAIT:?}; last: {last}\n");
        for n in &self.nodes {
            let log = std::fs::read_to_string(n.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            s += &format!(
                "--- node {} (bus {}, {}):\n{tail}\n",
                n.port,
                n.bus,
                n.state()
            );
        }
        s
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if let Some(dir) = self.dir.as_mut() {
            if std::thread::panicking() {
                dir.disable_cleanup(true);
                eprintln!("redis cluster logs kept in {}", dir.path().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One node at a time.

#[derive(Debug, PartialEq)]
enum Role {
    Master,
    /// A replica of the primary on this port.
    Replica(u16),
}

/// One command on a fresh connection, bounded by [`QUERY_TIMEOUT`].
async fn query<T: FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T, String> {
    let run = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        // The client's own 500 ms response timeout is short for MIGRATE on a busy machine.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(QUERY_TIMEOUT))
            .set_response_timeout(Some(QUERY_TIMEOUT));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        cmd.query_async::<T>(&mut con).await
    };
    match tokio::time::timeout(QUERY_TIMEOUT, run).await {
        Ok(r) => r.map_err(|e| format!("{port}: {e}")),
        Err(_) => Err(format!("{port}: no answer in {QUERY_TIMEOUT:?}")),
    }
}

fn expect_ok(v: &Value) -> Result<(), String> {
    match v {
        Value::Okay => Ok(()),
        Value::SimpleString(s) if s == "OK" || s == "NOKEY" => Ok(()),
        other => Err(format!("answered {other:?}")),
    }
}

async fn cluster_info(port: u16) -> Result<String, String> {
    query(port, redis::cmd("CLUSTER").arg("INFO")).await
}

async fn cluster_nodes(port: u16) -> Result<String, String> {
    query(port, redis::cmd("CLUSTER").arg("NODES")).await
}

async fn role(port: u16) -> Result<Role, String> {
    let v: Vec<Value> = query(port, &redis::cmd("ROLE")).await?;
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    };
    match text(v.first()).as_str() {
        "master" => Ok(Role::Master),
        "slave" => text(v.get(2))
            .parse()
            .map(Role::Replica)
            .map_err(|_| format!("{port}: ROLE {v:?}")),
        _ => Err(format!("{port}: ROLE {v:?}")),
    }
}

/// Ok when the replica on `port` has its replication link up.
async fn link_up(port: u16) -> Result<(), String> {
    let info: String = query(port, redis::cmd("INFO").arg("replication")).await?;
    match field(&info, "master_link_status") {
        Some("up") => Ok(()),
        s => Err(format!("{port}: master_link_status {s:?}")),
    }
}

/// `name:value` out of an INFO-style text.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn one_line(text: &str) -> String {
    text.lines().take(7).collect::<Vec<_>>().join(" ")
}

/// The node's CLUSTER SLOTS as a [`SlotMap`].
async fn slot_map(port: u16) -> Result<SlotMap, String> {
    let ranges: Vec<Value> = query(port, redis::cmd("CLUSTER").arg("SLOTS")).await?;
    let bad = |what: &Value| format!("{port}: CLUSTER SLOTS entry {what:?}");
    let mut map: SlotMap = Vec::new();
    for r in &ranges {
        let Value::Array(items) = r else {
            return Err(bad(r));
        };
        let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(primary))) =
            (items.first(), items.get(1), items.get(2))
        else {
            return Err(bad(r));
        };
        let Some(Value::Int(p)) = primary.get(1) else {
            return Err(bad(r));
        };
        let (a, b, p) = (
            u16::try_from(*a).map_err(|_| bad(r))?,
            u16::try_from(*b).map_err(|_| bad(r))?,
            u16::try_from(*p).map_err(|_| bad(r))?,
        );
        map.push((a, b, p));
    }
    map.sort_unstable();
    let mut merged: SlotMap = Vec::new();
    for (a, b, p) in map {
        match merged.last_mut() {
            Some(last) if last.2 == p && last.1 + 1 == a => last.1 = b,
            _ => merged.push((a, b, p)),
        }
    }
    Ok(merged)
}

fn owner(map: &SlotMap, slot: u16) -> Option<u16> {
    map.iter()
        .find(|&&(a, b, _)| (a..=b).contains(&slot))
        .map(|r| r.2)
}

fn owners_of(map: &SlotMap) -> Vec<u16> {
    let mut ports: Vec<u16> = map.iter().map(|r| r.2).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Ok when every slot `from` served in `before` is `to`'s in `after`, and `from` serves none.
fn handed_over(before: &SlotMap, after: &SlotMap, from: u16, to: u16) -> Result<(), String> {
    let wrong = before
        .iter()
        .filter(|r| r.2 == from)
        .flat_map(|&(a, b, _)| a..=b)
        .find(|&s| owner(after, s) != Some(to));
    match (wrong, owners_of(after).contains(&from)) {
        (None, false) => Ok(()),
        (Some(s), _) => Err(format!("slot {s} is not {to}'s yet: {after:?}")),
        (None, true) => Err(format!("{from} still serves slots: {after:?}")),
    }
}

/// One line of CLUSTER NODES.
struct NodeLine {
    id: String,
    port: u16,
    flags: String,
    /// The primary's id, or `-`.
    master: String,
}

/// `<id> <ip:port@bus[,hostname]> <flags> <master> ...` per line.
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?.to_string();
            let addr = f.next()?;
            let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = f.next()?.to_string();
            let master = f.next()?.to_string();
            Some(NodeLine {
                id,
                port,
                flags,
                master,
            })
        })
        .collect()
}

/// CRC16/XMODEM (poly 0x1021, init 0), the checksum Redis Cluster hashes keys with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}
