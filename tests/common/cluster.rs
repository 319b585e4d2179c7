//! Throwaway PostgreSQL clusters with streaming standbys, for the failover and replica tests.
//!
//! Each [`Clusters`] is a primary and its standbys in one temp dir of their own,
//! on free loopback ports; the shared cluster is never touched. `initdb`,
//! `pg_ctl` and `pg_basebackup` refuse to run as root, so as root they run as
//! the `postgres` user (like `as_pg` in `scripts/test-helpers.sh`). Dropping
//! [`Clusters`] stops every cluster with `pg_ctl -m immediate stop` and removes
//! the dir, a failing test included.
//!
//! When the cluster binaries are missing or a cluster cannot start, [`Clusters::start`]
//! prints why and returns `None` (the test skips), except under `CI=true`, where
//! it fails: CI must run these tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use diesel::PgConnection;

/// How a standby follows the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    /// Synchronous (`synchronous_standby_names`): a commit waits for its flush there.
    Sync,
    /// Asynchronous streaming.
    Async,
    /// Asynchronous, applying WAL no sooner than this after the commit
    /// (`recovery_min_apply_delay`): a replica that is behind on purpose.
    Delayed(Duration),
}

/// One cluster: its port and data dir.
#[derive(Debug)]
pub struct Node {
    pub port: u16,
    pub data: PathBuf,
}

impl Node {
    /// A URL of database `postgres` on this cluster.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=2",
            self.port
        )
    }

    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url()).expect("connect to a test cluster")
    }

    fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// A primary and its standbys, stopped and removed on drop.
pub struct Clusters {
    pub primary: Node,
    pub standbys: Vec<Node>,
    root: PathBuf,
    bin: PathBuf,
}

