//! A file of this process in a directory (`perf-<pid>.map`, `jit-<pid>.dump`), shared by
//! every allocator that writes there: one registry entry per directory and kind.
//!
//! Invariants: the file is opened by the first write of each process (a forked child opens
//! its own, under its own pid, and starts its own per-file state); writes are whole, under
//! the lock; the first failure to open or write disables the file for the process, with one
//! warning on standard error, and no write ever fails its caller.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The one value of `registry` (a process-wide list) for directory `dir`, made by `make` the
/// first time; `file` says which [`PidFile`] a value writes.
pub(crate) fn shared_in<T, U: Default>(
    registry: &Mutex<Vec<Arc<T>>>,
    dir: &Path,
    file: fn(&T) -> &PidFile<U>,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut all = registry.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = all.iter().find(|v| file(v).dir() == dir) {
        return v.clone();
    }
    let v = Arc::new(make());
    all.push(v.clone());
    v
}

/// One process's file of one kind in one directory, with per-file state `T` (reset when a
/// new file is opened).
#[derive(Debug)]
pub(crate) struct PidFile<T> {
    dir: PathBuf,
    /// The file's name for a pid.
    name: fn(u32) -> String,
    /// What the warning calls it ("perf map", "jitdump").
    what: &'static str,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    /// The open file, the process it belongs to, and its state.
    file: Option<(File, u32, T)>,
    disabled: bool,
}

impl<T: Default> PidFile<T> {
    /// The file named `name(pid)` in `dir`, not opened yet.
    pub(crate) fn new(dir: &Path, name: fn(u32) -> String, what: &'static str) -> Self {
        PidFile {
            dir: dir.to_path_buf(),
            name,
            what,
            state: Mutex::new(State {
                file: None,
                disabled: false,
            }),
        }
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file this process writes.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join((self.name)(std::process::id()))
    }

    /// Writes with `write` into this process's file, opened first with `open(path, pid)` if
    /// this process has none yet. Never fails: a failure disables the file with one warning.
    pub(crate) fn write(
        &self,
        open: impl FnOnce(&Path, u32) -> std::io::Result<File>,
        write: impl FnOnce(&mut File, &mut T) -> std::io::Result<()>,
    ) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.disabled {
            return;
        }
        let pid = std::process::id();
        if st.file.as_ref().is_none_or(|(_, p, _)| *p != pid) {
            match open(&self.path(), pid) {
                Ok(f) => st.file = Some((f, pid, T::default())),
                Err(e) => return self.disable(&mut st, &e),
            }
        }
        let (file, _, state) = st.file.as_mut().expect("opened above");
        if let Err(e) = write(file, state) {
            self.disable(&mut st, &e);
        }
    }

    #[cold]
    fn disable(&self, st: &mut State<T>, e: &std::io::Error) {
        st.disabled = true;
        st.file = None;
        eprintln!(
            "progpack: {} disabled: cannot write {}: {e}",
            self.what,
            self.path().display()
        );
    }

    /// True once a failure disabled the file.
    pub(crate) fn is_disabled(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .disabled
    }
}
