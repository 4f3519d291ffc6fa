//! Host symbols: the builder's table, the lookup functions, and the default `dlsym` lookup.
//!
//! Resolution order is `cranelift-jit`'s: the table first, then the lookup functions from the
//! last added to the first (the default `dlsym` lookup was added first, so it is tried last).
//! A name a lookup function finds is cached in the table.
#![allow(unsafe_code)] // dlsym

use std::collections::HashMap;
use std::ffi::CString;

/// A symbol lookup function, as `cranelift-jit`'s `JITBuilder::symbol_lookup_fn` takes it.
pub type LookupFn = Box<dyn Fn(&str) -> Option<*const u8> + Send>;

/// The symbol table and lookup functions. Addresses are kept as integers: the table only
/// hands them to the relocator, never dereferences them.
pub(crate) struct Symbols {
    table: HashMap<String, usize>,
    lookups: Vec<LookupFn>,
}

impl Symbols {
    /// An empty table with only the `dlsym` lookup.
    pub(crate) fn new() -> Self {
        Symbols {
            table: HashMap::new(),
            lookups: vec![Box::new(lookup_with_dlsym)],
        }
    }

    /// Defines (or redefines) `name`.
    pub(crate) fn insert(&mut self, name: String, addr: *const u8) {
        self.table.insert(name, addr as usize);
    }

    /// Adds a lookup function, tried before those added earlier.
    pub(crate) fn push_lookup(&mut self, f: LookupFn) {
        self.lookups.push(f);
    }

    /// The address of `name`, from the table or a lookup function (then cached).
    pub(crate) fn lookup(&mut self, name: &str) -> Option<usize> {
        if let Some(&addr) = self.table.get(name) {
            return Some(addr);
        }
        let found = self.find(name)?;
        self.table.insert(name.to_owned(), found);
        Some(found)
    }

    /// The address of `name`, like [`Self::lookup`] but without caching it.
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        if let Some(&addr) = self.table.get(name) {
            return Some(addr);
        }
        Some(self.lookups.iter().rev().find_map(|f| f(name))? as usize)
    }
}

/// Looks `name` up in the running process and the libraries it loaded (`dlsym` with
/// `RTLD_DEFAULT`), as `cranelift-jit` does by default. A name with an interior NUL byte
/// resolves to nothing.
pub fn lookup_with_dlsym(name: &str) -> Option<*const u8> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: `c_name` is a NUL-terminated string that outlives the call; RTLD_DEFAULT is a
    // valid pseudo-handle; dlsym only reads the string.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c_name.as_ptr()) };
    (!sym.is_null()).then_some(sym as *const u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_then_lookups_last_first_then_dlsym() {
        let mut s = Symbols::new();
        s.insert("mine".into(), 0x1000 as *const u8);
        s.push_lookup(Box::new(|n| {
            (n == "a" || n == "b").then_some(0x2000 as *const u8)
        }));
        s.push_lookup(Box::new(|n| (n == "b").then_some(0x3000 as *const u8)));
        assert_eq!(s.lookup("mine"), Some(0x1000));
        assert_eq!(s.lookup("a"), Some(0x2000));
        assert_eq!(s.lookup("b"), Some(0x3000), "the last lookup added wins");
        let strlen = s.lookup("strlen").expect("dlsym finds libc's strlen");
        assert_eq!(strlen, libc::strlen as *const () as usize);
        assert_eq!(s.lookup("no such symbol, surely"), None);
        assert_eq!(lookup_with_dlsym("nul\0inside"), None);
    }
}
