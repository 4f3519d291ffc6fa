//! [`Observe`]: which announcements of JIT code an allocator makes, from its
//! [`Config`](crate::Config) and the environment.

use super::os::JitdumpClock;
use std::path::{Path, PathBuf};

/// Which announcements an allocator makes of the code it places (all off by default; an
/// allocator with all of them off pays one predictable branch per finalize and per free).
///
/// Each can also be switched on from outside the program, so that an existing binary can be
/// profiled or debugged:
///
/// | setting | environment | what it does |
/// |---|---|---|
/// | [`perf_map`](Self::perf_map) | `PROGPACK_PERF_MAP=1` (or a directory) | appends `START SIZE name` lines to `/tmp/perf-<pid>.map`, which `perf report` reads |
/// | [`jitdump`](Self::jitdump) | `PROGPACK_JITDUMP=DIR` | writes `DIR/jit-<pid>.dump` for `perf inject --jit` (record with `perf record -k mono`) |
/// | [`gdb`](Self::gdb) | `PROGPACK_GDB_JIT=1` | registers an object file per program with the GDB JIT interface: `bt` names JIT frames |
/// | [`index`](Self::index) | – | [`Allocator::program_at`](crate::Allocator::program_at) finds every program, not only named ones |
///
/// Named programs (see [`Draft::set_name`](crate::Draft::set_name)) are always found by
/// `program_at`; unwind information ([`Draft::set_eh_frame`](crate::Draft::set_eh_frame)) is
/// always registered. Neither needs a setting.
///
/// ```
/// use progpack::{Allocator, Config, Observe};
/// let dir = std::env::temp_dir();
/// let alloc = Allocator::new(
///     Config::default().observe(Observe::default().perf_map_in(&dir).ignore_env()),
/// )?;
/// let mut draft = alloc.draft(1, 1)?.named("answer")?;
/// draft.image_mut()[0] = 0xc3; // x86-64 `ret` (never called here)
/// let program = draft.finalize()?;
/// let path = dir.join(format!("perf-{}.map", std::process::id()));
/// let map = std::fs::read_to_string(&path)?;
/// assert!(map.contains(&format!("{:x} 1 answer\n", program.addr())));
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observe {
    pub(crate) perf_map: Option<PathBuf>,
    pub(crate) jitdump: Option<PathBuf>,
    pub(crate) jitdump_clock: JitdumpClock,
    pub(crate) gdb: bool,
    pub(crate) index: bool,
    pub(crate) ignore_env: bool,
}

impl Observe {
    /// The perf map in `/tmp`, where perf looks (default off).
    pub fn perf_map(mut self, on: bool) -> Self {
        self.perf_map = on.then(|| PathBuf::from(super::perf_map::DEFAULT_DIR));
        self
    }

    /// The perf map in another directory (`<dir>/perf-<pid>.map`), for tools that look
    /// elsewhere.
    pub fn perf_map_in(mut self, dir: impl AsRef<Path>) -> Self {
        self.perf_map = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The jitdump `<dir>/jit-<pid>.dump` (default off).
    pub fn jitdump(mut self, dir: impl AsRef<Path>) -> Self {
        self.jitdump = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The clock of jitdump timestamps: the one `perf record -k` samples with (default
    /// [`JitdumpClock::Monotonic`], the only one `perf inject --jit` accepts).
    pub fn jitdump_clock(mut self, clock: JitdumpClock) -> Self {
        self.jitdump_clock = clock;
        self
    }

    /// The GDB JIT interface (default off; needs the `gdb-jit` feature, on by default).
    pub fn gdb(mut self, on: bool) -> Self {
        self.gdb = on;
        self
    }

    /// Record every program for [`Allocator::program_at`](crate::Allocator::program_at), not
    /// only named ones (default off; implied by every announcement above).
    pub fn index(mut self, on: bool) -> Self {
        self.index = on;
        self
    }

    /// Ignore the `PROGPACK_*` environment variables (default: they switch announcements on).
    pub fn ignore_env(mut self) -> Self {
        self.ignore_env = true;
        self
    }

    /// The perf map's directory, if on.
    pub fn get_perf_map(&self) -> Option<&Path> {
        self.perf_map.as_deref()
    }

    /// The jitdump's directory, if on.
    pub fn get_jitdump(&self) -> Option<&Path> {
        self.jitdump.as_deref()
    }

    /// Whether the GDB JIT interface is on.
    pub fn get_gdb(&self) -> bool {
        self.gdb
    }

    /// True if any announcement (or the lookup of every program) is on.
    pub fn is_on(&self) -> bool {
        self.perf_map.is_some() || self.jitdump.is_some() || self.gdb || self.index
    }

    /// These settings with what the environment switches on (unless ignored).
    pub(crate) fn with_env(&self) -> Observe {
        self.with(|k| std::env::var_os(k))
    }

    /// These settings with what `var` says (the environment, or a test's table).
    fn with(&self, var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Observe {
        let mut o = self.clone();
        if o.ignore_env {
            return o;
        }
        if let Some(v) = var("PROGPACK_PERF_MAP") {
            if v == "1" {
                o.perf_map
                    .get_or_insert_with(|| PathBuf::from(super::perf_map::DEFAULT_DIR));
            } else if Path::new(&v).is_absolute() {
                o.perf_map = Some(PathBuf::from(v));
            }
        }
        if let Some(v) = var("PROGPACK_JITDUMP") {
            if !v.is_empty() {
                o.jitdump = Some(PathBuf::from(v));
            }
        }
        if var("PROGPACK_GDB_JIT").is_some_and(|v| v == "1") {
            if cfg!(feature = "gdb-jit") {
                o.gdb = true;
            } else {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "progpack: PROGPACK_GDB_JIT ignored: built without the `gdb-jit` feature"
                    )
                });
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).into())
    }

    #[test]
    fn the_environment_switches_announcements_on() {
        let o = Observe::default().with(env(&[
            ("PROGPACK_PERF_MAP", "1"),
            ("PROGPACK_JITDUMP", "/var/tmp/jd"),
            ("PROGPACK_GDB_JIT", "1"),
        ]));
        assert_eq!(o.get_perf_map(), Some(Path::new("/tmp")));
        assert_eq!(o.get_jitdump(), Some(Path::new("/var/tmp/jd")));
        assert_eq!(o.get_gdb(), cfg!(feature = "gdb-jit"));
        assert!(o.is_on());
        let o = Observe::default().with(env(&[("PROGPACK_PERF_MAP", "/srv/maps")]));
        assert_eq!(o.get_perf_map(), Some(Path::new("/srv/maps")));
    }

    #[test]
    fn other_values_switch_nothing_on() {
        let o = Observe::default().with(env(&[
            ("PROGPACK_PERF_MAP", "0"),
            ("PROGPACK_JITDUMP", ""),
            ("PROGPACK_GDB_JIT", "yes"),
        ]));
        assert!(!o.is_on());
        let o = Observe::default()
            .ignore_env()
            .with(env(&[("PROGPACK_PERF_MAP", "1")]));
        assert!(!o.is_on());
    }
}
