//! [`ProgpackBuilder`]: the settings of a [`ProgpackModule`](crate::ProgpackModule), with the
//! constructors and setters of `cranelift-jit`'s `JITBuilder` (so switching is a rename), plus
//! where code goes (a progpack [`Config`] or a shared [`Allocator`]) and where read-only data
//! goes.

use crate::error::Error;
use crate::symbols::{LookupFn, Symbols};
use cranelift_codegen::ir;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_module::ModuleResult;
use progpack::{Allocator, CodeRange, Config};

/// How library calls are named: `cranelift_module::default_libcall_names()` or your own.
pub type LibcallNames = Box<dyn Fn(ir::LibCall) -> String + Send + Sync>;

/// Builds a [`ProgpackModule`](crate::ProgpackModule). Mirrors `cranelift_jit::JITBuilder`.
pub struct ProgpackBuilder {
    pub(crate) isa: OwnedTargetIsa,
    pub(crate) symbols: Symbols,
    pub(crate) libcall_names: LibcallNames,
    pub(crate) placement: Placement,
    pub(crate) rodata_in_packs: bool,
    pub(crate) colocate_host_symbols: bool,
}

/// Where the module's code comes from.
pub(crate) enum Placement {
    /// A fresh allocator with this configuration.
    Config(Config),
    /// An allocator shared with others.
    Shared(Allocator),
}

impl ProgpackBuilder {
    /// A builder for the host ISA with default flags, `is_pic = false` and
    /// `use_colocated_libcalls = false` (as `JITBuilder::new`).
    ///
    /// `libcall_names` names the library calls Cranelift inserts (for example `ceil` on x86-64
    /// without SSE4.1, `memset` from the frontend); `cranelift_module::default_libcall_names()`
    /// is the usual choice.
    pub fn new(libcall_names: LibcallNames) -> ModuleResult<Self> {
        Self::with_flags(&[], libcall_names)
    }

    /// Like [`new`](Self::new), with Cranelift settings applied first (as
    /// `JITBuilder::with_flags`). `is_pic` and `use_colocated_libcalls` are forced to false
    /// afterwards. An unknown host is an error here, where `JITBuilder` panics.
    pub fn with_flags(flags: &[(&str, &str)], libcall_names: LibcallNames) -> ModuleResult<Self> {
        let mut flag_builder = settings::builder();
        for (name, value) in flags {
            flag_builder.set(name, value)?;
        }
        // As cranelift-jit: libcalls go through `movabs` + `call reg` (Abs8), so they reach
        // any address; and relocations are applied here, not through a GOT.
        flag_builder.set("use_colocated_libcalls", "false")?;
        flag_builder.set("is_pic", "false")?;
        let isa_builder =
            cranelift_native::builder().map_err(|m| Error::HostNotSupported(m.to_string()))?;
        let isa = isa_builder.finish(settings::Flags::new(flag_builder))?;
        Ok(Self::with_isa(isa, libcall_names))
    }

    /// A builder for an ISA you made (as `JITBuilder::with_isa`). It must have `is_pic = false`
    /// ([`ProgpackModule::new`](crate::ProgpackModule::new) checks).
    pub fn with_isa(isa: OwnedTargetIsa, libcall_names: LibcallNames) -> Self {
        ProgpackBuilder {
            isa,
            symbols: Symbols::new(),
            libcall_names,
            placement: Placement::Config(default_config()),
            rodata_in_packs: true,
            colocate_host_symbols: true,
        }
    }

    /// Defines a host symbol (as `JITBuilder::symbol`): names declared but not defined in the
    /// module resolve here first. The latest definition of a name wins.
    pub fn symbol<K: Into<String>>(&mut self, name: K, ptr: *const u8) -> &mut Self {
        self.symbols.insert(name.into(), ptr);
        self
    }

    /// Defines many host symbols (as `JITBuilder::symbols`).
    pub fn symbols<It, K>(&mut self, symbols: It) -> &mut Self
    where
        It: IntoIterator<Item = (K, *const u8)>,
        K: Into<String>,
    {
        for (name, ptr) in symbols {
            self.symbols.insert(name.into(), ptr);
        }
        self
    }

    /// Adds a symbol lookup function (as `JITBuilder::symbol_lookup_fn`), asked when the table
    /// has no entry; the last one added is asked first, and the default `dlsym` lookup last.
    pub fn symbol_lookup_fn(&mut self, f: LookupFn) -> &mut Self {
        self.symbols.push_lookup(f);
        self
    }