impl Clusters {
    /// A primary with one standby per entry of `standbys`, each streaming and caught up.
    pub fn start(standbys: &[Standby]) -> Option<Clusters> {
        match Clusters::try_start(standbys) {
            Ok(c) => Some(c),
            Err(why) => {
                let why = format!("cannot start throwaway PostgreSQL clusters: {why}");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{why}; CI must run this test");
                }
                eprintln!("SKIPPED: {why}");
                None
            }
        }
    }

    fn try_start(kinds: &[Standby]) -> Result<Clusters, String> {
        let bin = pg_bin_dir().ok_or("initdb/pg_ctl not found (PostgreSQL server binaries)")?;
        let root = tempfile::Builder::new()
            .prefix("interview-replicas.")
            .tempdir_in("/tmp") // the postgres user must reach it
            .map_err(|e| e.to_string())?
            .keep();
        let mut clusters = Clusters {
            primary: Node {
                port: free_port(),
                data: root.join("primary"),
            },
            standbys: Vec::new(),
            root,
            bin,
        };
        if is_root() {
            run(Command::new("chown").args(["postgres:", path(&clusters.root)]))?;
        }
        clusters.init_primary(kinds.contains(&Standby::Sync))?;
        for (i, kind) in kinds.iter().enumerate() {
            clusters.add_standby(i, *kind)?;
        }
        clusters.wait_streaming(kinds)?;
        Ok(clusters)
    }

    fn init_primary(&self, sync: bool) -> Result<(), String> {
        let data = &self.primary.data;
        self.as_pg(
            "initdb",
            &[
                "-D",
                path(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let sockets = path(&self.root);
        // fsync=off: a kill -9 of the postmaster loses no page cache, and the tests stay fast.
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sockets}'\n\
             wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nfsync = off\n\
             shared_buffers = 16MB\nmax_connections = 60\nwal_sender_timeout = 5s\n",
            port = self.primary.port
        );
        if sync {
            conf.push_str("synchronous_standby_names = 's1'\nsynchronous_commit = on\n");
        }
        append(&data.join("postgresql.conf"), &conf)?;
        append(
            &data.join("pg_hba.conf"),
            "\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        self.start_node(&self.primary)
    }

    fn add_standby(&mut self, i: usize, kind: Standby) -> Result<(), String> {
        let node = Node {
            port: free_port(),
            data: self.root.join(format!("standby{i}")),
        };
        let primary_port = self.primary.port.to_string();
        self.as_pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-D",
                path(&node.data),
                "-R",
                "-X",
                "stream",
            ],
        )?;
        // postgresql.auto.conf is read last, so these win over the copied primary settings.
        let name = if kind == Standby::Sync { "s1" } else { "async" };
        // A promoted standby must not wait for a synchronous standby of its own.
        let mut conf = format!(
            "\nport = {}\nsynchronous_standby_names = ''\nprimary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres application_name={name}'\n",
            node.port
        );
        if let Standby::Delayed(d) = kind {
            conf.push_str(&format!(
                "recovery_min_apply_delay = '{}ms'\n",
                d.as_millis()
            ));
        }
        append(&node.data.join("postgresql.auto.conf"), &conf)?;
        self.start_node(&node)?;
        self.standbys.push(node);
        Ok(())
    }

    fn start_node(&self, node: &Node) -> Result<(), String> {
        let log = node.data.with_extension("log");
        self.as_pg(
            "pg_ctl",
            &[
                "-D",
                path(&node.data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
        .map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\nits log:\n{log}")
        })
    }

    /// Waits until every standby streams (the sync one as `sync`).
    fn wait_streaming(&self, kinds: &[Standby]) -> Result<(), String> {
        let want_sync = kinds.contains(&Standby::Sync);
        let mut conn = PgConnection::establish(&self.primary.url()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows: Vec<(String, String)> =
                diesel::sql_query("SELECT state AS a, sync_state AS b FROM pg_stat_replication")
                    .load::<Pair>(&mut conn)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|p| (p.a, p.b))
                    .collect();
            let streaming = rows.iter().filter(|(s, _)| s == "streaming").count();
            let sync = rows.iter().any(|(_, s)| s == "sync");
            if streaming == kinds.len() && sync == want_sync {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("standbys not streaming after 20 s: {rows:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the primary's postmaster: a crash, no shutdown checkpoint, no goodbye to clients.
    pub fn kill_primary(&self) {
        let pid = self.primary.pid().expect("the primary's postmaster.pid");
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {pid}");
    }

    /// Promotes standby `i` and waits until it accepts writes (`pg_ctl promote -w`).
    pub fn promote(&self, i: usize) {
        self.as_pg(
            "pg_ctl",
            &["-D", path(&self.standbys[i].data), "promote", "-w"],
        )
        .expect("pg_ctl promote");
    }

    /// Stops `node` (fast shutdown): a replica that went away.
    pub fn stop(&self, node: &Node) {
        self.as_pg(
            "pg_ctl",
            &["-D", path(&node.data), "-m", "fast", "-w", "stop"],
        )
        .expect("pg_ctl stop");
    }

    /// Starts `node` again after [`Clusters::stop`].
    pub fn start_again(&self, node: &Node) {
        self.start_node(node).expect("pg_ctl start");
    }

    /// A multi-host URL over the primary then every standby, for the node that accepts writes.
    pub fn multi_host_url(&self) -> String {
        let hosts: Vec<String> = std::iter::once(&self.primary)
            .chain(&self.standbys)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!(
            "postgres://postgres@{}/postgres?target_session_attrs=read-write&connect_timeout=2",
            hosts.join(",")
        )
    }

    fn as_pg(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut line = format!("exec {}", quote(path(&program)));
            for a in args {
                line.push(' ');
                line.push_str(&quote(a));
            }
            let mut c = Command::new("su");
            c.args(["postgres", "-s", "/bin/sh", "-c", &line]);
            c
        } else {
            let mut c = Command::new(&program);
            c.args(args);
            c
        };
        run(&mut cmd)
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for node in std::iter::once(&self.primary).chain(&self.standbys) {
            if node.data.join("postmaster.pid").exists() {
                let _ = self.as_pg(
                    "pg_ctl",
                    &["-D", path(&node.data), "-m", "immediate", "-w", "stop"],
                );
            }
        }
        // A killed postmaster leaves no one to stop: its children exit by themselves
        // on noticing its death; remove what is left either way.
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("could not remove {}: {e}", self.root.display());
        }
    }
}

#[derive(QueryableByName)]
struct Pair {
    #[diesel(sql_type = Text)]
    a: String,
    #[diesel(sql_type = Text)]
    b: String,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    v: bool,
}

/// Whether `conn`'s server is in recovery (a standby).
pub fn in_recovery(conn: &mut PgConnection) -> bool {
    diesel::sql_query("SELECT pg_is_in_recovery() AS v")
        .get_result::<Flag>(conn)
        .expect("pg_is_in_recovery")
        .v
}

/// The newest `bin` dir with the server binaries: `initdb` on PATH, else /usr/lib/postgresql/*/bin.
fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !found.is_empty() {
            // A symlink on PATH (/usr/local/bin/initdb) stands for the dir holding them all.
            let real = std::fs::canonicalize(&found).ok()?;
            return real.parent().map(Path::to_path_buf);
        }
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A loopback port nothing listens on (the cluster binds it right after).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("its address").port()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn append(file: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", file.display()))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// `s` single-quoted for /bin/sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
