//! A PostgreSQL server of a test's own (for tests that stop and start it),
//! from the Debian binaries, in a temp dir, stopped on drop.

use std::path::PathBuf;
use std::process::Command;

pub struct PgProcess {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

fn bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect();
    dirs.sort();
    dirs.pop().filter(|d| d.join("initdb").exists())
}

fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

impl PgProcess {
    /// `None` (with the reason printed) where the Debian server binaries are missing.
    pub fn start() -> Option<Self> {
        let me = Self::init()?;
        me.start_server();
        Some(me)
    }

    /// A server that accepts TCP connections only over TLS (`hostssl`; plain
    /// ones are rejected), with the given PEM certificate and key.
    pub fn start_with_tls(cert: &std::path::Path, key: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let me = Self::init()?;
        let data = std::path::PathBuf::from(me.data());
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = data.join(to);
            std::fs::copy(from, &dest).unwrap();
            // Postgres refuses a key readable by others.
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
            if me.as_postgres {
                let (uid, gid) = postgres_ids().unwrap();
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        me.start_server();
        Some(me)
    }

    fn init() -> Option<Self> {
        let Some(bin) = bindir() else {
            eprintln!("skipped: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_postgres =
            std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
        if as_postgres {
            let (uid, gid) = postgres_ids().expect("a postgres user (from the Debian package)");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let me = Self { port: crate::free_port(), dir, bin, as_postgres };
        let data = me.data();
        let ok = me.cmd("initdb").args(["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]).output().unwrap();
        assert!(ok.status.success(), "initdb: {}", String::from_utf8_lossy(&ok.stderr));
        Some(me)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn start_server(&self) {
        let log = self.dir.path().join("log").display().to_string();
        let opts = format!("-h 127.0.0.1 -p {} -k {}", self.port, self.dir.path().display());
        let out =
            self.cmd("pg_ctl").args(["-D", &self.data(), "-l", &log, "-w", "-o", &opts, "start"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn stop_server(&self) {
        let _ = self.cmd("pg_ctl").args(["-D", &self.data(), "-m", "fast", "-w", "stop"]).output();
    }
}

impl Drop for PgProcess {
    fn drop(&mut self) {
        self.stop_server();
    }
}
