//! A private Redis server on loopback (Debian's `redis-server`, which `ops/test.sh` installs):
//! no persistence, its own port and directory, stopped by its PID when dropped. `None` when
//! the binary is missing, so a test can say SKIPPED.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting Redis may take to accept connections.
pub const REDIS_START_MAX: Duration = Duration::from_secs(10);

/// One `redis-server` process.
pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// Its working directory (removed with the server).
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one on a free loopback port; None without `redis-server`.
    pub fn start() -> Option<RedisServer> {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        let dir = std::env::temp_dir().join(format!(
            "petrel-redis-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).expect("the Redis directory");
        let mut server = RedisServer {
            addr,
            child: None,
            dir,
        };
        server.spawn().then_some(server)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Stops it (SIGKILL by PID); [`RedisServer::restart`] brings it back on the same port,
    /// empty.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (after [`RedisServer::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server restarts");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START_MAX;
        while TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