    /// The progpack configuration of the module's own allocator. The default is
    /// `Config::default()` with a [`CodeRange::near_this_binary`] (of 128 MiB on aarch64, where
    /// `bl` reaches ±128 MiB), so that calls between JIT functions and into this binary are
    /// direct calls, [`DEFAULT_CHUNK`] (32-byte) chunks, and runs that do not scatter
    /// (`scatter_runs(false)`: functions finalized one by one lie together).
    ///
    /// Density: progpack rounds each function up to whole chunks (the random start offset
    /// lives in that rounding). With 32-byte chunks a 32-byte function takes 32 bytes, as in
    /// `JITModule`; with progpack's general 64 it would take 64, and tiny functions called at
    /// random run a few percent slower (see the crate's benchmark). A configuration given here
    /// replaces the whole default, chunk size and run placement included.
    pub fn allocator_config(&mut self, config: Config) -> &mut Self {
        self.placement = Placement::Config(config);
        self
    }

    /// Announces the module's code (see [`progpack::Observe`]): a perf map, a jitdump, the GDB
    /// JIT interface (call it after [`allocator_config`](Self::allocator_config), which
    /// replaces the whole configuration). Each function and read-only data object in a pack
    /// is named after its symbol. Applies to the module's own allocator; a shared one (see
    /// [`allocator`](Self::allocator)) announces what its own configuration says. The
    /// `PROGPACK_PERF_MAP`, `PROGPACK_JITDUMP` and `PROGPACK_GDB_JIT` environment variables
    /// switch the same on without a code change.
    pub fn observe(&mut self, observe: progpack::Observe) -> &mut Self {
        if let Placement::Config(config) = &mut self.placement {
            *config = config.clone().observe(observe);
        }
        self
    }

    /// Writes the perf map `/tmp/perf-<pid>.map`, naming every function for `perf report`
    /// (as [`observe`](Self::observe) with [`progpack::Observe::perf_map`]).
    pub fn perf_map(&mut self, on: bool) -> &mut Self {
        if let Placement::Config(config) = &mut self.placement {
            let observe = config.get_observe().clone().perf_map(on);
            *config = config.clone().observe(observe);
        }
        self
    }

    /// Places code with an existing allocator (shared with other modules or other JITs)
    /// instead of one of the module's own. Give it a code range if code calls colocated
    /// functions in the host.
    pub fn allocator(&mut self, allocator: Allocator) -> &mut Self {
        self.placement = Placement::Shared(allocator);
        self
    }

    /// Whether read-only data objects go into packs next to the code (default true), or onto
    /// the heap like writable data.
    ///
    /// In packs they are protected from writes, reachable with rip-relative addressing, and
    /// share the code's huge pages; but they are mapped executable: their bytes become
    /// executable bytes. Turn it off if data may come from untrusted input and you do not want
    /// it executable (it is then referenced non-colocated, through an absolute address).
    pub fn read_only_data_in_packs(&mut self, on: bool) -> &mut Self {
        self.rodata_in_packs = on;
        self
    }
}

impl ProgpackBuilder {
    /// Whether imported functions and data whose host address is within `rel32` reach of the
    /// whole code range are referenced colocated (`call rel32`, rip-relative) instead of through
    /// an absolute address (default true). The check is made when the import is declared in a
    /// function, against the symbol's address and the allocator's code range, so it cannot be
    /// wrong later. With the default code range, this covers functions of this binary given to
    /// [`symbol`](Self::symbol) or found by a lookup function; not shared libraries.
    pub fn colocate_host_symbols(&mut self, on: bool) -> &mut Self {
        self.colocate_host_symbols = on;
        self
    }
}

/// The allocator configuration a builder starts with: a code range near this binary, no larger
/// than a colocated call reaches (aarch64's `bl`: 128 MiB), so that any two functions of the
/// module can call each other colocated; and 32-byte chunks, since Cranelift functions are
/// often a few dozen bytes (with progpack's general 64, a 32-byte function takes a whole
/// cache line and random-order calls are a few percent slower than `JITModule`'s dense layout);
/// and runs that do not scatter ([`Config::scatter_runs`]`(false)`): functions finalized one by
/// one lie next to each other as a batch's do (scattered, random-order calls of 10,000 tiny
/// functions are about 3% slower), while the first run in each pack still starts at a random
/// place and images at random offsets in their slack.
fn default_config() -> Config {
    let size = CodeRange::DEFAULT_SIZE.min(crate::define::COLOCATED_REACH);
    Config::default()
        .code_range(CodeRange::near_this_binary().size(size))
        .chunk_size(DEFAULT_CHUNK)
        .scatter_runs(false)
}

/// The chunk size of a builder's own allocator (see [`ProgpackBuilder::allocator_config`]).
pub const DEFAULT_CHUNK: usize = 32;
