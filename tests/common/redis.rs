//! A `redis-server` of the test's own, on a free port (never the machine's shared one on
//! 6379), without persistence so that a restart comes back empty; and a unique key prefix per
//! test. Engine tests and cluster tests alike start Redis through [`Redis::start`].

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// A running `redis-server`; killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// The port it listens on (kept across [`Redis::restart`]).
    pub port: u16,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let mut r = Redis { child: None, port };
        r.start_again();
        r
    }

    /// Starts the server (again) on its port, empty; waits until it answers PING.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server (SIGSTOP) without closing its connections: commands sent to it
    /// wait, as they would for a Redis that is overloaded. [`Redis::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig}");
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// The URL nodes and engines connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection of the test's own, to look at or change what Redis holds.
    pub async fn con(&self) -> ::redis::aio::MultiplexedConnection {
        let client = ::redis::Client::open(self.url()).expect("redis url");
        tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
            .await
            .expect("redis connect timeout")
            .expect("redis connection")
    }

    /// The string at `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Option<String> {
        ::redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.con().await)
            .await
            .expect("GET")
    }

    /// The whole list at `key`.
    pub async fn list(&self, key: &str) -> Vec<String> {
        ::redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.con().await)
            .await
            .expect("LRANGE")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A unique Redis key prefix per test.
pub fn unique_prefix() -> String {
    format!("sbtest-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
